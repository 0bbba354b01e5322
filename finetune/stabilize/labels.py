"""Label targets for discriminator training: one-sided label smoothing (Salimans et al. 2016)."""

from __future__ import annotations

import torch
from torch import Tensor

from finetune.errors import UserError


def smooth_labels(shape_like: Tensor, real: float = 0.9) -> Tensor:
    """Targets for real examples, all equal to `real` (< 1 smooths); fake targets stay 0, hence one-sided."""
    if not 0.0 < real <= 1.0:
        raise UserError(f"smoothed real label {real} is outside (0, 1]; 0.9 is the usual choice")
    return torch.full_like(shape_like, real)
