import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so tests can import helper scripts such as tests/train/toy_recipe.py


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TQDM_DISABLE"] = "1"
    return env


def two_process_launch(script: str | Path) -> list[str]:
    """`accelerate launch` of `script` as 2 CPU processes over gloo (fp32, one thread each): DDP on a CPU machine."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate_config.yaml"),
            "--mixed_precision", "no", "--multi_gpu", "--num_processes", "2", "--num_cpu_threads_per_process", "1",
            str(script)]  # fmt: skip
