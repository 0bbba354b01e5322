"""The `finetune` command as a user runs it: `train` keeps the one-line error promise under accelerate, `export merge`
never deletes a user's folder, and `--verbose` brings the library messages back."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import finetune
from finetune.cli import MERGE_MARKER, main
from finetune.errors import UserError
from finetune.launch import RECIPES, recipes_dir
from tests.conftest import ROOT, subprocess_env
from tests.recipes.test_lm import tiny  # noqa: F401  (fixture: tiny LLaMA dir + small legal/general JSONL files)

FINETUNE = str(Path(sys.executable).with_name("finetune"))  # the console script the package installs


def user_env(**extra: str) -> dict:
    """The environment a user's shell has: no TQDM_DISABLE (the tests' own switch), so library bars would show."""
    env = subprocess_env()
    env.pop("TQDM_DISABLE", None)
    env.pop("FINETUNE_VERBOSE", None)
    return {**env, **extra}


def finetune_cmd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FINETUNE, *args], env=env or user_env(), capture_output=True, text=True, timeout=300, cwd=ROOT
    )


@pytest.fixture(scope="module")
def lm_config(tiny, tmp_path_factory):  # noqa: F811
    """A recipe YAML for the tiny LLaMA: two steps, as a user would write one."""
    path = tmp_path_factory.mktemp("cfg") / "tiny_lm.yaml"
    path.write_text(
        json.dumps(
            {  # JSON is YAML
                "model": {"name_or_path": str(tiny / "model")},
                "data": {
                    "train_file": str(tiny / "train.jsonl"),
                    "validation_file": str(tiny / "val.jsonl"),
                    "general_validation_file": str(tiny / "general.jsonl"),
                    "max_length": 128,
                },
                "train": {"batch_size": 4, "max_steps": 2, "tensorboard": False, "log_every": 1},
                "scheduler": {"warmup_steps": 1},
                "eval": {"batch_size": 16},
            }
        )
    )
    return path


def test_train_user_error_is_one_line_and_exit_2_not_a_launcher_traceback(lm_config, tmp_path):
    out = tmp_path / "run"
    proc = finetune_cmd("train", "lm", "--config", str(lm_config), "lora.r=0", f"train.output_dir={out}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "lora" in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "CalledProcessError" not in proc.stderr


def test_train_runs_the_recipe_under_accelerate_quietly_and_verbose_brings_the_noise_back(lm_config, tmp_path):
    quiet = finetune_cmd("train", "lm", "--config", str(lm_config), f"train.output_dir={tmp_path / 'q'}")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    assert (
        summary["perplexity_after"]["validation"] > 0 and (tmp_path / "q" / "adapter" / "adapter_config.json").is_file()
    )
    noise = ["is_gradient_checkpointing", "Loading weights"]
    for text in noise:
        assert text not in quiet.stdout + quiet.stderr
    loud = finetune_cmd("--verbose", "train", "lm", "--config", str(lm_config), f"train.output_dir={tmp_path / 'v'}")
    assert loud.returncode == 0, loud.stderr[-3000:]
    for text in noise:  # the same run, with the switch: the libraries' messages are back (so the test can fail)
        assert text in loud.stdout + loud.stderr


def test_train_uses_the_accelerate_config_given_and_refuses_a_bad_one_or_no_recipes_in_one_line(
    lm_config, tmp_path, monkeypatch
):
    fp16 = tmp_path / "fp16.yaml"  # honoured: the recipe sees fp16 and refuses it on the CPU, through the launcher
    fp16.write_text(
        (ROOT / "accelerate_config.yaml").read_text().replace("mixed_precision: bf16", "mixed_precision: fp16")
    )
    proc = finetune_cmd("train", "lm", "--config", str(lm_config), "--accelerate-config", str(fp16))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "fp16 needs a GPU" in proc.stderr, (
        proc.stderr
    )
    bad = tmp_path / "acc.yaml"
    bad.write_text("distributed_type: NO_SUCH_TYPE\n")
    proc = finetune_cmd("train", "lm", "--config", str(lm_config), "--accelerate-config", str(bad))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: accelerate config") and "acc.yaml" in proc.stderr
    assert set(RECIPES.values()) <= {p.name for p in recipes_dir().iterdir()}  # found from the installed package
    monkeypatch.setattr(finetune, "__file__", str(tmp_path / "site-packages" / "finetune" / "__init__.py"))
    with pytest.raises(UserError, match="recipes are not next to the finetune package"):
        recipes_dir()


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory):  # noqa: F811
    """Two different LoRA adapters (B set as if trained) for the tiny LLaMA, saved as PEFT directories."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    for seed in (0, 1):
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(tiny / "model"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
        )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        model.save_pretrained(root / f"a{seed}")
    return root


