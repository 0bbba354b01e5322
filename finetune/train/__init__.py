"""The one training loop, its checkpoints, logging, data order, step timing and mixed-precision storage."""

from finetune.train.loop import (
    Hooks,
    NonFiniteTraining,
    TrainConfig,
    TrainResult,
    train,
    validate_train_config,
    weight_dtype,
)
from finetune.train.objectives import DistillConfig, GuardConfig
from finetune.train.precision import cast_frozen
from finetune.train.setup import Run, build_accelerator, finished_run, open_recipe, start_run
from finetune.train.timing import peak_memory, synced_clock

__all__ = [
    "DistillConfig",
    "GuardConfig",
    "Hooks",
    "NonFiniteTraining",
    "Run",
    "TrainConfig",
    "TrainResult",
    "build_accelerator",
    "cast_frozen",
    "finished_run",
    "open_recipe",
    "peak_memory",
    "start_run",
    "synced_clock",
    "train",
    "validate_train_config",
    "weight_dtype",
]
