"""QLoRA end to end: the LM recipe trains LoRA on an NF4 / int8 base under the shipped bf16, and its exports hold.

The merged model of an adapter trained on a quantized base is merged in full precision (the base reloaded from its
source), so it must equal the full-precision base + the adapter: logits within 1e-4 (fp32 reload of a fold of
B@A into W; the quantized model that trained differs from both by the quantization error, ~1e-2 here).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

pytest.importorskip("bitsandbytes", reason="the quant extra is not installed: pip install -e '.[quant]'")
pytest.importorskip("torchao", reason="the quant extra is not installed: pip install -e '.[quant]'")

IDS = torch.arange(3, 60)[None]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A 64-wide tiny LLaMA (bitsandbytes' CPU blocks are 64 weights) and small legal/general JSONL files."""
    from finetune.models.causal_lm import build_tiny_llama, build_tiny_tokenizer

    root = tmp_path_factory.mktemp("qlora")
    build_tiny_llama(hidden_size=64, intermediate_size=128, num_hidden_layers=2).save_pretrained(root / "model")
    build_tiny_tokenizer().save_pretrained(root / "model")
    for name, src, n in (
        ("train", "legal/train", 24),
        ("val", "legal/validation", 4),
        ("general", "general/validation", 4),
    ):
        lines = (ROOT / "data" / f"{src}.jsonl").read_text().splitlines()[:n]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def train(wide, out: Path, *extra) -> dict:
    from recipes.train_lm import main

    main(
        [
            f"model.name_or_path={wide / 'model'}",
            f"data.train_file={wide / 'train.jsonl'}",
            f"data.validation_file={wide / 'val.jsonl'}",
            f"data.general_validation_file={wide / 'general.jsonl'}",
            "data.max_length=128",
            f"train.output_dir={out}",
            "train.batch_size=4",
            "train.max_steps=5",
            "scheduler.warmup_steps=1",
            "train.progress_bar=false",
            "train.tensorboard=false",
            "eval.batch_size=16",
            "method=lora",
            "lora.r=8",
            "lora.dropout=0.0",
            "optim.lr=5e-2",
            *extra,
        ]
    )
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_qlora_trains_and_merges_in_full_precision(wide, tmp_path, kind, shipped_mixed_precision, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / kind
    summary = train(wide, out, f"model.quantization={kind}", "export.merged=true")
    assert summary["perplexity_after"]["validation"] < 0.9 * summary["perplexity_before"]["validation"]
    assert set(summary["export_check"]) == {"adapter", "merged"}  # the recipe's own reload checks passed
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        (wide / "model").resolve()
    )

    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(wide / "model")  # full precision, stock libraries only
        base_logits = base(IDS).logits
        adapted = PeftModel.from_pretrained(base, out / "adapter").eval()(IDS).logits
        merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
        assert not merged.config.to_dict().get("quantization_config")  # a plain full-precision model
        torch.testing.assert_close(merged(IDS).logits, adapted, atol=1e-4, rtol=1e-4)
    assert (adapted - base_logits).abs().max() > 1e-2  # the adapter trained

    if kind == "nf4":  # `finetune export merge` of the same adapter onto the full-precision base: the same model
        from finetune.cli import main as cli

        cli(
            [
                "export",
                "merge",
                "--model",
                str(wide / "model"),
                "--adapter",
                str(out / "adapter"),
                "--out",
                str(tmp_path / "cli_merged"),
            ]
        )
        with torch.no_grad():
            again = AutoModelForCausalLM.from_pretrained(tmp_path / "cli_merged").eval()(IDS).logits
        torch.testing.assert_close(again, adapted, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "override,message",
    [
        ("method=full", "model.quantization=nf4 trains only with method=lora"),
        ("model.compile_layers=true", "compile_layers does not work with NF4"),
    ],
)
def test_impossible_quantized_runs_fail_in_one_line_and_write_nothing(wide, tmp_path, override, message, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train(wide, out, "model.quantization=nf4", override)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()
