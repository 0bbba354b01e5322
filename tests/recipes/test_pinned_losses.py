"""Pinned losses: each recipe and method on its tiny model logs the same first train losses, number for number.

The other recipe tests are relative ("the loss fell"), so a change that shifts every run alike passes them; these
fail when any default, loss, data order or initialisation moves a loss, as torchtune's recipe tests do. The expected
values and the exact recipe arguments of every case live in tests/recipes/pinned_losses.json ({root}: the checkout,
{tiny_lm}: the tiny LLaMA built below, {out}: the run's output directory). They run in-process under the precision
the shipped accelerate_config.yaml sets.

When a change is MEANT to move the numbers, regenerate them and say why in the commit:

    OMP_NUM_THREADS=1 .venv/bin/python tests/recipes/test_pinned_losses.py --regenerate

(the same as `PINNED_LOSSES_REGENERATE=1 pytest tests/recipes/test_pinned_losses.py`; the arguments stay as the
file has them, only the losses and the precision are rewritten).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import typing
from pathlib import Path

import pytest
import torch

if __package__ in (None, ""):  # run as a script: the checkout must be importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from finetune.io import atomic_write_text
from finetune.train.logging import read_metrics
from tests.conftest import ROOT

PINNED = Path(__file__).with_name("pinned_losses.json")
REGENERATE = os.environ.get("PINNED_LOSSES_REGENERATE") == "1"
REGENERATE_COMMAND = "OMP_NUM_THREADS=1 .venv/bin/python tests/recipes/test_pinned_losses.py --regenerate"


def pinned() -> dict:
    return json.loads(PINNED.read_text())


CASES = pinned()["cases"]


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """bf16 CPU kernels split their sums by thread count: on 2 threads the SD full and autoencoder losses move
    by ~2e-4 (fp32 ones by ~1e-7), so every case runs on one thread, whatever OMP_NUM_THREADS says."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """The 4-layer tiny LLaMA and byte tokenizer the LM cases train (built from code: nothing is downloaded)."""
    from finetune.models.causal_lm import build_tiny_llama, build_tiny_tokenizer

    folder = tmp_path_factory.mktemp("pinned_tiny_lm")
    build_tiny_llama(num_hidden_layers=4).save_pretrained(folder, safe_serialization=True)
    build_tiny_tokenizer().save_pretrained(folder)
    return folder


def recipe_args(case: dict, tiny_lm: Path, out: Path) -> list[str]:
    return [a.format(root=ROOT, tiny_lm=tiny_lm, out=out) for a in case["args"]]


def train_losses(out: Path, keys: list[str], steps: int) -> dict[str, list[float]]:
    train = [r for r in read_metrics(out) if r["split"] == "train"][:steps]
    assert [r["step"] for r in train] == list(range(1, steps + 1)), f"expected train records for steps 1..{steps}"
    return {k: [float(r[k]) for r in train] for k in keys}


def mismatch_report(name: str, expected: dict, got: dict, rtol: float) -> str:
    """A table of every pinned value against the new one, so a reader sees which steps and terms moved."""
    lines = [
        f"{name}: the logged train losses moved off their pinned values (rtol {rtol:g}):",
        f"  {'key':<8} {'step':>4} {'pinned':>16} {'now':>16} {'rel diff':>10}",
    ]
    for key, want in expected.items():
        for step, (w, g) in enumerate(zip(want, got[key]), 1):
            rel = abs(g - w) / max(abs(w), 1e-12)
            flag = "  <-" if rel > rtol else ""
            lines.append(f"  {key:<8} {step:>4} {w:>16.9g} {g:>16.9g} {rel:>10.2e}{flag}")
    lines.append(f"If the change is meant to move them: {REGENERATE_COMMAND}, and say why in the commit.")
    return "\n".join(lines)


def record(name: str, losses: dict, precision: str) -> None:
    """Regenerate mode: write this case's new losses into the data file, keeping its arguments."""
    data = pinned()
    data["mixed_precision"] = precision
    data["cases"][name]["losses"] = losses
    atomic_write_text(PINNED, json.dumps(data, indent=2) + "\n")


@pytest.mark.parametrize("name", sorted(CASES))
def test_first_train_losses_are_pinned(name, tiny_lm, tmp_path, shipped_mixed_precision):
    case, data = CASES[name], pinned()
    if not REGENERATE and data["mixed_precision"] != shipped_mixed_precision:
        pytest.fail(
            f"pinned_losses.json was made under mixed_precision={data['mixed_precision']}, but the shipped "
            f"accelerate_config.yaml now sets {shipped_mixed_precision}: {REGENERATE_COMMAND}"
        )
    out = tmp_path / "run"
    importlib.import_module(f"recipes.{case['recipe']}").main(recipe_args(case, tiny_lm, out))
    got = train_losses(out, list(case["losses"]), case["steps"])
    if REGENERATE:
        record(name, got, shipped_mixed_precision)
        return
    expected, rtol = case["losses"], data["rtol"]
    close = all(g == pytest.approx(w, rel=rtol, abs=0) for k in expected for w, g in zip(expected[k], got[k]))
    assert close, mismatch_report(name, expected, got, rtol)


def test_every_recipe_and_method_has_a_pinned_case():
    """A new recipe or method is pinned too: each recipe `finetune train` runs, and each LM / SD method."""
    from finetune.launch import RECIPES

    pinned_recipes = {case["recipe"] for case in CASES.values()}
    assert {Path(f).stem for f in RECIPES.values()} <= pinned_recipes
    for recipe, config_class in (("train_lm", "LMRecipeConfig"), ("train_sd", "SDRecipeConfig")):
        cls = getattr(importlib.import_module(f"recipes.{recipe}"), config_class)
        methods = set(typing.get_args(typing.get_type_hints(cls)["method"]))
        default = cls.__dataclass_fields__["method"].default
        used = {
            next((a.split("=", 1)[1] for a in case["args"] if a.startswith("method=")), default)
            for case in CASES.values()
            if case["recipe"] == recipe
        }
        assert used == methods, f"{recipe}: methods without a pinned case: {sorted(methods - used)}"
    for name, case in CASES.items():
        assert len(case["losses"][next(iter(case["losses"]))]) == case["steps"], f"{name}: regenerate the file"
        assert any(a.startswith("train.output_dir={out}") for a in case["args"]), f"{name}: must write under {{out}}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(f"usage: {REGENERATE_COMMAND}")
    os.environ["PINNED_LOSSES_REGENERATE"] = "1"
    os.chdir(ROOT)
    this_file = str(Path(__file__).relative_to(ROOT))
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", this_file, "-k", "first_train_losses"]))
