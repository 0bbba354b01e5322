"""LR schedules: warmup, closed-form values, agreement with transformers up to the last step, plateau, exact resume."""

import io
import math

import pytest
import torch
import transformers
from torch import nn

from finetune.errors import UserError
from finetune.optim import SchedulerConfig, build_scheduler, is_plateau

BASE = 0.1


def _opt(lrs=(BASE,)):
    return torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs], lr=BASE)


def _lrs(name, total, n=None, **kw):
    """lr after each of steps 0..n (default total) for a fresh optimizer at BASE."""
    opt = _opt()
    sched = build_scheduler(opt, SchedulerConfig(name=name, **kw), total)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(n if n is not None else total):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize(
    "name", ["constant", "linear", "cosine", "cosine_with_restarts", "step", "exponential", "polynomial"]
)
def test_warmup_rises_linearly_from_zero_to_base(name):
    lrs = _lrs(name, total=20, n=4, warmup_steps=4)
    assert lrs[:4] == pytest.approx([0.0, 0.025, 0.05, 0.075])
    assert lrs[4] == pytest.approx(BASE)


def test_cosine_reaches_its_floor_at_the_end_and_half_in_the_middle():
    lrs = _lrs("cosine", total=12, warmup_steps=2, min_lr_ratio=0.1)
    assert lrs[7] == pytest.approx(BASE * (0.1 + 0.9 * 0.5))
    assert lrs[12] == pytest.approx(BASE * 0.1)


def test_restarts_return_to_base():
    lrs = _lrs("cosine_with_restarts", total=20, num_cycles=2)
    assert lrs[0] == pytest.approx(BASE) and lrs[10] == pytest.approx(BASE)  # restart at the cycle boundary
    assert lrs[9] < 0.03 * BASE and lrs[19] < 0.03 * BASE
    assert lrs[5] == pytest.approx(BASE * 0.5) and lrs[15] == pytest.approx(BASE * 0.5)
    assert lrs[20] == 0.0


def test_step_exponential_polynomial_values():
    step = _lrs("step", total=20, n=10, warmup_steps=2, step_size=3, gamma=0.5)
    assert step[2:11] == pytest.approx([BASE] * 3 + [BASE / 2] * 3 + [BASE / 4] * 3)
    expo = _lrs("exponential", total=20, n=6, warmup_steps=1, gamma=0.9)
    assert expo[1:7] == pytest.approx([BASE * 0.9**k for k in range(6)])
    floored = _lrs("exponential", total=50, gamma=0.5, min_lr_ratio=0.01)
    assert floored[-1] == pytest.approx(BASE * 0.01)
    poly = _lrs("polynomial", total=10, power=2.0)
    assert poly[5] == pytest.approx(BASE * 0.25) and poly[10] == 0.0


@pytest.mark.parametrize(
    "name,hf",
    [
        ("linear", lambda o: transformers.get_linear_schedule_with_warmup(o, 3, 17)),
        ("cosine", lambda o: transformers.get_cosine_schedule_with_warmup(o, 3, 17)),
        (
            "cosine_with_restarts",
            lambda o: transformers.get_cosine_with_hard_restarts_schedule_with_warmup(o, 3, 17, num_cycles=3),
        ),
        (
            "polynomial",
            lambda o: transformers.get_polynomial_decay_schedule_with_warmup(o, 3, 17, lr_end=0.0, power=1.5),
        ),
    ],
)
def test_same_maths_as_transformers(name, hf):
    ours = _lrs(name, total=17, n=20, warmup_steps=3, num_cycles=3, power=1.5)
    opt = _opt()
    ref_sched = hf(opt)
    ref = [opt.param_groups[0]["lr"]]
    for _ in range(20):
        opt.step()
        ref_sched.step()
        ref.append(opt.param_groups[0]["lr"])
    assert ours[:18] == pytest.approx(ref[:18], abs=1e-12)
    # past the end ours holds the floor; transformers' cosine would climb back up
    assert ours[18:] == [0.0, 0.0, 0.0]


def test_each_param_group_is_scaled_from_its_own_base_lr():
    opt = _opt(lrs=(1.0, 0.25))
    sched = build_scheduler(opt, SchedulerConfig(name="linear"), 4)
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.75, 0.1875])


