"""GAN objectives as pure functions of discriminator (critic) outputs.

Every function takes raw discriminator outputs (logits; the caller applies no sigmoid) and returns a
scalar mean, so a GAN loop reads `loss_d = d_fn(D(x), D(G(z).detach()))`, `loss_g = g_fn(D(G(z)))`.
`GAN_LOSSES` maps a config name to its (discriminator, generator) pair.

torch has the primitives (BCE-with-logits, softplus, autograd.grad) but no GAN objectives, so these
few lines are written by hand from the papers cited on each function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from finetune.errors import UserError


def _check_label(real_label: float) -> None:
    if not 0.0 < real_label <= 1.0:
        raise UserError(
            f"real_label={real_label} is outside (0, 1]; use 1.0, or e.g. 0.9 for one-sided label smoothing"
        )


def d_minimax(real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0) -> Tensor:
    """Discriminator loss of the original GAN (Goodfellow et al. 2014): BCE(real, real_label) + BCE(fake, 0).

    real_label < 1 is one-sided label smoothing (Salimans et al. 2016): only real targets are softened.
    At D = 0.5 everywhere (logits 0) the loss is 2*log(2).
    """
    _check_label(real_label)
    real_loss = F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, real_label))
    fake_loss = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real_loss + fake_loss


def g_minimax(fake_logits: Tensor) -> Tensor:
    """Saturating generator loss mean(log(1 - D(G(z)))), to minimise; log(1 - sigmoid(l)) = -softplus(l)."""
    return -F.softplus(fake_logits).mean()


def g_nonsaturating(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss -mean(log D(G(z))); -log(sigmoid(l)) = softplus(-l)."""
    return F.softplus(-fake_logits).mean()


def d_lsgan(real_out: Tensor, fake_out: Tensor, real_label: float = 1.0) -> Tensor:
    """Least-squares discriminator loss (Mao et al. 2017), (a, b) = (0, real_label):

    0.5 * mean((D(x) - b)^2) + 0.5 * mean((D(G(z)) - a)^2).
    """
    _check_label(real_label)
    return 0.5 * ((real_out - real_label) ** 2).mean() + 0.5 * (fake_out**2).mean()


def g_lsgan(fake_out: Tensor) -> Tensor:
    """Least-squares generator loss, c = 1: 0.5 * mean((D(G(z)) - 1)^2)."""
    return 0.5 * ((fake_out - 1.0) ** 2).mean()


def d_wgan(real_out: Tensor, fake_out: Tensor) -> Tensor:
    """Wasserstein critic loss (Arjovsky et al. 2017): mean(fake) - mean(real), to minimise."""
    return fake_out.mean() - real_out.mean()


def g_wgan(fake_out: Tensor) -> Tensor:
    """Wasserstein generator loss: -mean(critic(G(z)))."""
    return -fake_out.mean()


def d_hinge(real_out: Tensor, fake_out: Tensor) -> Tensor:
    """Hinge discriminator loss (Lim & Ye 2017; SAGAN): mean(relu(1 - real)) + mean(relu(1 + fake))."""
    return F.relu(1.0 - real_out).mean() + F.relu(1.0 + fake_out).mean()


def g_hinge(fake_out: Tensor) -> Tensor:
    """Hinge generator loss: -mean(D(G(z)))."""
    return -fake_out.mean()


@torch.no_grad()
def clip_weights_(module: nn.Module, clip: float) -> None:
    """WGAN weight clipping: clamp every parameter of `module` to [-clip, clip], in place."""
    if not clip > 0:
        raise UserError(f"weight clip={clip} must be > 0 (the WGAN paper uses 0.01)")
    for p in module.parameters():
        p.clamp_(-clip, clip)


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """WGAN-GP penalty (Gulrajani et al. 2017): mean over samples of (||grad_xhat critic(xhat)||_2 - 1)^2.

    xhat = eps * real + (1 - eps) * fake with eps ~ U(0, 1) per sample. The graph is kept
    (create_graph=True) so the penalty can be back-propagated into the critic's weights.
    The caller multiplies by its lambda (10 in the paper).
    """
    if real.shape != fake.shape:
        raise UserError(
            f"gradient_penalty needs real and fake batches of one shape, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    eps_shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    eps = torch.rand(eps_shape, generator=generator, device=real.device, dtype=real.dtype)
    xhat = (eps * real.detach() + (1.0 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(xhat)
    (grads,) = torch.autograd.grad(outputs=scores.sum(), inputs=xhat, create_graph=True)
    norms = grads.reshape(grads.shape[0], -1).norm(2, dim=1)
    return ((norms - 1.0) ** 2).mean()


GAN_LOSSES: dict[str, tuple[Callable[..., Tensor], Callable[[Tensor], Tensor]]] = {
    "minimax": (d_minimax, g_minimax),
    "nonsaturating": (d_minimax, g_nonsaturating),
    "lsgan": (d_lsgan, g_lsgan),
    "wgan": (d_wgan, g_wgan),
    "hinge": (d_hinge, g_hinge),
}


def get_gan_loss(name: str) -> tuple[Callable[..., Tensor], Callable[[Tensor], Tensor]]:
    """(d_fn, g_fn) for a GAN loss name; an unknown name is a UserError listing the valid ones."""
    if name not in GAN_LOSSES:
        raise UserError(f"unknown GAN loss {name!r}; choose one of {', '.join(GAN_LOSSES)}")
    return GAN_LOSSES[name]
