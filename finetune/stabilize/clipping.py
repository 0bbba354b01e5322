"""Gradient-norm measurement and clipping that report instead of raising on non-finite gradients.

Thin wrappers over torch.nn.utils.get_total_norm / clip_grads_with_norm_. Under accelerate with fp16
use accelerator.clip_grad_norm_, which unscales the gradients first; these are for loops that own
their gradients (e.g. the GAN loop) and for logging.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from finetune.errors import UserError

Params = Tensor | Iterable[Tensor]


def _grads(params: Params) -> list[Tensor]:
    if isinstance(params, Tensor):
        params = [params]
    return [p.grad for p in params if p.grad is not None]


def grad_norm(params: Params) -> float:
    """Total L2 norm of the gradients of `params` (0.0 when none has a gradient); may be inf or nan."""
    grads = _grads(params)
    if not grads:
        return 0.0
    return float(torch.nn.utils.get_total_norm(grads, norm_type=2.0))


def clip_grad_norm(params: Params, max_norm: float) -> float:
    """Scale gradients so their total L2 norm is at most max_norm; returns the norm before clipping.

    A non-finite norm is returned as is (inf or nan) and the gradients are left untouched, so the
    caller can log it and skip the step; this never raises.
    """
    if not max_norm > 0:
        raise UserError(f"max_grad_norm={max_norm} must be > 0 (1.0 is common)")
    params = [params] if isinstance(params, Tensor) else list(params)
    grads = _grads(params)
    if not grads:
        return 0.0
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    value = float(total)
    if math.isfinite(value):
        torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, total)
    return value
