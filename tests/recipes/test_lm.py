"""The LLM recipe end to end on a tiny LLaMA saved to disk (the real loading path), as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, subprocess_env, two_process_launch

RECIPE = str(ROOT / "recipes" / "train_lm.py")
FAST = ["train.progress_bar=false", "train.tensorboard=false", "train.log_every=1", "eval.batch_size=16"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny LLaMA + byte tokenizer directory, and small legal/general JSONL files."""
    from finetune.models.causal_lm import build_tiny_llama, build_tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny_lm")
    build_tiny_llama(num_hidden_layers=4).save_pretrained(root / "model", safe_serialization=True)
    build_tiny_tokenizer().save_pretrained(root / "model")
    for name, src, n in (
        ("train", "legal/train", 48),
        ("val", "legal/validation", 8),
        ("test", "legal/test", 8),
        ("general", "general/validation", 8),
    ):
        lines = (ROOT / "data" / f"{src}.jsonl").read_text().splitlines()[:n]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def args_for(tiny, out, *extra):
    return [
        f"model.name_or_path={tiny / 'model'}",
        f"data.train_file={tiny / 'train.jsonl'}",
        f"data.validation_file={tiny / 'val.jsonl'}",
        f"data.general_validation_file={tiny / 'general.jsonl'}",
        "data.max_length=128",
        f"train.output_dir={out}",
        "train.batch_size=4",
        "scheduler.warmup_steps=1",
        *FAST,
        *extra,
    ]


def run(args, launch=None, check=True):
    proc = subprocess.run(
        [*(launch or [sys.executable, RECIPE]), *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-2000:] + proc.stderr[-3000:])
    return proc


def test_lora_lowers_domain_perplexity_and_exports_load_in_stock_peft(tiny, tmp_path):
    out = tmp_path / "lora"
    run(
        args_for(
            tiny,
            out,
            "method=lora",
            "optim.lr=5e-2",
            "train.max_steps=40",
            "train.eval_every=10",
            "lora.r=8",
            "lora.dropout=0.0",
            "export.merged=true",
            f"data.test_file={tiny / 'test.jsonl'}",
        )
    )
    summary = json.loads((out / "summary.json").read_text())
    before, after = summary["perplexity_before"], summary["perplexity_after"]
    assert after["validation"] < 0.9 * before["validation"]  # a random tiny model; the real one is the slow test
    # the test split is measured on the base and on the final weights only (never during training), and also moved
    assert after["test"] < 0.9 * before["test"] and summary["relative_change"]["test"] < 0
    assert not any(k.startswith("test") for k in json.loads((out / "metrics.jsonl").read_text().splitlines()[-1]))
    assert set(summary["export_check"]) == {"adapter", "merged"}

    # The stock libraries, with no finetune code: PEFT adapter on a fresh base, and the merged model.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.arange(3, 60)[None]
    base = AutoModelForCausalLM.from_pretrained(tiny / "model")
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
        lora_logits = adapted(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
        torch.testing.assert_close(merged(ids).logits, lora_logits, atol=1e-4, rtol=1e-4)
    assert (lora_logits - base_logits).abs().max() > 1e-3  # the adapter is not a no-op
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "perplexity before" in card
    assert (out / "config.yaml").is_file() and (out / "loss_curve.png").is_file()


def test_lora_under_bf16_autocast_trains_with_bf16_frozen_weights_and_exports_fp32(tiny, tmp_path, monkeypatch):
    # As `accelerate launch` with accelerate_config.yaml runs it: the frozen base weights are stored in bf16
    # for training, and the exported adapter / merged model still reload and match in fp32.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    out = tmp_path / "lora_bf16"
    run(
        args_for(
            tiny,
            out,
            "method=lora",
            "optim.lr=5e-2",
            "train.max_steps=6",
            "lora.r=8",
            "lora.dropout=0.0",
            "export.merged=true",
        )
    )
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["export_check"]) == {"adapter", "merged"}
    assert summary["perplexity_after"]["validation"] < summary["perplexity_before"]["validation"]
    assert len(summary["step_seconds"]) == 6 and summary["train_peak_memory"]["bytes"] > 0


