"""Perplexity: token-weighted exp(NLL) with shifted labels and -100 masking, on a tiny random LLaMA."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from finetune.errors import UserError
from finetune.metrics.perplexity import perplexity


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
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
