"""Training stabilizers: spectral norm, one-sided label smoothing, gradient clipping, TTUR optimizers."""

from finetune.optim.optimizers import GAN_BETAS, build_ttur
from finetune.stabilize.clipping import clip_grad_norm, grad_norm
from finetune.stabilize.labels import smooth_labels
from finetune.stabilize.spectral import apply_spectral_norm, largest_singular_value

__all__ = [
    "GAN_BETAS",
    "apply_spectral_norm",
    "build_ttur",
    "clip_grad_norm",
    "grad_norm",
    "largest_singular_value",
    "smooth_labels",
]
