"""Learning-rate schedules with linear warmup, built from a typed config.

Every schedule except "plateau" is ONE torch LambdaLR whose multiplier folds the warmup in, so the
scheduler's state_dict (last step and base lrs) is all a resume needs to continue exactly. The
multipliers follow transformers' get_*_schedule_with_warmup maths (linear warmup from 0 over
`warmup_steps`, then decay over the remaining steps), extended with a floor `min_lr_ratio`; they are
written out in `lr_multiplier` because transformers keeps its lambdas private and has no step,
exponential or floor variants. "plateau" is torch's ReduceLROnPlateau, stepped with the eval metric.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from finetune.errors import UserError

logger = logging.getLogger(__name__)

SCHEDULER_NAMES = (
    "constant",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "step",
    "exponential",
    "polynomial",
    "plateau",
)


@dataclass
class SchedulerConfig:
    name: Literal[
        "constant", "linear", "cosine", "cosine_with_restarts", "step", "exponential", "polynomial", "plateau"
    ] = "constant"  # shape of the lr schedule after warmup
    warmup_steps: int = 0  # optimizer steps of linear warmup from 0 to the base lr (not for plateau)
    num_cycles: int = 1  # cosine_with_restarts: number of cosine cycles (hard restarts) after warmup
    step_size: int = 1000  # step: multiply the lr by gamma every step_size optimizer steps
    gamma: float = 0.5  # step/exponential: decay factor (exponential multiplies by it every step)
    power: float = 1.0  # polynomial: exponent of the decay (1.0 is linear)
    min_lr_ratio: float = 0.0  # floor of the decaying schedules, as a fraction of each group's base lr
    plateau_factor: float = 0.5  # plateau: multiply the lr by this when the metric stops improving
    plateau_patience: int = 2  # plateau: evaluations without improvement before the lr is reduced
    plateau_mode: Literal["min", "max"] = "min"  # plateau: "min" for a loss, "max" for an accuracy-like metric


AnyScheduler = LRScheduler | ReduceLROnPlateau


def validate_scheduler_config(cfg: SchedulerConfig, total_steps: int) -> None:
    """Raise UserError naming the field when a SchedulerConfig value cannot work with total_steps."""
    if cfg.name not in SCHEDULER_NAMES:
        raise UserError(f"scheduler.name={cfg.name!r} is unknown; choose one of {', '.join(SCHEDULER_NAMES)}")
    if total_steps < 1:
        raise UserError(
            f"total optimizer steps is {total_steps}; need at least 1 (check max_steps, epochs and the dataset size)"
        )
    if cfg.warmup_steps < 0:
        raise UserError(f"scheduler.warmup_steps={cfg.warmup_steps} must be >= 0 (0: no warmup)")
    if cfg.name == "plateau" and cfg.warmup_steps:
        raise UserError(
            "scheduler.name='plateau' has no warmup; set scheduler.warmup_steps=0 or choose another schedule"
        )
    if not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise UserError(f"scheduler.min_lr_ratio={cfg.min_lr_ratio} must be in [0, 1]")
    if cfg.num_cycles < 1:
        raise UserError(f"scheduler.num_cycles={cfg.num_cycles} must be >= 1")
    if cfg.step_size < 1:
        raise UserError(f"scheduler.step_size={cfg.step_size} must be >= 1")
    if not 0.0 < cfg.gamma <= 1.0:
        raise UserError(f"scheduler.gamma={cfg.gamma} must be in (0, 1]")
    if not cfg.power > 0:
        raise UserError(f"scheduler.power={cfg.power} must be > 0")
    if not 0.0 < cfg.plateau_factor < 1.0:
        raise UserError(f"scheduler.plateau_factor={cfg.plateau_factor} must be in (0, 1)")
    if cfg.plateau_patience < 0:
        raise UserError(f"scheduler.plateau_patience={cfg.plateau_patience} must be >= 0")
    if cfg.plateau_mode not in ("min", "max"):
        raise UserError(f"scheduler.plateau_mode={cfg.plateau_mode!r} must be 'min' or 'max'")


def warmup_for(cfg: SchedulerConfig, total_steps: int) -> int:
    """The warmup the schedule runs: `cfg.warmup_steps`, or a tenth of the run when that warmup would outlast it.

    A warmup longer than the run comes from a config written for a longer run (`legal_lora.yaml
    train.max_steps=3` keeps its 5 warmup steps): shortening the run is the quickest try, so it is not refused.
    A tenth (transformers' usual warmup_ratio=0.1), not `total_steps - 1`: the run then trains mostly at the
    schedule's lr rather than ramping up for all of it, and a run of under 10 steps starts at the full lr.
    """
    if cfg.warmup_steps <= total_steps:
        return cfg.warmup_steps
    return total_steps // 10


def lr_multiplier(
    step: int,
    *,
    name: str,
    warmup_steps: int,
    total_steps: int,
    num_cycles: int = 1,
    step_size: int = 1000,
    gamma: float = 0.5,
    power: float = 1.0,
    min_lr_ratio: float = 0.0,
) -> float:
    """The factor on the base lr after `step` optimizer steps (a pure function; LambdaLR calls it)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    since = step - warmup_steps
    progress = min(1.0, since / max(1, total_steps - warmup_steps))
    floor = min_lr_ratio
    if name == "constant":
        return 1.0
    if name == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    if name == "cosine":  # half a cosine from 1 down to the floor
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if name == "cosine_with_restarts":  # num_cycles half-cosines, each restarting at 1
        if progress >= 1.0:
            return floor
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0)))
    if name == "polynomial":
        return floor + (1.0 - floor) * (1.0 - progress) ** power
    if name == "step":
        return max(floor, gamma ** (since // step_size))
    if name == "exponential":
        return max(floor, gamma**since)
    raise UserError(f"scheduler {name!r} has no lr multiplier; choose one of {', '.join(SCHEDULER_NAMES[:-1])}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int) -> AnyScheduler:
    """The lr scheduler for `optimizer`: a LambdaLR with warmup folded in, or ReduceLROnPlateau for "plateau".

    Step a LambdaLR once per optimizer step; step a plateau scheduler with the eval metric
    (`scheduler.step(metric)`) after each evaluation.
    """
    validate_scheduler_config(cfg, total_steps)
    warmup = warmup_for(cfg, total_steps)
    if warmup != cfg.warmup_steps:
        logger.warning(
            "scheduler.warmup_steps=%d is longer than the %d-step run; warming up for %d steps (a tenth "
            "of the run) instead",
            cfg.warmup_steps,
            total_steps,
            warmup,
        )
    if cfg.name == "plateau":
        min_lrs = [g["lr"] * cfg.min_lr_ratio for g in optimizer.param_groups]
        return ReduceLROnPlateau(
            optimizer, mode=cfg.plateau_mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=min_lrs
        )
    # functools.partial of a module-level function: LambdaLR.state_dict stores only its (empty)
    # __dict__, so checkpoints hold plain numbers and load with torch.load(weights_only=True).
    fn = functools.partial(
        lr_multiplier,
        name=cfg.name,
        warmup_steps=warmup,
        total_steps=total_steps,
        num_cycles=cfg.num_cycles,
        step_size=cfg.step_size,
        gamma=cfg.gamma,
        power=cfg.power,
        min_lr_ratio=cfg.min_lr_ratio,
    )
    return LambdaLR(optimizer, fn)


def is_plateau(scheduler: AnyScheduler) -> bool:
    """True when the scheduler must be stepped with an eval metric rather than once per optimizer step."""
    return isinstance(scheduler, ReduceLROnPlateau)
