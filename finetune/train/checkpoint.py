"""Checkpoints: accelerate's `save_state` plus our own trainer state, written atomically.

A checkpoint directory `checkpoint-<step>` appears only once complete: every process writes into
`.tmp-checkpoint-<step>`, then the main process renames it. A run killed mid-write leaves only the
temporary directory, which resume ignores and removes.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from finetune.errors import UserError
from finetune.io import atomic_write_json

STATE_FILE = "trainer_state.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in out.iterdir()
        if (m := _CKPT.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """Map `resume` (None, "latest" or a path) to a checkpoint directory, or fail clearly."""
    if not resume:
        return None
    if resume == "latest":
        ckpts = list_checkpoints(output_dir)
        return ckpts[-1] if ckpts else None  # nothing saved yet: start fresh
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise UserError(
            f"resume checkpoint '{resume}' is not a complete checkpoint (no {STATE_FILE}); "
            "pass train.resume=latest or a checkpoint-<step> directory"
        )
    return path


def check_output_dir(output_dir: str | Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to mix a new run into a directory that holds another run's checkpoints."""
    if resume or overwrite:
        return
    ckpts = list_checkpoints(output_dir)
    if ckpts:
        raise UserError(
            f"output_dir '{output_dir}' already holds checkpoints of another run ({ckpts[-1].name}); "
            "pass train.resume=latest to continue it, train.overwrite_output_dir=true to replace it, "
            "or choose another train.output_dir"
        )


def params_finite(params) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


def save_checkpoint(accelerator, output_dir: str | Path, step: int, state: dict, keep_last: int) -> Path:
    """Save model/optimizer/scheduler/RNG (accelerate) + `state`; rotate old checkpoints."""
    out = Path(output_dir)
    tmp = out / f".tmp-checkpoint-{step}"
    final = out / f"checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, state)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if keep_last > 0:
            for old in list_checkpoints(out)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> dict:
    """Restore accelerate state (weights, optimizer, registered objects, RNG) and return our state."""
    accelerator.load_state(str(path), strict=False)  # only trainable weights were saved
    return json.loads((path / STATE_FILE).read_text())


def remove_partial(output_dir: str | Path) -> None:
    out = Path(output_dir)
    if out.is_dir():
        for p in out.glob(".tmp-checkpoint-*"):
            shutil.rmtree(p, ignore_errors=True)
