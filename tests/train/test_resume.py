"""Resume through the toy recipe as a user runs it: planted pickles never run, corrupt checkpoints
end in one line or fall back, a finished run resumes into a complete result, two processes resume
exactly, and temporaries of an interrupted export are cleaned on the next start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tests.train.toy_recipe as toy
from finetune.train.logging import read_metrics
from tests.conftest import subprocess_env, two_process_launch
from tests.train.test_checkpoint import payload_bytes
from tests.train.test_loop import BASE, TOY, assert_identical, run_toy, weights

COMMON = ["train.batch_size=4", "train.save_every=2", "train.keep_last=3"]


def assert_one_error_line(proc, *phrases):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_pickles_planted_in_every_checkpoint_file_never_run(tmp_path):
    out = tmp_path / "run"
    run_toy(out, *COMMON, "train.max_steps=2")
    ckpt = out / "checkpoint-2"
    marker = tmp_path / "PWNED"
    payload = payload_bytes(marker)
    files = sorted(p for p in ckpt.iterdir())
    assert len(files) >= 5
    for f in files + [ckpt / "custom_checkpoint_0.pkl", ckpt / "random_states_0.pkl"]:
        f.write_bytes(payload)
    for resume in (str(ckpt), "latest"):
        proc = run_toy(out, *COMMON, "train.max_steps=4", f"train.resume={resume}", check=False)
        assert_one_error_line(proc, "custom_checkpoint_0.pkl, a pickle", "only safetensors/JSON checkpoints")
        assert not marker.exists(), f"resume={resume} ran the planted code"
    assert not (out / "checkpoint-4").exists()


def test_corrupt_checkpoint_path_fails_in_one_line_naming_the_file(tmp_path):
    out = tmp_path / "run"
    run_toy(out, *COMMON, "train.max_steps=2")
    f = out / "checkpoint-2" / "optimizer.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    proc = run_toy(out, *COMMON, "train.max_steps=4", f"train.resume={out / 'checkpoint-2'}", check=False)
    assert_one_error_line(proc, f"checkpoint file {f} is unreadable")
    proc = run_toy(out, *COMMON, "train.max_steps=4", "vocab=33", f"train.resume={out / 'checkpoint-2'}", check=False)
    assert_one_error_line(proc, "model.safetensors does not fit the model", "emb.weight has shape [32, 16]")


def test_latest_falls_back_past_a_corrupt_checkpoint_and_ends_bit_identical(tmp_path):
    run_toy(tmp_path / "ref", *COMMON, "train.max_steps=6")
    out = tmp_path / "run"
    run_toy(out, *COMMON, "train.max_steps=4")
    (out / "checkpoint-4" / "model.safetensors").unlink()  # as a bad disk or a careless copy would leave it
    (out / "final").rename(out / "final-first")
    proc = run_toy(out, *COMMON, "train.max_steps=6", "train.resume=latest")
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert (
        len(warnings) == 1 and "skipping checkpoint-4" in warnings[0] and "model.safetensors is missing" in warnings[0]
    )
    assert "resumed from" in proc.stdout and "checkpoint-2 at step 2" in proc.stdout
    assert_identical(weights(tmp_path / "ref" / "final"), weights(out / "final"))
    steps = [r["step"] for r in read_metrics(out) if r["split"] == "train"]
    assert steps == list(range(1, 7))


def _run_in_process(monkeypatch, out: Path, *overrides: str):
    """The toy recipe in this process, returning the loop's TrainResult and how many micro-steps trained."""
    seen = {"steps": 0}
    real_train = toy.train

    def spying_train(**kw):
        step_fn = kw["step_fn"]

        def counted(batch):
            seen["steps"] += 1
            return step_fn(batch)

        seen["result"] = real_train(**{**kw, "step_fn": counted})
        return seen["result"]

    monkeypatch.setattr(toy, "train", spying_train)
    toy.main([f"train.output_dir={out}", *BASE, *COMMON, *overrides])
    return seen["result"], seen["steps"]


def test_resuming_a_finished_run_trains_nothing_and_returns_a_complete_result(tmp_path, monkeypatch):
    out = tmp_path / "done"
    first, trained = _run_in_process(monkeypatch, out, "train.max_steps=4")
    assert trained == 4 and first.last_eval
    before = read_metrics(out)
    again, trained = _run_in_process(monkeypatch, out, "train.max_steps=4", "train.resume=latest")
    assert trained == 0, "a finished run must not train again"
    assert again.global_step == 4 and again.last_eval == first.last_eval and again.best_metric == first.best_metric
    assert read_metrics(out) == before  # the repeated final evaluation is logged once, nothing else is added


def test_two_processes_resume_bit_identically(tmp_path):
    launch = two_process_launch(TOY)
    run_toy(tmp_path / "ref", *COMMON, "train.max_steps=4", launch=launch)
    out = tmp_path / "split"
    run_toy(out, *COMMON, "train.max_steps=2", launch=launch)
    assert {"rng_0.safetensors", "rng_1.safetensors"} <= {p.name for p in (out / "checkpoint-2").iterdir()}
    proc = run_toy(out, *COMMON, "train.max_steps=4", "train.resume=latest", launch=launch)
    assert "processes=2" in proc.stdout
    assert_identical(weights(tmp_path / "ref" / "final"), weights(out / "final"))
    assert_identical(weights(tmp_path / "ref" / "checkpoint-4"), weights(out / "checkpoint-4"))


KILLED_WRITES = {
    # killed inside atomic_dir before the rename: a complete-looking temporary directory
    "dir": "with io.atomic_dir(out / 'adapter') as d: (d / 'w.safetensors').write_text('new'); os._exit(9)",
    # killed before atomic_write_bytes renames its temporary file
    "file": "io.os.fsync = lambda fd: os._exit(9)\nio.atomic_write_text(out / 'summary.json', '{}')",
    # killed inside atomic_dir's overwrite, after the old directory moved aside and before the new one moved in
    "swap": "real = os.replace\ncalls = []\n"
    "io.os.replace = lambda a, b: calls.append(a) or (real(a, b) if len(calls) == 1 else os._exit(9))\n"
    "with io.atomic_dir(out / 'best') as d: (d / 'w').write_text('new')",
}


def test_a_new_start_cleans_what_an_interrupted_export_left(tmp_path):
    out = tmp_path / "run"
    (out / "best").mkdir(parents=True)
    (out / "best" / "w").write_text("old")
    for name, code in KILLED_WRITES.items():
        script = f"import os\nfrom pathlib import Path\nfrom finetune import io\nout = Path({str(out)!r})\n{code}\n"
        proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True)
        assert proc.returncode == 9, (name, proc.stderr)
    left = sorted(p.name for p in out.iterdir())
    assert any(n.startswith(".adapter.") and n.endswith(".tmp") for n in left), left
    assert any(n.startswith(".summary.json.") and n.endswith(".tmp") for n in left), left
    assert ".best.old" in left and "best" not in left, left
    users = {".notes.tmp": "mine", "draft.tmp": "mine", ".cache.old": "mine"}  # not names io.py makes
    for n, text in users.items():
        (out / n).write_text(text)
    run_toy(out, "train.max_steps=1")
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if n.startswith((".adapter.", ".summary.json.", ".best."))], names
    assert (out / "best" / "w").read_text() == "old"  # the interrupted overwrite never happened
    assert all((out / n).read_text() == t for n, t in users.items())