def merge(capsys, tiny, adapter, out):  # noqa: F811
    try:
        main(["export", "merge", "--model", str(tiny / "model"), "--adapter", str(adapter), "--out", str(out)])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def test_merge_refuses_a_folder_it_did_not_write_and_leaves_it_alone(tiny, adapters, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    code, cap = merge(capsys, tiny, adapters / "a0", out)
    assert code == 2 and cap.err.count("\n") == 1 and cap.err.startswith("error: --out")
    assert "notes.txt" in cap.err and "new or empty directory" in cap.err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary directory left beside it
    (tmp_path / "file").write_text("x")
    code, cap = merge(capsys, tiny, adapters / "a0", tmp_path / "file")
    assert code == 2 and "is a file" in cap.err


def test_merge_replaces_its_own_previous_merge_but_not_one_a_user_added_to(tiny, adapters, tmp_path, capsys):  # noqa: F811
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    out.mkdir()  # an empty folder is fine
    ids = torch.arange(3, 40)[None]
    logits = []
    for adapter in ("a0", "a1"):  # the second merge replaces the first
        code, cap = merge(capsys, tiny, adapters / adapter, out)
        assert code == 0, cap.err
        marker = json.loads((out / MERGE_MARKER).read_text())
        assert marker["adapter"] == str(adapters / adapter) and set(marker["files"]) == {p.name for p in out.iterdir()}
        with torch.no_grad():
            logits.append(AutoModelForCausalLM.from_pretrained(out)(ids).logits)
    assert not torch.allclose(logits[0], logits[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # the old copy and the temporary are gone
    (out / "eval_results.json").write_text("{}")  # the user keeps a file of theirs in it: no longer only ours
    code, cap = merge(capsys, tiny, adapters / "a0", out)
    assert code == 2 and "eval_results.json" in cap.err and (out / "eval_results.json").is_file()


def test_unknown_options_outside_train_are_refused():
    with pytest.raises(SystemExit) as e:
        main(["export", "kohya", "--lora", "x.safetensors", "--out", "y.safetensors", "--bogus"])
    assert e.value.code == 2


def test_verbose_flag_sets_the_switch_for_launched_recipes(monkeypatch):
    monkeypatch.setenv("FINETUNE_VERBOSE", "")  # restored after the test
    with pytest.raises(SystemExit):
        main(["--verbose", "train", "lm", "--accelerate-config", "/nonexistent.yaml"])
    assert os.environ["FINETUNE_VERBOSE"] == "1"


def test_eval_reports_the_library_perplexity_of_the_file(tiny, capsys):  # noqa: F811
    # One perplexity (finetune.metrics.perplexity, which the LM recipe evaluates with): fused, any batch size
    from finetune.data.text import TextDataConfig, build_text_datasets, make_collate
    from finetune.metrics.perplexity import dataset_batches, perplexity
    from finetune.models.causal_lm import LMModelConfig, load_causal_lm

    main(
        [
            "eval",
            "--model",
            str(tiny / "model"),
            "--data",
            str(tiny / "val.jsonl"),
            "--max-length",
            "128",
            "--batch-size",
            "3",
        ]
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, tokenizer = load_causal_lm(LMModelConfig(name_or_path=str(tiny / "model")))
    data = TextDataConfig(train_file=str(tiny / "val.jsonl"), max_length=128, pack=False)
    ds, collate = build_text_datasets(data, tokenizer)["train"], make_collate(data, tokenizer)
    assert report["documents"] == len(ds) == 8 and report["tokens"] > 0
    unfused_one_by_one = perplexity(model, dataset_batches(ds, collate, 1), fused=False)
    assert report["perplexity"] == pytest.approx(unfused_one_by_one, rel=1e-5)
    assert report["loss"] == pytest.approx(math.log(report["perplexity"]), rel=1e-9)
