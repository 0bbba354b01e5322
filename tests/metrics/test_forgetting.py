"""Forgetting against the base model (finetune/metrics/forgetting.py) on a tiny LLaMA, against direct computations."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from finetune.metrics import forgetting as fg
from finetune.models.causal_lm import LMModelConfig, build_tiny_llama, build_tiny_tokenizer


def _batches(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 259, (3, 12), generator=g)
        labels = ids.clone()
        labels[:, 0] = -100
        labels[1, 8:] = -100  # padding / untrained tail
        out.append({"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)})
    return out


def _lora(model, seed=1):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():  # B starts at 0 (untouched); give it values so the adapted model differs from the base
        g = torch.Generator().manual_seed(seed)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return peft_model


def _direct_kl(base, model, batches):
    """Mean over trained tokens of KL(base || model), full softmax, torch's kl_div."""
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            keep = F.pad(b["labels"], (0, 1), value=-100)[:, 1:] != -100
            log_p = F.log_softmax(base(input_ids=b["input_ids"]).logits[keep], -1)
            log_q = F.log_softmax(model(input_ids=b["input_ids"]).logits[keep], -1)
            total += float(F.kl_div(log_q, log_p, log_target=True, reduction="sum"))
            count += int(keep.sum())
    return total / count


def test_kl_to_base_is_zero_for_an_untouched_model():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert fg.kl_to_base(model, _batches()) == pytest.approx(0.0, abs=1e-7)
    base = build_tiny_llama()
    (ref,) = fg.top_k_reference(base, _batches(n=1), k=16)
    assert fg.kl_to_base(base, _batches(n=1), [ref]) == pytest.approx(0.0, abs=1e-6)


def test_kl_to_base_with_the_adapter_disabled_equals_a_direct_full_softmax_computation():
    base = build_tiny_llama()
    model = _lora(copy.deepcopy(base))
    batches = _batches()
    got = fg.kl_to_base(model, batches)
    want = _direct_kl(base, model, batches)
    assert want > 1e-3  # the adapter really moved the distribution
    assert got == pytest.approx(want, rel=1e-4)
    assert fg.kl_to_base(model, batches) > 0  # the adapter is enabled again after the measure


def test_full_fine_tuning_reference_is_a_named_lower_bound_exact_with_the_whole_vocabulary(monkeypatch):
    monkeypatch.setattr(fg, "CHUNK_BYTES", 4 * 259 * 5)  # 5 rows a chunk: the reference is built in pieces
    base = build_tiny_llama()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for p in tuned.model.layers[0].parameters():
            p.add_(torch.randn_like(p) * 0.2)
    batches = _batches(2)
    exact = _direct_kl(base, tuned, batches)
    bound = fg.kl_to_base(tuned, batches, fg.top_k_reference(base, batches, k=8))
    whole = fg.kl_to_base(tuned, batches, fg.top_k_reference(base, batches, k=259))
    assert 0 < bound <= exact
    assert whole == pytest.approx(exact, rel=1e-4)
    assert fg.kl_key(8) == "general_kl_to_base_top8_lower_bound" and fg.kl_key(None) == "general_kl_to_base"


def test_prompt_tuning_base_is_the_model_without_its_virtual_tokens():
    from peft import PromptTuningConfig, get_peft_model

    base = build_tiny_llama()
    model = get_peft_model(copy.deepcopy(base), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    batches = _batches(3, n=1)
    teacher = fg.base_teacher(model, batches[0], batches[0]["labels"])
    keep = F.pad(batches[0]["labels"], (0, 1), value=-100)[:, 1:] != -100
    with torch.no_grad():
        want = base(input_ids=batches[0]["input_ids"]).logits[keep]
    got = teacher.hidden @ teacher.weight.t() if teacher.weight is not None else teacher.hidden
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert fg.kl_to_base(model, batches) > 0  # the soft prompt changes the predictions


def test_base_samples_are_seeded_cached_by_model_and_settings_and_reused(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    build_tiny_llama().save_pretrained(folder, safe_serialization=True)
    build_tiny_tokenizer().save_pretrained(folder)
    model_cfg = LMModelConfig(name_or_path=str(folder), cache_dir=str(tmp_path / "cache"))
    model, tok = build_tiny_llama(), build_tiny_tokenizer()
    cfg = fg.ForgettingConfig(samples=3, sample_tokens=10, seed=5)
    path, reused = fg.base_samples_file(model, tok, model_cfg, cfg)
    assert not reused and path.parent == tmp_path / "cache" / "derived"
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    assert len(texts) == 3 and texts[0].startswith(fg.GENERIC_PROMPTS[0])
    assert fg.sample_base_texts(model, tok, cfg) == texts  # seeded: the same texts again

    def no_generation(*a, **k):
        raise AssertionError("a cached sample set was drawn again")

    monkeypatch.setattr(fg, "sample_base_texts", no_generation)
    assert fg.base_samples_file(model, tok, model_cfg, cfg) == (path, True)
    other = fg.samples_cache_path(model_cfg, fg.ForgettingConfig(samples=3, sample_tokens=10, seed=6))
    assert other != path  # another setting, another file
    assert fg.samples_cache_path(model_cfg, cfg, fg.GUARD_PROMPTS) != path
    assert not set(fg.GUARD_PROMPTS) & set(fg.GENERIC_PROMPTS)  # the guard never trains on the measured prompts


def test_bad_sizes_are_refused_in_one_line():
    from finetune.errors import UserError

    with pytest.raises(UserError, match="forgetting.top_k=0"):
        fg.check_forgetting_config(fg.ForgettingConfig(top_k=0))
    with pytest.raises(UserError, match="forgetting.temperature"):
        fg.check_forgetting_config(fg.ForgettingConfig(temperature=0.0))
