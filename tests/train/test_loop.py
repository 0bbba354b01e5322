"""The shared loop, driven through a toy recipe in subprocesses as a user runs it."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, subprocess_env, two_process_launch

TOY = str(ROOT / "tests" / "train" / "toy_recipe.py")
BASE = ["train.progress_bar=false", "train.tensorboard=false", "train.log_every=1"]


def run_toy(out, *overrides, launch=None, check=True):
    cmd = launch or [sys.executable, TOY]
    proc = subprocess.run(
        [*cmd, f"train.output_dir={out}", *BASE, *overrides],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def weights(path) -> dict:
    return load_file(str(Path(path) / "model.safetensors"))


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    common = [
        "train.max_steps=24",
        "train.save_every=1",
        "train.keep_last=2",
        "train.batch_size=4",
        "train.grad_accum=2",
    ]
    run_toy(tmp_path / "ref", *common)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, TOY, f"train.output_dir={out}", *BASE, *common, "step_sleep=0.02"],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = random.Random().randint(4, 18)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / f"checkpoint-{target}").exists():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists(), "the run finished before it could be killed"
    run_toy(out, *common, "train.resume=latest")
    assert_identical(weights(tmp_path / "ref" / "final"), weights(out / "final"))
    steps = [
        r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"
    ]
    assert steps == list(range(1, 25)), "metrics.jsonl must hold each step once after a resume"


def test_two_processes_equal_one_with_doubled_accumulation(tmp_path):
    common = ["train.max_steps=8", "train.batch_size=4"]
    run_toy(tmp_path / "one", *common, "train.grad_accum=2")
    launch = two_process_launch(TOY)
    proc = run_toy(tmp_path / "two", *common, "train.grad_accum=1", launch=launch)
    assert "processes=2" in proc.stdout
    a, b = weights(tmp_path / "one" / "final"), weights(tmp_path / "two" / "final")
    for k in a:  # tolerance: float32 summation order differs between 1 and 2 processes
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    losses = [
        r["loss"]
        for r in map(json.loads, (tmp_path / "two" / "metrics.jsonl").read_text().splitlines())
        if r["split"] == "train"
    ]
    assert losses[-1] < losses[0]


def test_nonfinite_steps_stop_the_run_and_are_never_saved(tmp_path):
    out = tmp_path / "nan"
    proc = run_toy(
        out, "train.max_steps=30", "train.save_every=1", "train.max_consecutive_nonfinite=3", "poison_at=5", check=False
    )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("error: 3 non-finite or exploding steps in a row"), err[-3:]
    assert "Traceback" not in proc.stderr
    ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    # step 5's NaN loss came from the weights of step 4: that checkpoint is removed, and skipped steps write none
    assert [p.name for p in ckpts] == ["checkpoint-3"]
    for c in ckpts:
        assert all(torch.isfinite(t).all() for t in load_file(str(c / "model.safetensors")).values())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("skipped", False) for r in records) == 2  # the 3rd stops the run and is named in the error line
    assert not (out / "final").exists()


def test_an_exploding_finite_loss_is_caught_like_a_nan(tmp_path):
    """Weights blown up to ~1e30 are finite: the guard also stops losses that grow by orders of magnitude."""
    out = tmp_path / "boom"
    proc = run_toy(
        out,
        "train.max_steps=30",
        "train.save_every=1",
        "train.max_consecutive_nonfinite=2",
        "explode_at=13",
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 2 non-finite or exploding steps in a row")
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-11"]  # 12's weights gave step 13's loss
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert [r["step"] for r in train if r["skipped"]] == [13]  # skipped, not applied: the weights stay those of 12
    # the factor is a config choice: off, the same run trains through the (finite) losses
    run_toy(tmp_path / "off", "train.max_steps=15", "train.divergence_factor=0", "explode_at=13")


def test_a_nonfinite_evaluation_is_never_best_and_stops_the_run_unsaved(tmp_path):
    out = tmp_path / "evalnan"
    proc = run_toy(out, "train.max_steps=20", "train.eval_every=4", "train.save_every=4", "nan_eval_at=8", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the run diverged at step 8 (val_loss = nan)"), err
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]  # no checkpoint of the weights that failed
    best = load_file(str(out / "best" / "model.safetensors"))  # best/ is step 4's, the last finite evaluation
    assert_identical(best, load_file(str(out / "checkpoint-4" / "model.safetensors")))
    # a first evaluation that is already non-finite is never "best" either
    proc = run_toy(tmp_path / "first", "train.max_steps=8", "train.eval_every=4", "nan_eval_at=0", check=False)
    assert proc.returncode == 2 and not (tmp_path / "first" / "best").exists()


def test_early_stopping_best_model_and_logs(tmp_path):
    out = tmp_path / "es"
    proc = run_toy(out, "train.max_steps=50", "train.eval_every=2", "train.early_stopping_patience=2", "optim.lr=1e-12")
    assert "stopped_early=True" in proc.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 6  # best at 2, no improvement at 4 and 6
    assert (out / "best" / "model.safetensors").is_file() and (out / "loss_curve.png").is_file()
    assert (out / "config.yaml").is_file()


def test_training_lowers_validation_loss(tmp_path):
    out = tmp_path / "learn"
    run_toy(out, "train.max_steps=40", "train.eval_every=10")
    evals = [
        json.loads(line)["val_loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line
    ]
    assert evals[-1] < 0.5 * evals[0]


def test_output_dir_of_another_run_is_refused_unchanged(tmp_path):
    out = tmp_path / "taken"
    run_toy(out, "train.max_steps=2", "train.save_every=1")
    before = sorted(p.name for p in out.rglob("*"))
    proc = run_toy(out, "train.max_steps=2", check=False)
    assert proc.returncode == 2 and "already holds checkpoints" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.rglob("*")) == before


def test_a_finished_run_is_refused_and_overwrite_replaces_its_state(tmp_path):
    out = tmp_path / "done"
    run_toy(out, "train.max_steps=3", "train.save_every=1")
    for c in out.glob("checkpoint-*"):  # a finished run that kept no checkpoint...
        shutil.rmtree(c)
    before = sorted(p.name for p in out.rglob("*"))
    proc = run_toy(out, "train.max_steps=2", check=False)  # ...must not get a second series in its metrics.jsonl
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "already holds another run (metrics.jsonl" in proc.stderr and "overwrite_output_dir=true" in proc.stderr
    assert sorted(p.name for p in out.rglob("*")) == before
    # overwrite: the new run's metrics alone, and none of the old run's checkpoints left for resume=latest to pick
    old = tmp_path / "old"
    run_toy(old, "train.max_steps=6", "train.save_every=3", "train.keep_last=0")
    run_toy(old, "train.max_steps=2", "train.overwrite_output_dir=true", "optim.lr=0.05")
    steps = [
        r["step"] for r in map(json.loads, (old / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"
    ]
    assert steps == [1, 2] and not list(old.glob("checkpoint-*"))


def test_unusable_output_paths_and_late_user_errors_end_in_one_line_and_leave_nothing(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    proc = run_toy(a_file, "train.max_steps=1", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: train.output_dir '{a_file}' is a file, not a directory; choose another train.output_dir"
    ]
    unwritable = Path("/sys/finetune-test-run")  # sysfs: not writable, even for root
    if os.access("/sys", os.W_OK) and not unwritable.parent.is_dir():
        pytest.skip("no unwritable path on this machine")
    proc = run_toy(unwritable, "train.max_steps=1", check=False)
    err = proc.stderr.strip().splitlines()
    assert (
        proc.returncode == 2
        and len(err) == 1
        and err[0].startswith(f"error: cannot write to train.output_dir '{unwritable}'")
    )
    # a mistake found only after the directory was made (here the optimizer's own check) takes the directory away again
    late = tmp_path / "late"
    proc = run_toy(late, "train.max_steps=1", "optim.lr=0", check=False)
    assert proc.returncode == 2 and "optim.lr=0.0 is out of range" in proc.stderr and not late.exists()


def test_a_refused_resume_leaves_the_runs_config_as_it_was(tmp_path):
    out = tmp_path / "run"
    run_toy(out, "train.max_steps=2", "train.save_every=1")
    config = (out / "config.yaml").read_bytes()
    for c in out.glob("checkpoint-*"):
        (c / "trainer_state.json").write_text("{not json")
    proc = run_toy(out, "train.max_steps=4", "train.resume=latest", "optim.lr=0.05", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (out / "config.yaml").read_bytes() == config
