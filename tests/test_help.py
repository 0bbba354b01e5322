"""--help of every recipe and of `finetune train RECIPE` lists each config key with its type, default and meaning."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

import finetune
from finetune.cli import main as cli_main
from finetune.config import config_help, config_keys, field_comments
from finetune.launch import RECIPES
from tests.conftest import ROOT


def key_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("config keys"))
    return [line for line in lines[start + 1 :] if line.startswith("  ")]


def recipe_help(stem: str, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"recipes.{stem}").main(["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_a_recipe_script_help_lists_a_key_with_type_default_and_meaning():
    out = subprocess.run(
        [sys.executable, "recipes/train_lm.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "  lora.r (int; default 8): rank of the low-rank update B@A" in out
    assert "  method (one of 'lora', 'prompt', 'full'; default \"lora\"): what trains" in out
    assert "  data.train_file (str; required): JSONL training file" in out
    # a recipe's own section default wins over its class's: the LM recipe's optim starts at lr 2e-4
    assert "  optim.lr (float; default 0.0002): " in out


@pytest.mark.parametrize("stem", sorted(Path(f).stem for f in RECIPES.values()))
def test_every_key_of_every_recipe_has_its_meaning(stem, capsys):
    lines = key_lines(recipe_help(stem, capsys))
    assert len(lines) > 10
    undocumented = [line.split(" (", 1)[0].strip() for line in lines if not line.split("): ", 1)[-1].strip()]
    assert not undocumented, (
        f"write a `# meaning` comment after these fields of recipes/{stem}.py's config: {undocumented}"
    )


def test_finetune_train_recipe_help_shows_the_recipes_own_key_list(capsys):
    own = key_lines(recipe_help("train_sd", capsys))
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "sd", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--accelerate-config" in out and "usage: finetune train sd " in out
    assert key_lines(out) == own


def test_finetune_train_help_without_a_recipe_says_how_to_see_the_keys(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "after RECIPE: with every config key" in out and "config keys" not in out


def test_finetune_version_prints_the_one_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"finetune {finetune.__version__}"


@dataclasses.dataclass
class Inner:
    size: int = 3  # how big
    names: list[str] = dataclasses.field(  # names, as a list
        default_factory=lambda: ["a"],
    )


@dataclasses.dataclass
class Base:
    lr: float = 1e-3  # base learning rate
    kind: Literal["x", "y"] = "x"  # which kind

    def method(self) -> int:  # a method, not a field
        return 1


@dataclasses.dataclass
class Child(Base):
    kind: Literal["x", "y"] = "y"  # which kind (the child's default)
    inner: Inner = dataclasses.field(default_factory=lambda: Inner(size=5))  # a section with its own default
    maybe: Inner | None = None  # an optional section
    bare: int = 0


def test_field_comments_come_from_the_source_inherited_and_overridden():
    assert field_comments(Child) == {
        "lr": "base learning rate",
        "kind": "which kind (the child's default)",
        "inner": "a section with its own default",
        "maybe": "an optional section",
    }
    assert field_comments(Inner) == {"size": "how big", "names": "names, as a list"}


def test_config_keys_show_section_defaults_and_flag_a_missing_meaning():
    rows = {key: (tp, shown, meaning) for key, tp, shown, meaning in config_keys(Child)}
    assert rows["lr"] == ("float", "default 0.001", "base learning rate")
    assert rows["kind"] == ("one of 'x', 'y'", 'default "y"', "which kind (the child's default)")
    assert rows["inner"] == ("section", "", "a section with its own default")
    assert rows["inner.size"] == ("int", "default 5", "how big")  # the parent's default object, not Inner()'s 3
    assert rows["inner.names"] == ("a list of str", 'default ["a"]', "names, as a list")
    assert rows["maybe"] == ("section or null", "default null", "an optional section")
    assert rows["maybe.size"][1] == "default 3"
    assert rows["bare"] == ("int", "default 0", "")
    assert "  bare (int; default 0): " in config_help(Child).splitlines()
