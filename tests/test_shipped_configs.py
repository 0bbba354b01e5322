"""Every config in recipes/configs/ loads, as `--config FILE` does, through the config class of the recipe its header
names, and passes the checks that recipe runs before any model or data loads. The shipped data it names is there."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from finetune.config import parse_recipe_args, to_dict
from tests.conftest import ROOT

CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))
# The command each config's header comment gives its user: "#   python recipes/gan.py --config recipes/configs/x.yaml"
COMMAND = re.compile(r"^#.*\brecipes/(\w+)\.py --config recipes/configs/([\w.-]+\.yaml)", re.MULTILINE)

# recipe module -> (its config class, the check its main() runs on the loaded config before building anything)
CHECKS = {
    "train_lm": ("LMRecipeConfig", "check_combination"),
    "train_sd": ("SDRecipeConfig", "check_combination"),
    "gan": ("GANConfig", "resolve_config"),
    "vae": ("VAEConfig", "validate"),
    "train_autoencoder": ("AutoencoderConfig", "validate"),
}


def recipe_of(path: Path) -> str:
    """The recipe a config's header comment runs it with; a config that names none fails."""
    recipes = [recipe for recipe, name in COMMAND.findall(path.read_text()) if name == path.name]
    if not recipes:
        pytest.fail(
            f"{path.name} names no recipe: give it a header comment line "
            f"'#   accelerate launch --config_file accelerate_config.yaml recipes/<recipe>.py "
            f"--config recipes/configs/{path.name}'"
        )
    return recipes[0]


def strings(tree):
    """Every string value of a nested config dict."""
    if isinstance(tree, dict):
        for value in tree.values():
            yield from strings(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from strings(value)
    elif isinstance(tree, str):
        yield tree


def test_the_check_table_is_every_recipe_and_what_its_main_runs():
    from finetune.launch import RECIPES

    assert set(CHECKS) == {Path(f).stem for f in RECIPES.values()}, "a recipe of `finetune train` is missing here"
    for recipe, (config_class, check) in CHECKS.items():
        main = inspect.getsource(importlib.import_module(f"recipes.{recipe}").main)
        why = f"recipes/{recipe}.py main() no longer runs {check} on a {config_class}: update CHECKS"
        opened = re.search(rf"open_recipe\({config_class}, .*\b{check}\)", main)  # open_recipe runs it first
        assert config_class in main and (f"{check}(" in main or opened), why


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_loads_and_passes_its_recipes_checks(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name the shipped data relative to the checkout, where the README runs them
    recipe = recipe_of(path)
    assert recipe in CHECKS, f"{path.name} names recipes/{recipe}.py, which is no recipe (finetune.launch.RECIPES)"
    module = importlib.import_module(f"recipes.{recipe}")
    config_class, check = CHECKS[recipe]
    cfg = parse_recipe_args(getattr(module, config_class), ["--config", str(path.relative_to(ROOT))])
    getattr(module, check)(cfg)  # LM: also reads every line of its data files and finds the shipped GGUF
    missing = [v for v in strings(to_dict(cfg)) if v.startswith("data/") and not (ROOT / v).exists()]
    assert not missing, f"{path.name} names shipped data that is not in the checkout: {missing}"
