"""Exponential moving average of the trained weights, through diffusers' `EMAModel`.

`build_ema` makes one over the trainable parameters (fp32 shadow copies); the recipe calls `ema.step(params)`
after each optimizer step (Hooks.after_optimizer_step) and evaluates and saves inside `ema_weights(...)`,
which swaps the averaged weights in and the live ones back afterwards. EMAModel has state_dict /
load_state_dict, so the loop's checkpoints carry it (pass it in `checkpoint_objects`): floats and ints in
the JSON skeleton, the shadow weights in safetensors (finetune/train/state.py).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from finetune.errors import UserError


@dataclass
class EMAConfig:
    enabled: bool = False  # keep an EMA of the trained weights; validation and the saved artifacts then use it
    decay: float = 0.9999  # maximum EMA decay per optimizer step
    warmup: bool = True  # diffusers' EMA warmup: the decay grows from 0 so early averages are not stuck at the init


def build_ema(params: list[torch.nn.Parameter], cfg: EMAConfig):
    """A diffusers EMAModel over `params`, or None when disabled."""
    if not cfg.enabled:
        return None
    if not 0.0 < cfg.decay < 1.0:
        raise UserError(f"ema.decay must be in (0, 1), got {cfg.decay}; 0.999-0.9999 is usual")
    return _ema_class()(params, decay=cfg.decay, use_ema_warmup=cfg.warmup)


@functools.cache
def _ema_class():
    """diffusers' EMAModel, whose restored shadow weights go back to the device of the weights it averages."""
    from diffusers.training_utils import EMAModel  # imported late: diffusers is slow to import

    class EMA(EMAModel):
        def load_state_dict(self, state_dict: dict) -> None:
            device = self.shadow_params[0].device if self.shadow_params else None
            super().load_state_dict(state_dict)  # checkpoints are read onto the CPU
            if device is not None:
                self.to(device=device)

    return EMA


@contextlib.contextmanager
def ema_weights(ema, params: list[torch.nn.Parameter]):
    """Inside the block `params` hold the EMA weights; the training weights come back afterwards."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)
