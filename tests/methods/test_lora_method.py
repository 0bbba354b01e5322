"""LoRA / DoRA through PEFT: exactly the adapter trains, and saved adapters load in the stock libraries."""

from __future__ import annotations

import pytest
import torch

from finetune.errors import UserError
from finetune.methods.lora import (
    LoraMethodConfig,
    apply_lora,
    linear_module_names,
    restore_frozen_weights,
    store_frozen_weights,
)
from finetune.models.causal_lm import build_tiny_llama

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(seed))


def train_steps(model, steps: int = 5, lr: float = 1e-2) -> list[float]:
    """A few AdamW steps on one fixed batch; returns the losses."""
    ids = batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model.eval()(input_ids=batch(1)).logits


def test_all_linear_trains_exactly_the_lora_matrices():
    model = apply_lora(build_tiny_llama(), LoraMethodConfig(r=4, alpha=8))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapted = {n.split(".lora_")[0] for n in trainable}
    assert len(adapted) == 4 * len(LINEAR)  # every linear of every layer, lm_head excluded
    assert not any("lm_head" in n for n in adapted)
    base = build_tiny_llama()
    expected = sum(4 * (m.in_features + m.out_features) for n, m in base.named_modules() if n.endswith(LINEAR))
    assert sum(p.numel() for p in trainable.values()) == expected


def test_fresh_adapter_is_a_no_op():
    # B starts at zero, so the wrapped model computes exactly the base model.
    wrapped = apply_lora(build_tiny_llama(seed=5), LoraMethodConfig())
    torch.testing.assert_close(logits(wrapped), logits(build_tiny_llama(seed=5)), rtol=0, atol=0)


def test_training_moves_loss_and_save_load_round_trips(tmp_path):
    from peft import PeftModel

    model = apply_lora(build_tiny_llama(), LoraMethodConfig(r=4, dropout=0.0))
    base_before = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.clone()
    losses = train_steps(model)
    assert losses[-1] < losses[0] - 0.05
    assert torch.equal(model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight, base_before)

    model.save_pretrained(tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files and not any(f.endswith(".bin") for f in files)
    reloaded = PeftModel.from_pretrained(build_tiny_llama(), tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=0)


def test_merged_model_loads_in_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    model = apply_lora(build_tiny_llama(), LoraMethodConfig(r=4, dropout=0.0))
    train_steps(model)
    with_adapter = logits(model)
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", use_safetensors=True)
    # Folding B@A*scale into W changes the float summation order only: fp32, atol 1e-4.
    torch.testing.assert_close(logits(reloaded), with_adapter, rtol=0, atol=1e-4)
    assert not torch.allclose(logits(reloaded), logits(build_tiny_llama()), atol=1e-3)  # the adapter is in there


def test_frozen_weights_stored_in_bf16_give_the_same_autocast_logits_and_export_in_fp32(tmp_path):
    from peft import PeftModel

    model = apply_lora(build_tiny_llama(), LoraMethodConfig(r=4, dropout=0.0))
    train_steps(model, steps=2)  # B != 0, so the adapter takes part in the comparison
    model.eval()
    ids = batch(1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model(input_ids=ids).logits

    assert store_frozen_weights(model, torch.bfloat16) == 4 * len(LINEAR)
    base = model.get_base_model()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32, name  # the adapter trains in fp32
        elif name.endswith("base_layer.weight"):
            assert p.dtype == torch.bfloat16, name
    assert base.get_input_embeddings().weight.dtype == torch.float32  # embeddings / tied head untouched
    # Autocast would have cast these weights to bf16 anyway: the logits are the same.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(model(input_ids=ids).logits, reference, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # and it still trains, with fp32 gradients
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)

    assert restore_frozen_weights(model, build_tiny_llama()) == 4 * len(LINEAR)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(
        base.model.layers[0].self_attn.q_proj.base_layer.weight,
        build_tiny_llama().model.layers[0].self_attn.q_proj.weight,
    )
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(build_tiny_llama(), tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=0)
    assert store_frozen_weights(model, torch.float32) == 0  # fp32 training: nothing to do


def test_explicit_targets_and_unknown_names():
    model = apply_lora(build_tiny_llama(), LoraMethodConfig(target_modules=["q_proj", "v_proj"]))
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted == {"q_proj", "v_proj"}
    with pytest.raises(UserError, match=r"\['qkv'\] not found.*q_proj"):
        apply_lora(build_tiny_llama(), LoraMethodConfig(target_modules=["q_proj", "qkv"]))
    assert set(LINEAR) | {"lm_head"} == set(linear_module_names(build_tiny_llama()))


def test_dora_adds_magnitudes_and_round_trips(tmp_path):
    from peft import PeftModel

    model = apply_lora(build_tiny_llama(), LoraMethodConfig(r=4, use_dora=True, dropout=0.0))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in names)
    train_steps(model, steps=2)
    model.save_pretrained(tmp_path / "dora")
    reloaded = PeftModel.from_pretrained(build_tiny_llama(), tmp_path / "dora")
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "cfg, match",
    [
        (LoraMethodConfig(r=0), "r must be >= 1"),
        (LoraMethodConfig(dropout=1.0), "dropout"),
        (LoraMethodConfig(target_modules=[]), "empty"),
        (LoraMethodConfig(target_modules=["all-linear", "q_proj"]), "stand alone"),
        (LoraMethodConfig(bias="some"), "bias"),
    ],
)
def test_bad_lora_settings_are_user_errors(cfg, match):
    with pytest.raises(UserError, match=match):
        apply_lora(build_tiny_llama(), cfg)
