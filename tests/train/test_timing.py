"""The loop times each optimizer step itself and reads the peak memory: evaluations and checkpoints are not training
time, so every recipe reports the same figures without bookkeeping of its own."""

from __future__ import annotations

import time
from pathlib import Path

import finetune.train.loop as loop
import tests.train.toy_recipe as toy
from tests.train.test_loop import BASE

PAUSE = 0.5  # seconds each evaluation and each checkpoint is made to take
STEP = 0.02  # seconds each step is made to take


def _run(monkeypatch, out: Path, *overrides: str):
    """The toy recipe in this process, with slow steps, evaluations and checkpoints; returns the TrainResult."""
    seen = {}
    real_train, real_save = toy.train, loop.save_checkpoint

    def slow(fn, seconds):
        def wrapped(*args, **kwargs):
            time.sleep(seconds)
            return fn(*args, **kwargs)

        return wrapped

    def spying_train(**kw):
        seen["result"] = real_train(
            **{**kw, "step_fn": slow(kw["step_fn"], STEP), "eval_fn": slow(kw["eval_fn"], PAUSE)}
        )
        return seen["result"]

    monkeypatch.setattr(toy, "train", spying_train)
    monkeypatch.setattr(loop, "save_checkpoint", slow(real_save, PAUSE))
    toy.main([f"train.output_dir={out}", *BASE, "train.batch_size=4", *overrides])
    return seen["result"]


def test_steps_are_timed_without_evaluations_and_checkpoints(tmp_path, monkeypatch):
    result = _run(monkeypatch, tmp_path / "run", "train.max_steps=6", "train.eval_every=2", "train.save_every=2")
    assert len(result.step_seconds) == result.trained_steps == 6
    assert all(STEP <= s < PAUSE for s in result.step_seconds)  # a step holds its micro-step, never a pause
    # 3 evaluations and 3 checkpoints took 3 s in all; none of it is training time
    assert sum(result.step_seconds) <= result.train_seconds < 6 * STEP + PAUSE
    assert result.peak_memory["bytes"] > 0 and result.peak_memory["kind"] in ("peak RSS", "GPU max_memory_allocated")


def test_a_resumed_finished_run_times_no_step(tmp_path, monkeypatch):
    out = tmp_path / "done"
    _run(monkeypatch, out, "train.max_steps=2", "train.save_every=2")
    again = _run(monkeypatch, out, "train.max_steps=2", "train.save_every=2", "train.resume=latest")
    assert again.trained_steps == 0 and again.step_seconds == [] and again.train_seconds == 0.0
    assert again.peak_memory is None
