"""Prompt tuning, p-tuning and prefix tuning through PEFT: only the prompt trains, it learns, it reloads."""

from __future__ import annotations

import pytest
import torch

from finetune.errors import UserError
from finetune.methods.prompt_tuning import (
    PromptMethodConfig,
    apply_prompt_method,
    build_peft_config,
    recommended_lr,
)
from finetune.models.causal_lm import build_tiny_llama, build_tiny_tokenizer, configure_pad_token

KINDS = [
    PromptMethodConfig(kind="prompt_tuning", num_virtual_tokens=6, init_text="Summarise:"),
    PromptMethodConfig(kind="prompt_tuning", num_virtual_tokens=6, init="random"),
    PromptMethodConfig(kind="p_tuning", num_virtual_tokens=6, encoder_hidden_size=16),
    PromptMethodConfig(kind="prefix_tuning", num_virtual_tokens=6),
    PromptMethodConfig(kind="prefix_tuning", num_virtual_tokens=6, prefix_projection=True, encoder_hidden_size=16),
]
IDS = [f"{c.kind}-{c.init}-{c.prefix_projection}" for c in KINDS]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    # PEFT's text init reloads the tokenizer by path, so use one that lives in a directory.
    path = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer().save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    configure_pad_token(tok)
    return tok


def make_batch(tokenizer):
    enc = tokenizer(["Contract law: offer, acceptance.", "Tort law."], padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {**enc, "labels": labels}


@torch.no_grad()
def eval_logits(model, tokenizer) -> torch.Tensor:
    enc = make_batch(tokenizer)
    return model.eval()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


@pytest.mark.parametrize("cfg", KINDS, ids=IDS)
def test_only_the_prompt_trains_and_it_learns(cfg, tokenizer):
    torch.manual_seed(0)  # random prompt / encoder initialisation
    model = apply_prompt_method(build_tiny_llama(), tokenizer, cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("prompt_encoder.") for n in trainable)
    frozen_before = {n: p.clone() for n, p in model.get_base_model().named_parameters()}

    data = make_batch(tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recommended_lr(cfg.kind))
    model.train()
    losses = []
    for _ in range(20):
        loss = model(**data).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.02, losses  # a frozen model's loss would not move at all
    for n, p in model.get_base_model().named_parameters():
        assert torch.equal(p, frozen_before[n]), n


def test_text_init_copies_the_embeddings_of_the_init_text(tokenizer):
    cfg = PromptMethodConfig(kind="prompt_tuning", num_virtual_tokens=7, init_text="Legal")
    base = build_tiny_llama()
    model = apply_prompt_method(base, tokenizer, cfg)
    prompt = model.prompt_encoder["default"].embedding.weight
    ids = tokenizer("Legal")["input_ids"]  # 5 byte tokens, repeated and cut to 7
    expected = base.get_input_embeddings().weight[(ids * 2)[:7]]
    torch.testing.assert_close(prompt, expected, rtol=0, atol=0)


@pytest.mark.parametrize("cfg", KINDS, ids=IDS)
def test_saved_prompt_loads_in_stock_peft_with_identical_logits(cfg, tokenizer, tmp_path):
    from peft import PeftModel

    torch.manual_seed(0)
    model = apply_prompt_method(build_tiny_llama(), tokenizer, cfg)
    with torch.no_grad():  # move away from the initialisation so the check means something
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "adapter").glob("*.bin"))
    reloaded = PeftModel.from_pretrained(build_tiny_llama(), tmp_path / "adapter")
    torch.testing.assert_close(eval_logits(reloaded, tokenizer), eval_logits(model, tokenizer), rtol=0, atol=1e-6)


def test_prompt_changes_generation_inputs(tokenizer):
    # The soft prompt is really used: a fresh random prompt changes the next-token distribution.
    model = apply_prompt_method(build_tiny_llama(), tokenizer, PromptMethodConfig(init="random", num_virtual_tokens=4))
    enc = tokenizer(["Tort law."], return_tensors="pt")
    with torch.no_grad():
        with_prompt = model.eval()(**enc).logits[:, -1]
        without = build_tiny_llama().eval()(**enc).logits[:, -1]
    assert not torch.allclose(with_prompt, without, atol=1e-4)
    generated = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == enc["input_ids"].shape[1] + 3


def test_text_init_needs_a_tokenizer_on_disk():
    with pytest.raises(UserError, match="init='random'"):
        apply_prompt_method(build_tiny_llama(), build_tiny_tokenizer(), PromptMethodConfig())


def test_peft_config_classes(tokenizer):
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig

    assert isinstance(build_peft_config(tokenizer, PromptMethodConfig()), PromptTuningConfig)
    p = build_peft_config(tokenizer, PromptMethodConfig(kind="p_tuning", encoder_hidden_size=64))
    assert isinstance(p, PromptEncoderConfig) and p.encoder_hidden_size == 64
    assert isinstance(build_peft_config(tokenizer, PromptMethodConfig(kind="prefix_tuning")), PrefixTuningConfig)


def test_recommended_lrs():
    assert recommended_lr("lora") == 2e-4
    assert 1e-2 <= recommended_lr("prompt_tuning") <= 3e-2
    assert recommended_lr("prompt_tuning") > 10 * recommended_lr("lora") > 10 * recommended_lr("full")
    with pytest.raises(UserError, match="known methods"):
        recommended_lr("adapters")


@pytest.mark.parametrize(
    "cfg, match",
    [
        (PromptMethodConfig(num_virtual_tokens=0), "num_virtual_tokens"),
        (PromptMethodConfig(init_text="  "), "init_text"),
        (PromptMethodConfig(kind="soft"), "kind"),
        (PromptMethodConfig(kind="p_tuning", encoder_hidden_size=0), "encoder_hidden_size"),
    ],
)
def test_bad_prompt_settings_are_user_errors(cfg, match, tokenizer):
    with pytest.raises(UserError, match=match):
        apply_prompt_method(build_tiny_llama(), tokenizer, cfg)
