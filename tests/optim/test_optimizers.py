"""Decay/no-decay groups hold exactly the expected names; optimizers follow config; TTUR pairs."""

import pytest
import torch
from torch import nn

from finetune.errors import UserError
from finetune.optim import GAN_BETAS, OptimConfig, build_optimizer, build_ttur, param_groups


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.input_layernorm = nn.LayerNorm(4)
        self.norm = nn.RMSNorm(4)
        self.conv = nn.Conv2d(4, 4, 1, bias=False)
        self.group_norm = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def _names(groups):
    return [sorted(g["param_names"]) for g in groups]


def test_decay_and_no_decay_groups_hold_exactly_the_expected_names():
    groups = param_groups(Tiny().named_parameters(), weight_decay=0.1)
    assert _names(groups) == [
        ["conv.weight", "embed_tokens.weight", "head.weight", "proj.weight"],
        [
            "group_norm.bias",
            "group_norm.weight",
            "input_layernorm.bias",
            "input_layernorm.weight",
            "norm.weight",
            "proj.bias",
        ],
    ]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert "lr" not in groups[0]


def test_embeddings_optional_frozen_optional_lr_and_tied_weights():
    m = Tiny()
    m.head.weight = m.embed_tokens.weight  # tied: appears once, under its first name
    groups = param_groups(m.named_parameters(remove_duplicate=False), 0.1, lr=3e-4, no_decay_embeddings=True)
    assert _names(groups)[0] == ["conv.weight", "proj.weight"]
    assert "embed_tokens.weight" in groups[1]["param_names"] and "head.weight" not in groups[1]["param_names"]
    assert all(g["lr"] == 3e-4 for g in groups)
    with_frozen = param_groups(Tiny().named_parameters(), 0.1, trainable_only=False)
    assert "frozen.weight" in with_frozen[0]["param_names"] and "frozen.bias" in with_frozen[1]["param_names"]


def test_adamw_decays_only_the_decay_group():
    torch.manual_seed(0)
    m = Tiny()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = build_optimizer(param_groups(m.named_parameters(), 0.5), OptimConfig(lr=0.1))
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradient: AdamW only applies decoupled decay, p *= 1 - lr * wd
    after = dict(m.named_parameters())
    torch.testing.assert_close(after["proj.weight"], before["proj.weight"] * 0.95)
    torch.testing.assert_close(after["input_layernorm.weight"], before["input_layernorm.weight"])
    torch.testing.assert_close(after["proj.bias"], before["proj.bias"])


@pytest.mark.parametrize(
    "name,cls",
    [
        ("adamw", torch.optim.AdamW),
        ("adam", torch.optim.Adam),
        ("rmsprop", torch.optim.RMSprop),
        ("sgd", torch.optim.SGD),
    ],
)
def test_build_optimizer_kinds(name, cls):
    lin = nn.Linear(2, 2)
    opt = build_optimizer(lin.parameters(), OptimConfig(name=name, lr=0.02, momentum=0.9, betas=[0.5, 0.99]))
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.02 and len(group["params"]) == 2
    if name.startswith("adam"):
        assert tuple(group["betas"]) == (0.5, 0.99)
    else:
        assert group["momentum"] == 0.9


def test_named_pairs_and_group_lrs_are_kept():
    lin = nn.Linear(2, 2)
    opt = build_optimizer(lin.named_parameters(), OptimConfig())
    assert opt.param_groups[0]["param_names"] == ["weight", "bias"]
    opt = build_optimizer([{"params": [lin.weight], "lr": 1.0}, {"params": iter([lin.bias])}], OptimConfig(lr=0.5))
    assert [g["lr"] for g in opt.param_groups] == [1.0, 0.5]
    assert opt.param_groups[1]["params"] == [lin.bias]


def test_optimizer_user_errors():
    lin = nn.Linear(2, 2)
    with pytest.raises(UserError, match="no parameters"):
        build_optimizer([], OptimConfig())
    with pytest.raises(UserError, match="no parameters"):
        build_optimizer([{"params": []}], OptimConfig())
    with pytest.raises(UserError, match="betas"):
        build_optimizer(lin.parameters(), OptimConfig(betas=[0.9]))
    with pytest.raises(UserError, match="lr"):
        build_optimizer(lin.parameters(), OptimConfig(lr=0.0))
    with pytest.raises(UserError, match="adamw"):
        build_optimizer(lin.parameters(), OptimConfig(name="lion"))


def test_ttur_two_optimizers_with_own_lrs():
    gen, disc = nn.Linear(2, 2), nn.Linear(2, 1)
    cfg_g = OptimConfig(name="adam", lr=1e-4, betas=list(GAN_BETAS))
    cfg_d = OptimConfig(name="adam", lr=4e-4, betas=list(GAN_BETAS))
    opt_g, opt_d = build_ttur(gen.parameters(), disc.parameters(), cfg_g, cfg_d)
    assert opt_g.param_groups[0]["lr"] == 1e-4 and opt_d.param_groups[0]["lr"] == 4e-4
    assert tuple(opt_d.param_groups[0]["betas"]) == GAN_BETAS == (0.5, 0.999)
    assert {id(p) for p in opt_g.param_groups[0]["params"]} == {id(p) for p in gen.parameters()}
    with pytest.raises(UserError, match="overlap"):
        build_ttur(gen.parameters(), list(disc.parameters()) + [gen.bias], cfg_g, cfg_d)


def test_a_norm_module_with_a_matrix_weight_gets_no_decay_but_its_linear_children_do():
    class AdaNorm(nn.Module):  # a modulated norm with a 2-D scale table and a Linear inside
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3, 4))
            self.linear = nn.Linear(4, 4)

    block = nn.Module()
    block.norm1 = AdaNorm()
    groups = param_groups(block.named_parameters(), 0.1)
    assert _names(groups) == [["norm1.linear.weight"], ["norm1.linear.bias", "norm1.weight"]]


def test_foreach_switch_reaches_the_optimizer():
    import torch

    from finetune.optim.optimizers import OptimConfig, build_optimizer

    params = [torch.nn.Parameter(torch.randn(3)) for _ in range(4)]
    for name in ("adamw", "adam", "rmsprop", "sgd"):
        assert build_optimizer(params, OptimConfig(name=name, foreach=True)).defaults["foreach"] is True
        assert build_optimizer(params, OptimConfig(name=name)).defaults["foreach"] is False


def test_fused_update_matches_the_per_tensor_update_and_refuses_bad_combinations():
    import torch

    from finetune.errors import UserError
    from finetune.optim.optimizers import OptimConfig, build_optimizer

    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    results = {}
    for fused in (False, True):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = build_optimizer(params, OptimConfig(name="adamw", lr=1e-2, weight_decay=0.1, fused=fused))
        assert opt.defaults.get("fused") is (True if fused else None)
        for step in range(3):
            for p in params:
                p.grad = torch.full_like(p, 0.5 + step) * torch.sign(p.detach())
            opt.step()
        results[fused] = params
    for plain, fused, before in zip(results[False], results[True], start):
        assert not torch.equal(plain.detach(), before)  # the update did something
        torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-7)
    for bad, message in (
        (OptimConfig(fused=True, foreach=True), "set only one"),
        (OptimConfig(name="rmsprop", fused=True), "rmsprop"),
    ):
        try:
            build_optimizer(results[True], bad)
        except UserError as e:
            assert message in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")
