"""Frozen weights in the mixed-precision dtype: stored once instead of cast by autocast on every forward."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def cast_frozen(params: Iterable[torch.nn.Parameter], dtype: torch.dtype) -> int:
    """Store each frozen floating-point parameter of `params` in `dtype`; trainable ones keep their (fp32) dtype.

    Under autocast a layer casts its fp32 weight to the autocast dtype on every forward and keeps that copy for
    backward; a frozen weight stored in that dtype once gives the same matmuls without the cast, in half the memory.
    Returns how many parameters changed dtype."""
    count = 0
    for p in params:
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            count += 1
    return count
