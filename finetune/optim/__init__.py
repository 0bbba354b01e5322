"""Optimizers, weight-decay parameter groups, TTUR pairs and learning-rate schedules from typed configs."""

from finetune.optim.optimizers import (
    GAN_BETAS,
    OptimConfig,
    build_optimizer,
    build_ttur,
    is_no_decay,
    param_groups,
    validate_optim_config,
)
from finetune.optim.schedulers import (
    SchedulerConfig,
    build_scheduler,
    is_plateau,
    lr_multiplier,
    validate_scheduler_config,
)

__all__ = [
    "GAN_BETAS",
    "OptimConfig",
    "SchedulerConfig",
    "build_optimizer",
    "build_scheduler",
    "build_ttur",
    "is_no_decay",
    "is_plateau",
    "lr_multiplier",
    "param_groups",
    "validate_optim_config",
    "validate_scheduler_config",
]
