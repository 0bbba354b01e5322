"""Perplexity: token-weighted exp(NLL) with shifted labels and -100 masking, on a tiny random LLaMA."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from finetune.errors import UserError
from finetune.metrics.perplexity import OVERFLOW_NLL, dataset_batches, perplexity, perplexity_of, summed_nll


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(cfg).eval()


def make_batches() -> list[dict]:
    g = torch.Generator().manual_seed(1)
    ids1 = torch.randint(0, 50, (2, 7), generator=g)
    mask1 = torch.ones(2, 7, dtype=torch.long)
    mask1[1, 4:] = 0  # right padding: 3 pad tokens in row 1
    ids2 = torch.randint(0, 50, (1, 5), generator=g)
    labels2 = ids2.clone()
    labels2[0, :2] = -100  # prompt tokens not scored
    return [{"input_ids": ids1, "attention_mask": mask1}, {"input_ids": ids2, "labels": labels2}]


def manual_nll(model, batch) -> tuple[float, int]:
    """Per position: -log softmax(logits[t])[label[t+1]] for every scored label."""
    ids = batch["input_ids"]
    labels = batch.get("labels")
    if labels is None:
        labels = ids.masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=batch.get("attention_mask")).logits
    total, count = 0.0, 0
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target != -100:
                total -= float(torch.log_softmax(logits[b, t], dim=-1)[target])
                count += 1
    return total, count


def test_perplexity_is_token_weighted_exp_nll(model):
    batches = make_batches()
    parts = [manual_nll(model, b) for b in batches]
    assert [c for _, c in parts] == [(6 + 3), 3]
    expected = math.exp(sum(n for n, _ in parts) / sum(c for _, c in parts))
    got = perplexity(model, iter(batches))  # any iterable, consumed once
    assert got == pytest.approx(expected, rel=1e-5)
    mean_of_batch_means = math.exp(sum(n / c for n, c in parts) / len(parts))
    assert abs(got - mean_of_batch_means) > 1e-3 * got


def test_perplexity_matches_transformers_loss_on_one_unpadded_batch(model):
    ids = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hf_loss = model(input_ids=ids, labels=ids).loss
    assert perplexity(model, [{"input_ids": ids}]) == pytest.approx(math.exp(float(hf_loss)), rel=1e-5)


def test_perplexity_restores_training_mode(model):
    model.train()
    try:
        perplexity(model, make_batches())
        assert model.training
    finally:
        model.eval()


def test_nothing_to_score_is_a_user_error(model):
    ids = torch.randint(0, 50, (1, 4))
    with pytest.raises(UserError, match="no tokens"):
        perplexity(model, [{"input_ids": ids, "labels": torch.full_like(ids, -100)}])
    with pytest.raises(UserError, match="input_ids"):
        perplexity(model, [ids])


def test_fused_and_unfused_perplexity_agree_and_batching_does_not_change_it(model):
    g = torch.Generator().manual_seed(3)
    rows = [{"input_ids": torch.randint(0, 50, (n,), generator=g)} for n in (9, 4, 7, 6, 3)]

    def collate(items):  # right padding, scored where real
        ids = torch.nn.utils.rnn.pad_sequence([r["input_ids"] for r in items], batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r["input_ids"]) for r in items], batch_first=True)
        return {"input_ids": ids, "attention_mask": mask}

    one_by_one = perplexity(model, dataset_batches(rows, collate, 1), fused=False)
    assert perplexity(model, dataset_batches(rows, collate, 2), fused=True) == pytest.approx(one_by_one, rel=1e-5)
    assert perplexity(model, dataset_batches(rows, collate, 5), fused=True) == pytest.approx(one_by_one, rel=1e-5)
    assert [len(b["input_ids"]) for b in dataset_batches(rows, collate, 2)] == [2, 2, 1]
    assert [len(b["input_ids"]) for b in dataset_batches(rows, collate, 2, max_batches=2)] == [2, 2]
    first_two = perplexity(model, [collate(rows[:2])])
    assert perplexity(model, dataset_batches(rows, collate, 2, max_batches=1)) == pytest.approx(first_two, rel=1e-6)


def test_a_diverged_model_has_perplexity_inf_not_an_overflow_error():
    assert perplexity_of(OVERFLOW_NLL * 10, 10) == math.inf  # math.exp(700) would still be finite, 710 raises
    assert perplexity_of(2.0 * 3, 3) == pytest.approx(math.exp(2.0))


@pytest.mark.parametrize("method", ["full", "lora", "lora_on_lm_head", "prompt"])
def test_fused_loss_gives_the_unfused_loss_and_gradients(method):
    # The LM recipe trains and evaluates with loss.fused=true by default: the model hands back its final hidden
    # states and the loss applies the tied output projection in chunks. Same numbers as the real logits.
    from finetune.methods.lora import LoraMethodConfig, apply_lora
    from finetune.methods.prompt_tuning import PromptMethodConfig, apply_prompt_method
    from finetune.models.causal_lm import build_tiny_llama, build_tiny_tokenizer, lm_head_bypassed

    model = build_tiny_llama(num_hidden_layers=2)
    if method.startswith("lora"):
        targets = ["q_proj", "lm_head"] if method == "lora_on_lm_head" else ["all-linear"]
        model = apply_lora(model, LoraMethodConfig(r=4, dropout=0.0, target_modules=targets))
    elif method == "prompt":
        model = apply_prompt_method(
            model, build_tiny_tokenizer(), PromptMethodConfig(kind="prompt_tuning", init="random")
        )
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :5] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    losses, grads = [], []
    for fused in (False, True):
        model.zero_grad()
        loss = summed_nll(model, batch, fused)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)
    with lm_head_bypassed(model) as weight:
        bypassed = weight is not None
    assert bypassed == (method != "lora_on_lm_head")  # a LoRA-wrapped head falls back to the real logits
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size  # the head is back after the block
