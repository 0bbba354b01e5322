"""The one training loop, its checkpoints, logging and data order."""

from finetune.train.loop import Hooks, NonFiniteTraining, TrainConfig, TrainResult, train, weight_dtype
from finetune.train.setup import build_accelerator, start_run

__all__ = [
    "Hooks", "NonFiniteTraining", "TrainConfig", "TrainResult", "train", "weight_dtype",
    "build_accelerator", "start_run",
]
