"""Frozen weights in the mixed-precision dtype: stored once instead of cast by autocast on every forward."""

from __future__ import annotations

import torch


def cast_frozen(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Store the frozen parameters of `module` in `dtype`; trainable ones keep their (fp32) dtype."""
    for p in module.parameters():
        if not p.requires_grad and p.is_floating_point():
            p.data = p.data.to(dtype)
    return module
