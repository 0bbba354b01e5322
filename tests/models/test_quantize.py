"""A quantized frozen base (model.quantization): NF4 through bitsandbytes, int8 weight-only through torchao, on the CPU.

The tiny LLaMA here is 64 wide: bitsandbytes' CPU kernels work in 64-weight blocks (its eval-time repacking
needs in_features >= 64; finetune turns that repacking off, but a real model is never narrower).
"""

from __future__ import annotations

import sys

import pytest
import torch

from finetune.errors import UserError
from finetune.models import quantize
from finetune.models.causal_lm import LMModelConfig, build_tiny_llama, build_tiny_tokenizer, load_causal_lm

pytest.importorskip("bitsandbytes", reason="the quant extra is not installed: pip install -e '.[quant]'")
pytest.importorskip("torchao", reason="the quant extra is not installed: pip install -e '.[quant]'")

WIDE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2)  # the shape the quantized tests share


def save_wide_tiny(path):
    build_tiny_llama(**WIDE).save_pretrained(path, safe_serialization=True)
    build_tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return save_wide_tiny(tmp_path_factory.mktemp("wide_tiny") / "model")


IDS = torch.arange(3, 40)[None]


@pytest.mark.parametrize("kind,layer_type", [("nf4", "Linear4bit"), ("int8", "Int8Tensor")])
def test_quantized_load_quantizes_the_linear_layers_not_the_head_and_stays_close(wide, kind, layer_type):
    full, _ = load_causal_lm(LMModelConfig(name_or_path=str(wide)))
    model, _ = load_causal_lm(LMModelConfig(name_or_path=str(wide), quantization=kind), compute_dtype=torch.bfloat16)
    proj = model.model.layers[0].self_attn.q_proj
    assert layer_type in (type(proj).__name__, type(proj.weight).__name__)
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.float32  # fused loss path
    assert quantize.quantization_of(model) == kind and quantize.quantization_of(full) == "none"
    with torch.no_grad():
        want, got = full(IDS).logits, model(IDS).logits
    # NF4 keeps ~3.6 significant bits per weight, int8 ~7: both stay within a few percent of the logit range here
    bound = {"nf4": 0.1, "int8": 0.02}[kind]
    assert (want - got).abs().max() < bound * want.abs().max()
    assert not torch.equal(want, got)  # quantized for real


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_lora_on_a_quantized_base_trains_every_adapter_after_an_eval_pass(wide, kind):
    """Gradients reach every LoRA layer through the frozen quantized ones, also after a no-grad eval forward
    (bitsandbytes would otherwise repack NF4 weights into an inference layout whose matmul has no backward)."""
    from peft import LoraConfig, get_peft_model

    model, _ = load_causal_lm(LMModelConfig(name_or_path=str(wide), quantization=kind), compute_dtype=torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.eval()(IDS)  # the recipe's perplexity before training
    model = get_peft_model(quantize.prepare_for_training(model), LoraConfig(r=4, target_modules="all-linear"))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and p.dtype == torch.float32 for n, p in trainable.items())
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    assert norms and all(p.dtype == torch.float32 and not p.requires_grad for p in norms)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(IDS, labels=IDS).loss
    loss.backward()
    lora_b = {n: p.grad for n, p in trainable.items() if "lora_B" in n}
    assert len(lora_b) == 2 * 7  # q k v o gate up down in each of 2 layers
    dead = [n for n, g in lora_b.items() if g is None or not g.abs().sum() > 0]
    assert not dead, f"no gradient reached {dead}"


@pytest.mark.parametrize("kind,package", [("nf4", "bitsandbytes"), ("int8", "torchao")])
def test_a_missing_library_is_one_line_naming_what_to_install(wide, kind, package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    with pytest.raises(
        UserError, match=rf"needs the {package} package; run `pip install 'finetune\[quant\]'`.*or none"
    ):
        load_causal_lm(LMModelConfig(name_or_path=str(wide), quantization=kind))


def test_nf4_on_a_cpu_without_avx2_names_int8_instead(monkeypatch):
    monkeypatch.setattr(quantize, "cpu_capability", lambda: "DEFAULT")
    monkeypatch.setattr(quantize.platform, "machine", lambda: "x86_64")
    with pytest.raises(UserError, match="needs AVX2.*reports DEFAULT.*model.quantization=int8"):
        quantize.check_quantization("nf4", "cpu")
    quantize.check_quantization("nf4", "cuda")  # a GPU needs no CPU feature
    quantize.check_quantization("int8", "cpu")  # torchao's int8 runs on any CPU


def test_training_settings_a_quantized_base_cannot_take_are_refused():
    with pytest.raises(UserError, match="trains only with method=lora.*set method=lora or model.quantization=none"):
        quantize.check_quantized_training("int8", "full", False)
    with pytest.raises(UserError, match="compile_layers does not work with NF4.*compile_layers=false"):
        quantize.check_quantized_training("nf4", "lora", True)
    with pytest.raises(UserError, match="unknown; choose one of none, nf4, int8"):
        quantize.check_quantized_training("int4", "lora", False)
    quantize.check_quantized_training("int8", "lora", True)  # torchao's int8 compiles
    quantize.check_quantized_training("none", "full", True)


@pytest.mark.slow
def test_the_shipped_smollm2_loads_nf4_from_its_safetensors_conversion():
    model, tokenizer = load_causal_lm(LMModelConfig(quantization="nf4"), compute_dtype=torch.bfloat16)
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    ids = tokenizer("The parties agree that", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    assert torch.isfinite(loss) and loss < 8  # a real model: far below a uniform guess (ln 49152 = 10.8)
