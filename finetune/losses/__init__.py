"""Losses as pure functions: GAN objectives, the VAE ELBO, diffusion targets/weights, causal LM loss, and the
teacher/student divergences of distillation and forgetting."""

from finetune.losses.diffusion import (
    diffusion_loss,
    diffusion_target,
    offset_noise,
    prior_preservation_loss,
    snr_weights,
    split_prior_batch,
)
from finetune.losses.distill import DenseTeacher, TopKTeacher, divergence_from_hidden, row_divergence, scored_rows
from finetune.losses.gan import (
    GAN_LOSSES,
    clip_weights_,
    d_hinge,
    d_lsgan,
    d_minimax,
    d_wgan,
    g_hinge,
    g_lsgan,
    g_minimax,
    g_nonsaturating,
    g_wgan,
    get_gan_loss,
    gradient_penalty,
)
from finetune.losses.lm import causal_lm_loss, count_trained_tokens
from finetune.losses.vae import elbo, gaussian_kl

__all__ = [
    "DenseTeacher",
    "TopKTeacher",
    "divergence_from_hidden",
    "row_divergence",
    "scored_rows",
    "GAN_LOSSES",
    "causal_lm_loss",
    "clip_weights_",
    "count_trained_tokens",
    "d_hinge",
    "d_lsgan",
    "d_minimax",
    "d_wgan",
    "diffusion_loss",
    "diffusion_target",
    "elbo",
    "g_hinge",
    "g_lsgan",
    "g_minimax",
    "g_nonsaturating",
    "g_wgan",
    "gaussian_kl",
    "get_gan_loss",
    "gradient_penalty",
    "offset_noise",
    "prior_preservation_loss",
    "snr_weights",
    "split_prior_batch",
]
