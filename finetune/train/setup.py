"""Run setup shared by recipes: the accelerator and the output directory."""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import set_seed

from finetune.config import save_config
from finetune.train.checkpoint import check_output_dir


def build_accelerator(seed: int) -> Accelerator:
    """Precision, device and process count come from `accelerate launch` (accelerate_config.yaml) only.

    Accumulation is done by the loop itself (see finetune/train/loop.py), so accelerate's own
    counter stays at 1.
    """
    import torch

    # With no accelerator present, say so: accelerate then runs several launched processes as
    # MULTI_CPU over gloo (`accelerate launch --multi_gpu --num_processes 2` on a CPU machine).
    has_accel = torch.cuda.is_available() or torch.backends.mps.is_available() or (
        hasattr(torch, "xpu") and torch.xpu.is_available()
    )
    accelerator = Accelerator(
        cpu=not has_accel, gradient_accumulation_steps=1, step_scheduler_with_optimizer=False
    )
    set_seed(seed)
    return accelerator


def start_run(accelerator, cfg, train_cfg) -> Path:
    """Check the output directory is ours to use, then write the resolved config beside the outputs."""
    out = Path(train_cfg.output_dir)
    check_output_dir(out, train_cfg.resume, train_cfg.overwrite_output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    accelerator.wait_for_everyone()
    return out
