"""The one training loop, its checkpoints, logging, data order, step timing and mixed-precision storage."""

from finetune._exports import lazy_exports
from finetune.train.loop import (
    Hooks,
    NonFiniteTraining,
    TrainConfig,
    TrainResult,
    train,
    validate_train_config,
    weight_dtype,
)
from finetune.train.precision import cast_frozen
from finetune.train.setup import Run, build_accelerator, finished_run, open_recipe, start_run
from finetune.train.timing import peak_memory, synced_clock

# The LM objectives (distillation, forgetting guards) load on first use: they import the LM metrics and model code,
# which the SD, VAE and GAN recipes would otherwise hold in memory (~0.8 MB of RSS) without using it.
_lazy, __getattr__ = lazy_exports(__name__, {"objectives": ["DistillConfig", "GuardConfig"]})

__all__ = [
    *_lazy,
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
