"""Pieces the benchmarks share."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lm_recipe_command(config: Path | str) -> list[str]:
    """The LM recipe as a user launches it: `accelerate launch` with the project's accelerate_config.yaml and
    `--config <config>`; callers append their key=value overrides."""
    return [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--config_file",
        str(ROOT / "accelerate_config.yaml"),
        str(ROOT / "recipes" / "train_lm.py"),
        "--config",
        str(config),
    ]
