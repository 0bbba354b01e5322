"""Quiet by default: a recipe's output carries none of the known library noise, and FINETUNE_VERBOSE=1 brings it back.
(The LM recipe's noise is checked through `finetune train` in tests/test_cli.py.)"""

from __future__ import annotations

import logging
import subprocess
import sys

from finetune.quiet import filter_known_log_noise
from tests.conftest import ROOT
from tests.recipes.test_sd_recipe import BASE, PROMPT, write_images
from tests.test_cli import user_env

SD_NOISE = ["requires torchvision", "kept in float32: []"]
# printed while diffusers is imported when the quant extra (torchao, bitsandbytes) is installed, as make setup does
QUANT_NOISE = ["Failed to load", "is an Enum subclass", "Unable to import `torchao` Tensor objects"]


def run_sd(tmp_path, name: str, **env: str) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "train_sd.py"),
            *BASE,
            f"train.output_dir={tmp_path / name}",
            f"data.instance_dir={write_images(tmp_path / 'inst', 2)}",
            f"data.instance_prompt={PROMPT}",
            "train.max_steps=1",
            "train.batch_size=1",
            "validation.grids=false",
        ],
        env=user_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_sd_recipe_output_has_no_library_noise_unless_verbose(tmp_path):
    quiet = run_sd(tmp_path, "quiet")
    assert "validation loss" in quiet  # the recipe's own report is still there
    assert not [n for n in SD_NOISE + QUANT_NOISE if n in quiet], quiet
    loud = run_sd(tmp_path, "loud", FINETUNE_VERBOSE="1")
    assert all(n in loud for n in SD_NOISE), loud  # the switch works, and the strings are the real messages


def test_only_the_known_message_is_dropped(monkeypatch):
    monkeypatch.delenv("FINETUNE_VERBOSE", raising=False)
    filter_known_log_noise()
    logger = logging.getLogger("diffusers.models.modeling_utils")
    record = lambda msg: logger.makeRecord(logger.name, logging.WARNING, __file__, 0, msg, (), None)  # noqa: E731
    assert not logger.filter(
        record("There are modules in UNet2DConditionModel that should be kept in float32: []. Casting")
    )
    assert logger.filter(
        record("There are modules in UNet2DConditionModel that should be kept in float32: ['norm']. Casting")
    )
    assert logger.filter(record("Some other warning"))
    monkeypatch.setenv("FINETUNE_VERBOSE", "1")
    assert logger.filter(
        record("There are modules in UNet2DConditionModel that should be kept in float32: []. Casting")
    )


def test_quiet_tqdm_silences_one_module_bar_and_restores_it(monkeypatch, capsys):
    """transformers' GGUF reader draws its tensor bar with tqdm.auto directly; the conversion runs it quietly."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from finetune.quiet import quiet_tqdm

    monkeypatch.delenv("FINETUNE_VERBOSE", raising=False)
    original = gguf_utils.tqdm
    with quiet_tqdm("transformers.modeling_gguf_pytorch_utils"):
        list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
    assert "Converting" not in capsys.readouterr().err and gguf_utils.tqdm is original
    monkeypatch.setenv("FINETUNE_VERBOSE", "1")
    with quiet_tqdm("transformers.modeling_gguf_pytorch_utils"):
        list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
    assert "Converting" in capsys.readouterr().err
