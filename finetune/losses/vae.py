"""The VAE objective (Kingma & Welling 2014): reconstruction + beta * KL(q(z|x) || N(0, I)).

Written by hand: torch has the pieces (BCE, MSE) and diffusers' AutoencoderKL returns a posterior,
but none of the libraries exposes the ELBO of a user's own encoder outputs.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from finetune.errors import UserError


def _per_sample_sum(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """Per-sample KL(N(mu, exp(logvar)) || N(0, I)) = -0.5 * sum(1 + logvar - mu^2 - exp(logvar))."""
    return -0.5 * _per_sample_sum(1.0 + logvar - mu.pow(2) - logvar.exp())


def elbo(
    recon_logits_or_mean: Tensor,
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    beta: float = 1.0,
    recon: Literal["bce", "mse"] = "bce",
) -> tuple[Tensor, Tensor, Tensor]:
    """Negative ELBO to minimise, as (loss, recon_term, kl_term); each summed over data dims, mean over batch.

    recon="bce": the decoder output is Bernoulli logits and x lies in [0, 1].
    recon="mse": the decoder output is the mean and the term is the summed squared error.
    loss = recon_term + beta * kl_term (beta > 1 is the beta-VAE).
    """
    if recon_logits_or_mean.shape != x.shape:
        raise UserError(
            f"elbo: decoder output shape {tuple(recon_logits_or_mean.shape)} != data shape {tuple(x.shape)}"
        )
    if mu.shape != logvar.shape or mu.shape[0] != x.shape[0]:
        raise UserError(
            f"elbo: mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must match and share the batch size of x"
        )
    if beta < 0:
        raise UserError(f"elbo: beta={beta} must be >= 0")
    if recon == "bce":
        if x.min() < 0 or x.max() > 1:
            raise UserError("elbo: recon='bce' needs data in [0, 1]; rescale the data or use recon='mse'")
        per_elem = F.binary_cross_entropy_with_logits(recon_logits_or_mean, x, reduction="none")
    elif recon == "mse":
        per_elem = (recon_logits_or_mean - x) ** 2
    else:
        raise UserError(f"elbo: unknown recon={recon!r}; use 'bce' or 'mse'")
    recon_term = _per_sample_sum(per_elem).mean()
    kl_term = gaussian_kl(mu, logvar).mean()
    return recon_term + beta * kl_term, recon_term, kl_term
