"""Inputs the LM recipe and `finetune eval` must refuse in one line, before anything is written (tiny LLaMA, context 256)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import subprocess_env
from tests.recipes.test_lm import args_for, run, tiny  # noqa: F401  (tiny: the module-scoped model fixture)


def error_line(proc) -> str:
    """The one `error:` line of a refused run (stderr may also hold import-time library notices)."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    return line


def test_max_length_beyond_the_model_context_is_refused_before_the_output_dir(tiny, tmp_path):
    out = tmp_path / "run"
    line = error_line(run(args_for(tiny, out, "data.max_length=2048", "data.pack=false"), check=False))
    assert "data.max_length=2048" in line and "max_position_embeddings=256" in line and "256 or less" in line
    assert not out.exists()


def test_prompt_methods_count_their_virtual_tokens_against_the_context(tiny, tmp_path):
    out = tmp_path / "run"
    proc = run(
        args_for(
            tiny,
            out,
            "method=prompt",
            "data.max_length=256",
            "data.packed_attention=none",
            "prompt.num_virtual_tokens=8",
            "prompt.init=random",
        ),
        check=False,
    )
    assert "8 virtual tokens" in error_line(proc) and not out.exists()


def eval_cli(tiny, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune.cli",
            "eval",
            "--model",
            str(tiny / "model"),
            "--data",
            str(tiny / "val.jsonl"),
            *extra,
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_eval_refuses_a_max_length_beyond_the_context_and_defaults_to_the_context(tiny):
    assert "--max-length=2048" in error_line(eval_cli(tiny, "--max-length", "2048"))
    proc = eval_cli(tiny)  # default 1024 would exceed the tiny model's 256 positions: capped to them
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["documents"] == 8 and result["truncated"] > 0 and result["perplexity"] > 1


def test_a_validation_split_sharing_documents_with_train_is_reported_before_training(tiny, tmp_path):
    """Not refused (half of it is new text), but the run says how many validation documents are training copies."""
    train = (tiny / "train.jsonl").read_text().splitlines()
    fresh = (tiny / "test.jsonl").read_text().splitlines()
    val = tmp_path / "val.jsonl"
    val.write_text("\n".join(train[:3] + fresh[:5]) + "\n")
    proc = run(args_for(tiny, tmp_path / "run", f"data.validation_file={val}", "train.max_steps=1"))
    assert "overlap with train" in proc.stdout
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("warning: validation:") and "exact" in ln]
    assert "3 of 8 documents are exact copies of training documents" in line
    quiet = run(args_for(tiny, tmp_path / "quiet", "train.max_steps=1", "eval.overlap_check=false"))
    assert "overlap with train" not in quiet.stdout and "warning: validation" not in quiet.stdout
