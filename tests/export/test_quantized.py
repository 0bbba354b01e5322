"""`finetune export quantized`: a merged model saved weight-only quantized that a plain `from_pretrained(DIR)`
reloads; and the refusals around it and `export merge` (foreign --out, missing library, another base's adapter)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from finetune.cli import main

pytest.importorskip("bitsandbytes", reason="the quant extra is not installed: pip install -e '.[quant]'")
pytest.importorskip("torchao", reason="the quant extra is not installed: pip install -e '.[quant]'")

IDS = torch.arange(3, 60)[None]


def tiny_with_adapter(root, **shape):
    """A tiny LLaMA directory and a LoRA adapter for it whose B matrices are random (not the no-op init)."""
    from peft import LoraConfig, get_peft_model

    from finetune.models.causal_lm import build_tiny_llama, build_tiny_tokenizer

    build_tiny_llama(**shape).save_pretrained(root / "model")
    build_tiny_tokenizer().save_pretrained(root / "model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        base = build_tiny_llama(**shape)
        base.name_or_path = str(root / "model")  # what from_pretrained(dir) sets: PEFT records it as the base
        get_peft_model(base, lora).save_pretrained(root / "adapter")
    return root


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return tiny_with_adapter(
        tmp_path_factory.mktemp("wide"), hidden_size=64, intermediate_size=128, num_hidden_layers=2
    )


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    return tiny_with_adapter(tmp_path_factory.mktemp("narrow"))  # the default 32-wide tiny: another base


@pytest.fixture(scope="module")
def merged_logits(wide):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(wide / "model")
        plain = base(IDS).logits
        return plain, PeftModel.from_pretrained(base, wide / "adapter").merge_and_unload().eval()(IDS).logits


def cli(capsys, *args):
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def export(capsys, root, out, bits, *extra):
    return cli(
        capsys,
        "export",
        "quantized",
        "--bits",
        str(bits),
        "--model",
        str(root / "model"),
        "--adapter",
        str(root / "adapter"),
        "--out",
        str(out),
        *extra,
    )


@pytest.mark.parametrize("bits,layer_type,bound", [(8, "Int8Tensor", 0.03), (4, "Linear4bit", 0.25)])
def test_export_quantized_reloads_with_plain_from_pretrained_holding_the_adapter(
    wide, merged_logits, tmp_path, capsys, bits, layer_type, bound
):
    from transformers import AutoModelForCausalLM

    out = tmp_path / f"q{bits}"
    code, cap = export(capsys, wide, out, bits, "--dtype", "float32")  # fp32 compute: the error is the quantization's
    assert code == 0, cap.err
    assert f"written to {out}" in cap.out and "MiB of weights" in cap.out
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".bin", ".pt", ".pth")) == []  # safetensors only
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no staging or temporary left behind

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()  # exactly what a user runs: no flags
    proj = reloaded.model.layers[1].mlp.down_proj
    assert layer_type in (type(proj).__name__, type(proj.weight).__name__)
    with torch.no_grad():
        got = reloaded(IDS).logits.float()
    plain, merged = merged_logits
    # Measured against what the adapter changes (merged - base): int8 is off by ~1% of it, NF4 (16 levels per
    # 64-weight block, on random weights and a random adapter) by ~17%: the adapter is in there, rounded
    error, effect = (got - merged).abs().max(), (plain - merged).abs().max()
    assert error < bound * effect

    fp32_bytes = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(wide / "model").parameters()) * 4
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    assert size < fp32_bytes / {8: 2.2, 4: 2.5}[bits]  # layers at 1 / ~0.55 byte a weight; embeddings fp32 here


def test_export_quantized_replaces_its_own_export_but_never_a_users_folder(wide, tmp_path, capsys):
    out = tmp_path / "q"
    assert export(capsys, wide, out, 8)[0] == 0
    assert json.loads((out / "finetune_merge.json").read_text())["bits"] == 8
    assert export(capsys, wide, out, 4)[0] == 0  # over our own export: replaced whole
    assert json.loads((out / "finetune_merge.json").read_text())["bits"] == 4
    (out / "notes.txt").write_text("mine")
    code, cap = export(capsys, wide, out, 8)
    assert code == 2 and "already holds files finetune did not write (notes.txt)" in cap.err
    assert json.loads((out / "finetune_merge.json").read_text())["bits"] == 4  # untouched


@pytest.mark.parametrize("bits,package", [(8, "torchao"), (4, "bitsandbytes")])
def test_export_quantized_without_its_library_is_one_line_and_writes_nothing(
    wide, tmp_path, capsys, monkeypatch, bits, package
):
    monkeypatch.setitem(sys.modules, package, None)
    code, cap = export(capsys, wide, tmp_path / "q", bits)
    lines = cap.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"needs the {package} package; run `pip install" in lines[0]
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("command", ["quantized", "merge"])
def test_an_adapter_of_another_base_is_refused_in_one_line(wide, narrow, tmp_path, capsys, command):
    extra = ["--bits", "8"] if command == "quantized" else []
    code, cap = cli(
        capsys,
        "export",
        command,
        *extra,
        "--model",
        str(wide / "model"),
        "--adapter",
        str(narrow / "adapter"),
        "--out",
        str(tmp_path / "out"),
    )
    lines = cap.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, cap.err
    assert (
        "does not fit --model" in lines[0]
        and "mlp.down_proj has input size 128 in the model, 64 in the adapter" in lines[0]
    )
    assert f"trained on '{narrow / 'model'}' (its adapter_config.json): pass that model as --model" in lines[0]
    assert not (tmp_path / "out").exists()


def test_merging_into_an_already_quantized_model_is_refused(wide, tmp_path, capsys):
    assert export(capsys, wide, tmp_path / "q8", 8)[0] == 0
    code, cap = cli(
        capsys,
        "export",
        "merge",
        "--model",
        str(tmp_path / "q8"),
        "--adapter",
        str(wide / "adapter"),
        "--out",
        str(tmp_path / "merged"),
    )
    assert code == 2 and "already quantized (int8)" in cap.err and "full-precision model" in cap.err
    assert not (tmp_path / "merged").exists()