def test_plateau_reduces_after_patience():
    opt = _opt()
    sched = build_scheduler(opt, SchedulerConfig(name="plateau", plateau_patience=2, plateau_factor=0.5), 100)
    assert is_plateau(sched)
    for metric in (1.0, 1.0, 1.0):  # best, then two evaluations without improvement
        sched.step(metric)
    assert opt.param_groups[0]["lr"] == pytest.approx(BASE)
    sched.step(1.0)  # a third: more than `patience` bad evaluations
    assert opt.param_groups[0]["lr"] == pytest.approx(BASE / 2)
    opt_max = _opt()
    up = build_scheduler(opt_max, SchedulerConfig(name="plateau", plateau_mode="max", plateau_patience=0), 100)
    up.step(0.5)
    up.step(0.6)  # accuracy improved: no reduction in max mode
    assert opt_max.param_groups[0]["lr"] == pytest.approx(BASE)
    assert not is_plateau(build_scheduler(_opt(), SchedulerConfig(), 10))


@pytest.mark.parametrize("name", ["cosine_with_restarts", "step", "polynomial", "plateau"])
def test_state_dict_round_trip_resumes_exactly(name):
    cfg = SchedulerConfig(name=name, warmup_steps=0 if name == "plateau" else 3, num_cycles=2, step_size=4, power=2.0)

    def advance(opt, sched, k, start):
        for i in range(k):
            opt.step()
            sched.step(1.0 + (start + i) % 2) if is_plateau(sched) else sched.step()
        return opt.param_groups[0]["lr"]

    opt_a = _opt()
    sched_a = build_scheduler(opt_a, cfg, 20)
    advance(opt_a, sched_a, 7, 0)
    buf = io.BytesIO()
    torch.save({"opt": opt_a.state_dict(), "sched": sched_a.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # plain numbers only: no pickled callables
    opt_b = _opt()
    sched_b = build_scheduler(opt_b, cfg, 20)
    opt_b.load_state_dict(state["opt"])
    sched_b.load_state_dict(state["sched"])
    rest_a = [advance(opt_a, sched_a, 1, 7 + i) for i in range(10)]
    rest_b = [advance(opt_b, sched_b, 1, 7 + i) for i in range(10)]
    assert rest_a == rest_b
    assert len(set(rest_a)) > 1 or name == "plateau"


def test_scheduler_user_errors():
    with pytest.raises(UserError, match="warmup_steps"):
        build_scheduler(_opt(), SchedulerConfig(name="linear", warmup_steps=-1), 10)
    with pytest.raises(UserError, match="plateau"):
        build_scheduler(_opt(), SchedulerConfig(name="plateau", warmup_steps=2), 10)
    with pytest.raises(UserError, match="gamma"):
        build_scheduler(_opt(), SchedulerConfig(name="step", gamma=1.5), 10)
    with pytest.raises(UserError, match="total optimizer steps"):
        build_scheduler(_opt(), SchedulerConfig(), 0)
    with pytest.raises(UserError, match="cosine"):
        build_scheduler(_opt(), SchedulerConfig(name="cosine_annealing"), 10)
    assert math.isfinite(_lrs("cosine", total=1)[-1])


def test_a_warmup_longer_than_the_run_is_capped_to_a_tenth_with_one_warning(caplog):
    with caplog.at_level("WARNING", logger="finetune.optim.schedulers"):
        capped = _lrs("linear", total=30, warmup_steps=100)
    assert capped == pytest.approx(_lrs("linear", total=30, warmup_steps=3))
    (record,) = caplog.records
    assert "scheduler.warmup_steps=100" in record.getMessage() and "3 steps" in record.getMessage()
    assert "\n" not in record.getMessage()


def test_a_warmup_that_fits_the_run_is_kept_without_warning(caplog):
    with caplog.at_level("WARNING", logger="finetune.optim.schedulers"):
        lrs = _lrs("linear", total=10, warmup_steps=10)
    assert lrs[:3] == pytest.approx([0.0, BASE / 10, 2 * BASE / 10]) and not caplog.records


def test_the_main_job_config_with_three_steps_trains_at_the_full_lr_from_the_first_step(caplog):
    # `legal_lora.yaml train.max_steps=3`, the quickest try: its 5 warmup steps no longer refuse the run.
    from finetune.config import load_section
    from finetune.optim.schedulers import warmup_for
    from tests.conftest import ROOT

    cfg = load_section(SchedulerConfig, str(ROOT / "recipes" / "configs" / "legal_lora.yaml"), "scheduler")
    assert cfg.warmup_steps == 5 and warmup_for(cfg, 3) == 0
    opt = _opt()
    with caplog.at_level("WARNING", logger="finetune.optim.schedulers"):
        build_scheduler(opt, cfg, 3)
    assert opt.param_groups[0]["lr"] == BASE and len(caplog.records) == 1
