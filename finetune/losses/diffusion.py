"""Denoising-diffusion training objectives on top of diffusers' noise schedulers.

The target (eps / v / x0), min-SNR-gamma weights, the per-sample MSE, offset noise and DreamBooth's
prior-preservation split. diffusers provides `get_velocity` and `compute_snr`, which are used here;
the few remaining lines (the weighting algebra, the batch split) are written by hand because
diffusers keeps them inline in its example scripts rather than in the library.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from finetune.errors import UserError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass
class DiffusionLossConfig:
    snr_gamma: float = 0.0  # min-SNR-gamma loss weights (5.0 is the paper's choice); 0 disables
    noise_offset: float = (
        0.0  # offset-noise strength (0.05-0.1 lets the model learn very dark/bright images); 0 disables
    )


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise UserError(f"unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")


def _check_scheduler(scheduler) -> None:
    if getattr(scheduler, "alphas_cumprod", None) is None:
        raise UserError(
            f"{type(scheduler).__name__} has no alphas_cumprod; use a DDPM-style noise scheduler (e.g. DDPMScheduler) for training"
        )


def diffusion_target(scheduler, latents: Tensor, noise: Tensor, timesteps: Tensor, prediction_type: str) -> Tensor:
    """What the model should predict: the noise ("epsilon"), the velocity ("v_prediction") or the clean latents ("sample")."""
    _check_prediction_type(prediction_type)
    if latents.shape != noise.shape:
        raise UserError(f"latents {tuple(latents.shape)} and noise {tuple(noise.shape)} must have one shape")
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return latents
    _check_scheduler(scheduler)
    # v = sqrt(alpha_bar) * eps - sqrt(1 - alpha_bar) * x0 (Salimans & Ho 2022), computed by diffusers.
    return scheduler.get_velocity(latents, noise, timesteps)


def snr_weights(scheduler, timesteps: Tensor, gamma: float, prediction_type: str) -> Tensor:
    """Per-sample min-SNR-gamma loss weights (Hang et al. 2023) for the given prediction type.

    Min-SNR weights the x0-space error by min(SNR, gamma). The eps-space error equals SNR times the
    x0-space error and the v-space error equals (SNR + 1) times it, so the weight on the MSE of
    the actual target is min(SNR, gamma) / SNR for eps, min(SNR, gamma) / (SNR + 1) for v and
    min(SNR, gamma) for x0. At SNR = 0 (zero-terminal-SNR schedules) the eps weight is its limit, 1.
    """
    _check_prediction_type(prediction_type)
    _check_scheduler(scheduler)
    if not gamma > 0:
        raise UserError(f"snr_gamma={gamma} must be > 0 (5.0 is the paper's recommendation)")
    from diffusers.training_utils import compute_snr  # imported here: diffusers is slow to import for LM-only users

    snr = compute_snr(scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return torch.where(snr > 0, clipped / snr.clamp(min=torch.finfo(snr.dtype).tiny), torch.ones_like(snr))
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped


def diffusion_loss(model_pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """MSE per sample (mean over non-batch dims, in fp32), then the mean over the batch, weighted if `weights` (shape (B,)) is given."""
    if model_pred.shape != target.shape:
        raise UserError(
            f"model output {tuple(model_pred.shape)} and target {tuple(target.shape)} differ in shape; check prediction_type and the model's out_channels"
        )
    per_sample = ((model_pred.float() - target.float()) ** 2).reshape(model_pred.shape[0], -1).mean(dim=1)
    if weights is None:
        return per_sample.mean()
    if weights.shape != per_sample.shape:
        raise UserError(
            f"loss weights have shape {tuple(weights.shape)}; expected one weight per sample, {tuple(per_sample.shape)}"
        )
    return (per_sample * weights.to(per_sample)).mean()


def offset_noise(latents_shape_like: Tensor, noise_offset: float, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian noise shaped like the latents plus noise_offset * randn(B, C, 1, ..., 1) (a per-channel shift).

    The shift lets the model learn to change an image's mean brightness (Guttenberg 2023, "offset noise").
    """
    like = latents_shape_like
    if like.dim() < 2:
        raise UserError(f"offset_noise needs latents shaped (B, C, ...), got {tuple(like.shape)}")
    noise = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    if noise_offset == 0:
        return noise
    shift_shape = like.shape[:2] + (1,) * (like.dim() - 2)
    shift = torch.randn(shift_shape, generator=generator, device=like.device, dtype=like.dtype)
    return noise + noise_offset * shift


def prior_preservation_loss(instance_loss: Tensor, prior_loss: Tensor, prior_loss_weight: float) -> Tensor:
    """DreamBooth's objective (Ruiz et al. 2023): instance loss + prior_loss_weight * class-prior loss."""
    return instance_loss + prior_loss_weight * prior_loss


def split_prior_batch(tensor: Tensor) -> tuple[Tensor, Tensor]:
    """Split a DreamBooth batch, instance examples first then class examples, into its two halves."""
    if tensor.shape[0] % 2 != 0:
        raise UserError(
            f"a prior-preservation batch must hold instance and class examples in equal numbers; got an odd batch of {tensor.shape[0]}"
        )
    instance, prior = torch.chunk(tensor, 2, dim=0)
    return instance, prior
