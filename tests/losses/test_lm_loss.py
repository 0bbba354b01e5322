"""Causal LM loss: shift, masking, agreement with transformers, and token-exact accumulation."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.loss.loss_utils import ForCausalLMLoss

from finetune.errors import UserError
from finetune.losses.lm import causal_lm_loss, count_trained_tokens


def test_uniform_logits_give_log_vocab():
    labels = torch.tensor([[1, 2, 3, 4]])
    assert causal_lm_loss(torch.zeros(1, 4, 10), labels).item() == pytest.approx(math.log(10))
    assert causal_lm_loss(torch.zeros(1, 4, 10), labels, reduction="sum").item() == pytest.approx(3 * math.log(10))


def test_shift_and_mask_by_hand():
    logits = torch.full((1, 3, 2), 0.0)
    logits[0, 0] = torch.tensor([5.0, 0.0])  # predicts token 0 at position 1
    labels = torch.tensor([[-100, 0, -100]])  # only position 1 is trained, predicted by position 0
    want = -torch.log_softmax(torch.tensor([5.0, 0.0]), 0)[0]
    assert causal_lm_loss(logits, labels).item() == pytest.approx(want.item())
    assert count_trained_tokens(labels) == 1


def test_matches_transformers_loss_and_model_loss():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 32, (2, 6))
    labels = ids.clone()
    labels[0, :3] = -100
    out = model(input_ids=ids, labels=labels)
    ours = causal_lm_loss(out.logits, labels)
    assert ours.item() == pytest.approx(out.loss.item(), rel=1e-6)
    assert ours.item() == pytest.approx(ForCausalLMLoss(out.logits, labels, 32).item(), rel=1e-6)


def test_sum_over_window_tokens_equals_concatenated_mean():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 8, 11, generator=g)
    labels = torch.randint(0, 11, (4, 8), generator=g)
    labels[0:2, :6] = -100  # micro-batch 1: 2 rows * 2 trained tokens (positions 6, 7)
    labels[2, 7] = -100  # micro-batch 2: 7 + 6 = 13 trained tokens
    mb1, mb2 = (logits[:2], labels[:2]), (logits[2:], labels[2:])
    n1, n2 = count_trained_tokens(mb1[1]), count_trained_tokens(mb2[1])
    assert (n1, n2) == (4, 13)
    window = (causal_lm_loss(*mb1, reduction="sum") + causal_lm_loss(*mb2, reduction="sum")) / (n1 + n2)
    full = causal_lm_loss(logits, labels)
    assert window.item() == pytest.approx(full.item(), rel=1e-6)
    mean_of_means = (causal_lm_loss(*mb1) + causal_lm_loss(*mb2)) / 2
    assert abs(mean_of_means.item() - full.item()) > 1e-3


def test_no_trained_tokens_gives_zero_not_nan():
    loss = causal_lm_loss(torch.randn(1, 3, 5, requires_grad=True), torch.full((1, 3), -100))
    assert loss.item() == 0.0


def test_shape_errors():
    with pytest.raises(UserError, match=r"\(B, T, V\)"):
        causal_lm_loss(torch.zeros(2, 4, 5), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(UserError, match="reduction"):
        causal_lm_loss(torch.zeros(1, 2, 5), torch.zeros(1, 2, dtype=torch.long), reduction="none")


# --- fused_linear_cross_entropy: the projection and the loss in row chunks ---------------------------------------


def _fused_case(seed=0, rows=(3, 7), hidden=8, vocab=50):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*rows, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g)
    labels = torch.randint(0, vocab, rows, generator=g)
    labels[0, :4] = -100
    labels[2, -1] = -100
    return h, w, labels


@pytest.mark.parametrize("chunk_rows", [1, 4, 1000])  # many chunks, a ragged last chunk, one chunk
def test_fused_loss_and_gradients_equal_the_unfused_path(monkeypatch, chunk_rows):
    import finetune.losses.lm as lm

    h, w, labels = _fused_case()
    monkeypatch.setattr(lm, "_CHUNK_BYTES", chunk_rows * 4 * w.shape[0])
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = causal_lm_loss(h1 @ w1.t(), labels)
    ours = lm.fused_linear_cross_entropy(h2, w2, labels)
    (3.0 * ref).backward()
    (3.0 * ours).backward()  # the backward scales the precomputed gradient by the incoming one
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(h2.grad, h1.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w2.grad, w1.grad, rtol=1e-5, atol=1e-7)
    s = lm.fused_linear_cross_entropy(h, w, labels, reduction="sum")
    assert s.item() == pytest.approx(causal_lm_loss(h @ w.t(), labels, reduction="sum").item(), rel=1e-6)


def test_fused_loss_under_bf16_autocast_matches_autocast_logits():
    from finetune.losses.lm import fused_linear_cross_entropy

    h, w, labels = _fused_case(seed=1, vocab=300)
    h1, h2 = h.clone().requires_grad_(), h.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = causal_lm_loss(h1 @ w.t(), labels)  # bf16 matmul, fp32 softmax: what the model's lm_head does
        ours = fused_linear_cross_entropy(h2, w, labels)
    ref.backward()
    ours.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    assert h2.grad.dtype == torch.float32 and w.grad is None  # a frozen head gets no gradient
    torch.testing.assert_close(h2.grad, h1.grad, rtol=2e-2, atol=1e-3)  # bf16 rounding of the logit gradient
    fp32 = fused_linear_cross_entropy(h, w, labels)
    assert abs(fp32.item() - ours.item()) > 1e-6  # the autocast dtype was really used


def test_fused_loss_frozen_weight_cast_follows_the_weight():
    from finetune.losses.lm import fused_linear_cross_entropy

    h, w, labels = _fused_case(seed=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = fused_linear_cross_entropy(h, w, labels)
        w.mul_(2.0)  # an in-place update of a frozen weight must not reuse the stale cast
        after = fused_linear_cross_entropy(h, w, labels)
        want = causal_lm_loss(h @ w.t(), labels)
    assert after.item() != before.item()
    assert after.item() == pytest.approx(want.item(), rel=1e-5)


def test_fused_loss_no_trained_tokens_and_shape_errors():
    from finetune.losses.lm import fused_linear_cross_entropy

    h = torch.randn(1, 3, 4, requires_grad=True)
    loss = fused_linear_cross_entropy(h, torch.randn(5, 4), torch.full((1, 3), -100))
    loss.backward()
    assert loss.item() == 0.0 and h.grad.abs().sum().item() == 0.0
    with pytest.raises(UserError, match=r"hidden \(B, T, H\)"):
        fused_linear_cross_entropy(torch.zeros(1, 3, 4), torch.zeros(5, 6), torch.zeros(1, 3, dtype=torch.long))
