"""Diffusion targets and min-SNR weights against closed forms derived from the noise schedule."""

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from finetune.errors import UserError
from finetune.losses import diffusion as D


@pytest.fixture(scope="module")
def sched():
    return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def _alpha_sigma(timesteps):
    # alpha_bar_t from the betas by hand, independent of diffusers.
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)[timesteps]
    return abar.sqrt().float(), (1 - abar).sqrt().float()


def test_targets(sched):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    ts = torch.tensor([0, 500, 999])
    assert D.diffusion_target(sched, x0, eps, ts, "epsilon") is eps
    assert D.diffusion_target(sched, x0, eps, ts, "sample") is x0
    v = D.diffusion_target(sched, x0, eps, ts, "v_prediction")
    torch.testing.assert_close(v, sched.get_velocity(x0, eps, ts))
    a, s = _alpha_sigma(ts)
    torch.testing.assert_close(v, a.view(3, 1, 1, 1) * eps - s.view(3, 1, 1, 1) * x0, rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="prediction_type"):
        D.diffusion_target(sched, x0, eps, ts, "x0")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_equal_min_snr_gamma_in_x0_space(sched, prediction_type):
    """Weighted loss on any target == min(SNR, gamma) * x0-space loss, for the same model output."""
    gamma = 5.0
    g = torch.Generator().manual_seed(1)
    ts = torch.tensor([3, 50, 200, 600, 999])
    x0 = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64)
    x0_hat = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64)
    a, s = (u.double().view(5, 1, 1, 1) for u in _alpha_sigma(ts))
    xt = a * x0 + s * eps
    eps_hat = (xt - a * x0_hat) / s  # the same prediction expressed in eps and v spaces
    pred, target = {
        "epsilon": (eps_hat, eps),
        "v_prediction": (a * eps_hat - s * x0_hat, a * eps - s * x0),
        "sample": (x0_hat, x0),
    }[prediction_type]
    w = D.snr_weights(sched, ts, gamma, prediction_type).double()
    per_sample = ((pred - target) ** 2).flatten(1).mean(1)
    snr = (a / s).pow(2).flatten()
    want = torch.clamp(snr, max=gamma) * ((x0_hat - x0) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(w * per_sample, want, rtol=1e-4, atol=1e-8)
    # and diffusion_loss applies them as a weighted mean over the batch
    got = D.diffusion_loss(pred.float(), target.float(), w.float())
    assert got.item() == pytest.approx(want.mean().item(), rel=1e-4)


def test_eps_weights_are_one_below_gamma_and_finite_at_zero_terminal_snr():
    zsnr = DDPMScheduler(num_train_timesteps=1000, rescale_betas_zero_snr=True)
    ts = torch.tensor([999, 900, 0])
    w = D.snr_weights(zsnr, ts, 5.0, "epsilon")
    assert torch.isfinite(w).all()
    assert w[0].item() == 1.0 and w[1].item() == pytest.approx(1.0)  # SNR < gamma: unweighted
    assert w[2].item() < 0.01  # SNR(t=0) >> gamma: down-weighted to gamma / SNR
    assert D.snr_weights(zsnr, ts[:1], 5.0, "v_prediction").item() == 0.0


def test_snr_user_errors(sched):
    with pytest.raises(UserError, match="snr_gamma"):
        D.snr_weights(sched, torch.tensor([1]), 0.0, "epsilon")
    with pytest.raises(UserError, match="alphas_cumprod"):
        D.snr_weights(FlowMatchEulerDiscreteScheduler(), torch.tensor([1]), 5.0, "epsilon")


def test_diffusion_loss_unweighted_and_weighted():
    pred = torch.stack([torch.ones(2, 2), torch.full((2, 2), 2.0)])  # per-sample mse 1 and 4
    target = torch.zeros(2, 2, 2)
    assert D.diffusion_loss(pred, target).item() == pytest.approx(2.5)
    assert D.diffusion_loss(pred, target, torch.tensor([1.0, 0.5])).item() == pytest.approx(1.5)
    with pytest.raises(UserError, match="shape"):
        D.diffusion_loss(pred, target[:, :1])
    with pytest.raises(UserError, match="one weight per sample"):
        D.diffusion_loss(pred, target, torch.ones(3))


def test_offset_noise_is_noise_plus_per_channel_shift():
    like = torch.zeros(2, 3, 4, 4)
    base = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(D.offset_noise(like, 0.0, torch.Generator().manual_seed(7)), base)
    g = torch.Generator().manual_seed(7)
    torch.randn(2, 3, 4, 4, generator=g)
    shift = torch.randn(2, 3, 1, 1, generator=g)
    got = D.offset_noise(like, 0.1, torch.Generator().manual_seed(7))
    torch.testing.assert_close(got - base, (0.1 * shift).expand(2, 3, 4, 4))


def test_prior_preservation_and_split():
    assert D.prior_preservation_loss(torch.tensor(1.0), torch.tensor(2.0), 0.5).item() == 2.0
    batch = torch.arange(6).view(6, 1)
    inst, prior = D.split_prior_batch(batch)
    assert inst.flatten().tolist() == [0, 1, 2] and prior.flatten().tolist() == [3, 4, 5]
    with pytest.raises(UserError, match="odd batch"):
        D.split_prior_batch(torch.zeros(3, 1))
