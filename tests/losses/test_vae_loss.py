"""ELBO terms against closed forms and torch.distributions."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from finetune.errors import UserError
from finetune.losses.vae import elbo, gaussian_kl


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 8, generator=g, dtype=torch.float64)
    logvar = torch.randn(5, 8, generator=g, dtype=torch.float64)
    want = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), want)
    x = torch.rand(5, 3, dtype=torch.float64)
    _, _, kl = elbo(torch.zeros_like(x), x, mu, logvar)
    assert kl.item() == pytest.approx(want.mean().item())


def test_kl_is_zero_at_the_prior():
    z = torch.zeros(2, 4)
    assert gaussian_kl(z, z).abs().max().item() == 0.0


def test_bce_recon_at_zero_logits_is_dims_times_log_two_and_loss_adds_beta_kl():
    x = torch.rand(4, 1, 3, 3, dtype=torch.float64)
    mu = torch.full((4, 2), 1.0, dtype=torch.float64)
    logvar = torch.zeros(4, 2, dtype=torch.float64)
    loss, recon, kl = elbo(torch.zeros_like(x), x, mu, logvar, beta=4.0)
    assert recon.item() == pytest.approx(9 * math.log(2))  # BCE(logit 0, y) = log 2 for any y
    assert kl.item() == pytest.approx(1.0)  # 0.5 * sum(mu^2) = 0.5 * 2
    assert loss.item() == pytest.approx(9 * math.log(2) + 4.0)


def test_mse_recon_sums_over_dims_and_averages_over_batch():
    x = torch.zeros(2, 3)
    mean = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, 0.0]])  # sums 3 and 4 -> mean 3.5
    z = torch.zeros(2, 1)
    loss, recon, kl = elbo(mean, x, z, z, recon="mse")
    assert recon.item() == pytest.approx(3.5) and kl.item() == 0.0 and loss.item() == pytest.approx(3.5)


def test_user_errors():
    x = torch.rand(2, 3)
    z = torch.zeros(2, 1)
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        elbo(x, x * 3, z, z, recon="bce")
    with pytest.raises(UserError, match="shape"):
        elbo(x[:, :2], x, z, z)
    with pytest.raises(UserError, match="recon"):
        elbo(x, x, z, z, recon="l1")
