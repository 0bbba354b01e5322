"""Spectral norm bounds singular values; label smoothing targets; clipping reports without raising."""

import math

import pytest
import torch
from torch import nn

from finetune.errors import UserError
from finetune.losses.gan import d_minimax
from finetune.stabilize import apply_spectral_norm, clip_grad_norm, grad_norm, largest_singular_value, smooth_labels


def test_spectral_norm_makes_largest_singular_value_one():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 4, 2), nn.Flatten(), nn.LazyLinear(1))
    x = torch.randn(2, 3, 6, 6)
    net(x)  # materialise the lazy layer
    with torch.no_grad():
        for layer in (net[0], net[2], net[4]):
            layer.weight.mul_(10.0)
    assert largest_singular_value(net[0]) > 2.0
    apply_spectral_norm(net)
    net.train()
    for _ in range(5):  # a few power iterations
        net(x)
    for layer in (net[0], net[2], net[4]):
        assert largest_singular_value(layer) == pytest.approx(1.0, abs=1e-2)
    apply_spectral_norm(net)  # idempotent: no second parametrization
    assert len(net[0].parametrizations.weight) == 1


def test_spectral_norm_needs_a_matching_layer():
    with pytest.raises(UserError, match="Linear"):
        apply_spectral_norm(nn.Sequential(nn.ReLU()))


def test_smooth_labels():
    logits = torch.zeros(3, 1, dtype=torch.float64)
    targets = smooth_labels(logits)
    assert targets.shape == logits.shape and targets.dtype == logits.dtype and torch.all(targets == 0.9)
    with pytest.raises(UserError, match="0.9"):
        smooth_labels(logits, real=0.0)
    # the smoothed D loss at D = 0.5 is still 2 log 2 (BCE at logit 0 is log 2 for any target)
    assert d_minimax(logits, logits, real_label=0.9).item() == pytest.approx(2 * math.log(2))


def _params_with_grads(*grads):
    ps = [nn.Parameter(torch.zeros(len(g))) for g in grads]
    for p, g in zip(ps, grads):
        p.grad = torch.tensor(g)
    return ps


def test_grad_norm_and_clipping():
    ps = _params_with_grads([3.0, 4.0], [12.0])
    assert grad_norm(ps) == pytest.approx(13.0)
    assert clip_grad_norm(ps, 1.0) == pytest.approx(13.0)  # returns the pre-clip norm
    assert grad_norm(ps) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(ps[0].grad, torch.tensor([3.0, 4.0]) / 13, rtol=1e-5, atol=0)
    small = _params_with_grads([0.3, 0.4])
    assert clip_grad_norm(small, 1.0) == pytest.approx(0.5)
    assert torch.equal(small[0].grad, torch.tensor([0.3, 0.4]))  # under the limit: untouched
    assert grad_norm([nn.Parameter(torch.zeros(2))]) == 0.0


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_non_finite_gradients_are_reported_not_raised_and_left_alone(bad):
    ps = _params_with_grads([1.0, bad], [2.0])
    norm = clip_grad_norm(ps, 1.0)
    assert math.isinf(norm) if bad == math.inf else math.isnan(norm)
    assert ps[1].grad.item() == 2.0
    with pytest.raises(UserError, match="max_grad_norm"):
        clip_grad_norm(ps, 0.0)
