"""The divergence core (finetune/losses/distill.py) against direct full-softmax computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finetune.errors import UserError
from finetune.losses.distill import DenseTeacher, TopKTeacher, divergence_from_hidden, scored_rows, teacher_rows

B, T, H, V = 2, 7, 8, 300


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    hs, ht = torch.randn(B, T, H, generator=g), torch.randn(B, T, H, generator=g)
    ws, wt = torch.randn(V, H, generator=g) * 0.5, torch.randn(V, H, generator=g) * 0.5
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :3] = -100  # a prompt: not trained
    labels[1, -2:] = -100  # padding
    return hs, ht, ws, wt, labels


def _direct(zs, zt, labels, kind, temperature):
    """Full-softmax reference with torch's kl_div: sum over the shifted trained tokens, times T**2."""
    keep = F.pad(labels, (0, 1), value=-100)[:, 1:] != -100
    log_q = F.log_softmax(zs[keep] / temperature, -1)
    log_p = F.log_softmax(zt[keep] / temperature, -1)
    fwd = F.kl_div(log_q, log_p, log_target=True, reduction="sum")  # KL(p || q)
    rev = F.kl_div(log_p, log_q, log_target=True, reduction="sum")  # KL(q || p)
    value = {"forward": fwd, "reverse": rev, "symmetric": (fwd + rev) / 2}[kind]
    return value * temperature**2


@pytest.mark.parametrize("kind", ["forward", "reverse", "symmetric"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_chunked_divergence_equals_direct_computation_and_its_gradient(kind, temperature, monkeypatch):
    monkeypatch.setattr("finetune.losses.distill._CHUNK_BYTES", 4 * V * 3)  # 3 rows a chunk: several chunks
    hs, ht, ws, wt, labels = _case()
    hs1, ws1 = hs.clone().requires_grad_(), ws.clone().requires_grad_()
    got = divergence_from_hidden(
        hs1, ws1, labels, DenseTeacher(teacher_rows(ht, labels), wt), kind=kind, temperature=temperature
    )
    hs2, ws2 = hs.clone().requires_grad_(), ws.clone().requires_grad_()
    want = _direct(hs2 @ ws2.t(), ht @ wt.t(), labels, kind, temperature)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    got.backward()
    want.backward()
    torch.testing.assert_close(hs1.grad, hs2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ws1.grad, ws2.grad, rtol=1e-4, atol=1e-6)


def test_logits_path_equals_the_hidden_path():
    hs, ht, ws, wt, labels = _case(1)
    from_hidden = divergence_from_hidden(hs, ws, labels, DenseTeacher(teacher_rows(ht, labels), wt), "symmetric")
    zs, zt = hs @ ws.t(), ht @ wt.t()
    from_logits = divergence_from_hidden(zs, None, labels, DenseTeacher(teacher_rows(zt, labels)), "symmetric")
    assert from_hidden.item() == pytest.approx(from_logits.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["forward", "reverse", "symmetric"])
def test_divergence_is_zero_when_student_equals_teacher(kind):
    hs, _, ws, _, labels = _case(2)
    value = divergence_from_hidden(hs, ws, labels, DenseTeacher(teacher_rows(hs, labels), ws), kind, 2.0)
    assert abs(value.item()) < 1e-5


def test_top_k_reference_is_the_coarsened_kl_a_lower_bound_exact_with_full_k():
    hs, ht, ws, wt, labels = _case(3)
    zt = teacher_rows(ht @ wt.t(), labels)
    log_p = F.log_softmax(zt, -1)
    full = divergence_from_hidden(hs, ws, labels, DenseTeacher(zt))
    k = 10
    top, idx = log_p.topk(k, dim=-1)
    bound = divergence_from_hidden(hs, ws, labels, TopKTeacher(top, idx))
    # direct: the distributions coarsened to the top k and one "rest" outcome
    log_q = F.log_softmax(teacher_rows(hs @ ws.t(), labels), -1)
    q_top = log_q.gather(1, idx).exp()
    p_top = top.exp()
    p_tail, q_tail = 1 - p_top.sum(-1), 1 - q_top.sum(-1)
    coarse = (p_top * (p_top.log() - q_top.log())).sum() + (p_tail * (p_tail.log() - q_tail.log())).sum()
    assert bound.item() == pytest.approx(coarse.item(), rel=1e-4)
    assert bound.item() <= full.item()
    exact = divergence_from_hidden(hs, ws, labels, TopKTeacher(*log_p.topk(V, dim=-1)))
    assert exact.item() == pytest.approx(full.item(), rel=1e-4)


def test_scored_rows_follow_the_lm_loss_shift():
    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, 8]])
    assert scored_rows(labels).tolist() == [0, 1, 5, 6]


def test_bad_settings_are_refused_in_one_line():
    hs, ht, ws, wt, labels = _case()
    with pytest.raises(UserError, match="temperature"):
        divergence_from_hidden(hs, ws, labels, DenseTeacher(teacher_rows(ht, labels), wt), temperature=0.0)
    with pytest.raises(UserError, match="unknown divergence"):
        divergence_from_hidden(hs, ws, labels, DenseTeacher(teacher_rows(ht, labels), wt), kind="js")  # type: ignore[arg-type]