def test_prompt_tuning_trains_only_virtual_tokens_and_loads(tiny, tmp_path):
    out = tmp_path / "prompt"
    run(
        args_for(
            tiny,
            out,
            "method=prompt",
            "prompt.kind=prompt_tuning",
            "prompt.num_virtual_tokens=8",
            "prompt.init=random",
            "optim.lr=3e-2",
            "train.max_steps=12",
            "data.packed_attention=none",
        )
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_parameters"] == 8 * 32  # virtual tokens x hidden size, nothing else
    assert summary["perplexity_after"]["validation"] < summary["perplexity_before"]["validation"]
    assert "adapter" in summary["export_check"]


def test_gradual_unfreezing_one_process_equals_two(tiny, tmp_path):
    common = [
        "method=full",
        "full.unfreeze=steps",
        "full.unfreeze_every=2",
        "full.layers_per_group=1",
        "optim.lr=1e-3",
        "train.max_steps=8",
        "export.verify=true",
    ]
    run(args_for(tiny, tmp_path / "one", *common, "train.grad_accum=2"))
    launch = two_process_launch(RECIPE)
    run(args_for(tiny, tmp_path / "two", *common, "train.grad_accum=1"), launch=launch)
    one = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    base = load_file(str(tiny / "model" / "model.safetensors"))
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=1e-5)
    # 8 steps, one more group every 2 steps from the top: layer 0 and the embeddings never unfroze...
    assert torch.equal(one["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    # ...while the top layers trained.
    assert not torch.equal(
        one["model.layers.3.self_attn.q_proj.weight"], base["model.layers.3.self_attn.q_proj.weight"]
    )


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.name_or_path=/no/such/model", "does not exist"),
        ("data.train_file=/no/such.jsonl", "does not exist"),
        ("optim.lrr=1", "did you mean 'optim.lr'"),
        ("train.max_steps=ten", "must be int"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny, tmp_path, override, message):
    out = tmp_path / "bad"
    proc = run([*args_for(tiny, out), override], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last and "Traceback" not in proc.stderr
    assert not out.exists()


def test_bad_jsonl_line_names_file_and_line(tiny, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    proc = run([*args_for(tiny, tmp_path / "o"), f"data.train_file={bad}"], check=False)
    assert proc.returncode == 2 and f"{bad}:2:" in proc.stderr.strip().splitlines()[-1]


def test_inspect_data_marks_trained_tokens(tiny, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model:\n  name_or_path: {tiny / 'model'}\ndata:\n  train_file: {ROOT / 'data/legal/instructions.jsonl'}\n"
        "  format: instruction\n  max_length: 512\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "finetune.cli", "inspect-data", str(cfg)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[[" in proc.stdout and "trained" in proc.stdout


@pytest.mark.slow
def test_main_job_real_smollm2_legal_lora(tmp_path):
    """The README's main job on the real model, shortened: perplexity on the template-disjoint legal test split falls
    by >= 20%, and the base model's own samples get no more than 5% harder (the guard's job; 3% at the full 60 steps)."""
    out = tmp_path / "legal"
    proc = run(
        [
            "--config",
            str(ROOT / "recipes/configs/legal_lora.yaml"),
            f"train.output_dir={out}",
            "train.max_steps=30",
            "train.eval_every=0",
            "train.save_every=0",
            *FAST,
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["relative_change"]["test"] <= -0.20, summary
    assert summary["relative_change"]["base_samples"] <= 0.05, summary
    assert "test perplexity" in proc.stdout and "general_kl_to_base" in proc.stdout


def test_a_diverging_run_stops_in_one_line_and_saves_nothing_from_the_diverged_weights(tiny, tmp_path):
    """SGD at lr 9e5 without clipping blows the weights up to finite but huge values after step 2 (losses ~4e9)."""
    out = tmp_path / "diverged"
    proc = run(
        args_for(
            tiny,
            out,
            "method=full",
            "optim.name=sgd",
            "optim.lr=9e5",
            "train.max_grad_norm=0",
            "train.max_steps=8",
            "train.save_every=1",
            "train.eval_every=4",
        ),
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and ("diverged" in err[0] or "exploding" in err[0]), err
    # checkpoint-2 held the exploded weights (step 3's loss showed it): only checkpoint-1 is left to resume from
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    for artifact in ("model", "adapter", "best", "summary.json", "README.md"):
        assert not (out / artifact).exists(), artifact


def test_resuming_a_run_at_max_steps_finishes_its_export_or_says_it_is_complete(tiny, tmp_path):
    out = tmp_path / "done"
    args = args_for(tiny, out, "method=lora", "optim.lr=5e-2", "train.max_steps=4", "train.save_every=4")
    run(args)
    finished = (out / "summary.json").read_bytes()
    # a finished job re-run with resume=latest: nothing to do, and its measured figures stay as they were
    proc = run([*args, "train.resume=latest"])
    assert "nothing to do" in proc.stdout and (out / "summary.json").read_bytes() == finished
    # a kill during the final export (the checkpoint at max_steps exists, the exports do not): resume finishes them
    for p in ("summary.json", "README.md"):
        (out / p).unlink()
    shutil.rmtree(out / "adapter")
    run([*args, "train.resume=latest"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["train_seconds"] is None  # no step was trained (or timed) by this process
    assert summary["perplexity_after"] == json.loads(finished)["perplexity_after"]  # the same weights, evaluated again
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
