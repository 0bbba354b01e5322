"""Training state as safetensors + a JSON skeleton: exact round trips, strict JSON, clear refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from finetune.train.ema import EMAConfig, build_ema
from finetune.train.state import SKELETON_KEY, join_state, load_state_file, save_state_file, split_state


def assert_same(a, b, path="/"):
    """Equal structure, types (tuple stays tuple, int keys stay ints) and bit-equal tensors."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}{k}/")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}{i}/")
    elif isinstance(a, float) and a != a:
        assert b != b, path  # NaN
    else:
        assert a == b, path


def round_trip(tmp_path, state):
    save_state_file(tmp_path / "s.safetensors", state)
    return load_state_file(tmp_path / "s.safetensors")


def _trained(opt_cls=torch.optim.AdamW, steps=3, **kw):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    groups = [{"params": model[0].parameters(), "lr": 1e-2}, {"params": model[1].parameters(), "weight_decay": 0.0}]
    opt = opt_cls(groups, lr=1e-3, **kw)
    for _ in range(steps):
        model(torch.randn(5, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_adamw_state_round_trips_and_training_continues_bit_identically(tmp_path):
    model, opt = _trained(betas=(0.8, 0.95))
    state = opt.state_dict()
    loaded = round_trip(tmp_path, state)
    assert_same(state, loaded)
    assert isinstance(loaded["param_groups"][0]["betas"], tuple) and 0 in loaded["state"]  # tuples and int keys kept

    twin, twin_opt = _trained(betas=(0.8, 0.95), steps=0)
    twin.load_state_dict(model.state_dict())
    twin_opt.load_state_dict(loaded)
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (twin, twin_opt)):
        m(x).square().mean().backward()
        o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")
@pytest.mark.parametrize(
    "make",
    [
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3)),
        lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1),
    ],
)
def test_scheduler_state_with_inf_is_strict_json(tmp_path, make):
    _, opt = _trained(steps=1)
    sched = make(opt)
    sched.step(*([5.0] if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) else []))
    state = sched.state_dict()
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        state["best"], state["mode_worse"] = float("inf"), float("-inf")  # as before the first evaluation
    assert_same(state, round_trip(tmp_path, state))
    with safe_open(str(tmp_path / "s.safetensors"), "pt") as f:
        skeleton = f.metadata()[SKELETON_KEY]
    json.loads(skeleton, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))


def test_nested_odd_values_round_trip(tmp_path):
    shared = torch.arange(6.0)
    state = {
        "ints": {0: 1, 7: (2, 3)},
        "tuple_key": {(1, "a"): None},
        "nan": float("nan"),
        "bool": True,
        "tag_like": {"__tensor__": "not a tensor"},
        "same": [shared, shared],
        "view": shared[2:4],
        "bf16": torch.ones(2, dtype=torch.bfloat16),
        "empty": torch.zeros(0),
        "text": "x",
    }
    loaded = round_trip(tmp_path, state)
    assert_same(state, loaded)
    assert loaded["same"][0] is loaded["same"][1]  # one tensor referenced twice is stored once


def test_unstorable_values_are_named():
    with pytest.raises(TypeError, match=r"function at /sched/fn"):
        split_state({"sched": {"fn": lambda s: s}})


def test_malformed_skeletons_are_refused():
    with pytest.raises(ValueError, match="lacks"):
        join_state({"__tensor__": "3"}, {})
    with pytest.raises(ValueError, match="non-finite"):
        join_state({"__float__": "1e3"}, {})


def test_ema_state_round_trips(tmp_path):
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    ema = build_ema(params, EMAConfig(enabled=True, decay=0.9))
    for _ in range(3):
        with torch.no_grad():
            for p in params:
                p.add_(1.0)
        ema.step(params)
    fresh = build_ema(params, EMAConfig(enabled=True, decay=0.9))
    fresh.load_state_dict(round_trip(tmp_path, ema.state_dict()))
    assert_same(ema.state_dict(), fresh.state_dict())
