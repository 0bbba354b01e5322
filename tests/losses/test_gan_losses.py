"""GAN objectives at hand-computed points, WGAN-GP's closed form, and the registry."""

import math

import pytest
import torch
from torch import nn

from finetune.errors import UserError
from finetune.losses import gan


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_minimax_d_loss_at_half_is_two_log_two():
    zeros = torch.zeros(7, 1)
    assert gan.d_minimax(zeros, zeros).item() == pytest.approx(2 * math.log(2))


def test_minimax_d_loss_with_one_sided_smoothing_matches_bce_by_hand():
    real, fake = t(1.5, -0.5), t(0.3, -2.0)
    sig = torch.sigmoid
    want_real = -(0.9 * torch.log(sig(real)) + 0.1 * torch.log(1 - sig(real))).mean()
    want_fake = -torch.log(1 - sig(fake)).mean()
    got = gan.d_minimax(real, fake, real_label=0.9)
    assert got.item() == pytest.approx((want_real + want_fake).item(), rel=1e-12)


def test_generator_losses_at_half_and_saturation():
    assert gan.g_minimax(t(0.0, 0.0)).item() == pytest.approx(-math.log(2))
    assert gan.g_nonsaturating(t(0.0, 0.0)).item() == pytest.approx(math.log(2))
    # A confident discriminator (D(G(z)) ~ 0): the saturating loss gives almost no gradient, the
    # non-saturating one gives a gradient of magnitude ~1 (why the non-saturating loss exists).
    x1 = torch.full((1,), -10.0, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    gan.g_minimax(x1).backward()
    gan.g_nonsaturating(x2).backward()
    assert abs(x1.grad.item()) < 1e-4
    assert abs(x2.grad.item()) == pytest.approx(1.0, abs=1e-4)


def test_lsgan_at_hand_points():
    real, fake = t(1.0, 3.0), t(0.0, 2.0)
    # 0.5*mean(0, 4) + 0.5*mean(0, 4) = 2 ; generator 0.5*mean(1, 1) = 0.5
    assert gan.d_lsgan(real, fake).item() == pytest.approx(2.0)
    assert gan.g_lsgan(fake).item() == pytest.approx(0.5)
    assert gan.d_lsgan(t(0.9), t(0.0), real_label=0.9).item() == pytest.approx(0.0)


def test_wgan_and_hinge_at_hand_points():
    assert gan.d_wgan(t(1.0, 2.0, 3.0), t(0.0, 1.0)).item() == pytest.approx(0.5 - 2.0)
    assert gan.g_wgan(t(0.0, 1.0)).item() == pytest.approx(-0.5)
    # real: relu(1-0.5)=0.5, relu(1-2)=0 -> 0.25 ; fake: relu(1-2)=0, relu(1+0)=1 -> 0.5
    assert gan.d_hinge(t(0.5, 2.0), t(-2.0, 0.0)).item() == pytest.approx(0.75)
    assert gan.g_hinge(t(-2.0, 0.0)).item() == pytest.approx(1.0)


def test_registry_pairs():
    assert set(gan.GAN_LOSSES) == {"minimax", "nonsaturating", "lsgan", "wgan", "hinge"}
    assert gan.GAN_LOSSES["minimax"] == (gan.d_minimax, gan.g_minimax)
    assert gan.GAN_LOSSES["nonsaturating"] == (gan.d_minimax, gan.g_nonsaturating)
    assert gan.get_gan_loss("hinge") == (gan.d_hinge, gan.g_hinge)
    with pytest.raises(UserError, match="hinge"):
        gan.get_gan_loss("hinj")


def test_bad_real_label_is_a_user_error():
    with pytest.raises(UserError, match="real_label"):
        gan.d_minimax(t(0.0), t(0.0), real_label=1.5)


def test_clip_weights_in_place():
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -0.5, 0.001], [0.02, -0.03, 0.0]]))
        lin.bias.copy_(torch.tensor([-1.0, 0.005]))
    gan.clip_weights_(lin, 0.01)
    assert torch.equal(lin.weight, torch.tensor([[0.01, -0.01, 0.001], [0.01, -0.01, 0.0]]))
    assert torch.equal(lin.bias, torch.tensor([-0.01, 0.005]))
    with pytest.raises(UserError):
        gan.clip_weights_(lin, 0.0)


def _linear_critic(weight):
    critic = nn.Linear(weight.numel(), 1).double()
    with torch.no_grad():
        critic.weight.copy_(weight.reshape(1, -1))
        critic.bias.fill_(0.3)
    return critic


def test_gradient_penalty_is_zero_for_unit_norm_linear_critic():
    w = torch.randn(6, dtype=torch.float64)
    critic = _linear_critic(w / w.norm())
    real, fake = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    assert gan.gradient_penalty(critic, real, fake).item() == pytest.approx(0.0, abs=1e-20)


def test_gradient_penalty_closed_form_and_gradient_into_critic():
    w = torch.randn(6, dtype=torch.float64)
    w = 2.0 * w / w.norm()  # ||w|| = 2 -> penalty (2 - 1)^2 = 1
    critic = _linear_critic(w)
    real, fake = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    gp = gan.gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx(1.0)
    gp.backward()  # needs create_graph=True: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| = w here
    torch.testing.assert_close(critic.weight.grad.reshape(-1), w)


def test_gradient_penalty_uses_per_sample_norm_over_all_dims():
    # critic(x) = 0.5 ||x||^2 has gradient x; with real == fake every interpolate is x itself.
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    gp = gan.gradient_penalty(lambda z: 0.5 * z.pow(2).flatten(1).sum(1), x, x.clone())
    want = ((x.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert gp.item() == pytest.approx(want.item())
    with pytest.raises(UserError, match="shape"):
        gan.gradient_penalty(lambda z: z.sum(), x, x[:2])
