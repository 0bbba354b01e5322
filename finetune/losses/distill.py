"""Token-level divergences between a teacher (or reference) and a student causal LM, over trained tokens.

One core for three uses: the distillation objective (a teacher model), the forgetting measure and the KL-to-base
guard (the untouched base model as the reference). Position t is scored when labels[t + 1] is not ignore_index,
the same shift and the same tokens as the causal-LM loss (finetune/losses/lm.py).

Divergences, per scored token, on p = softmax(teacher_logits / T) and q = softmax(student_logits / T):
  forward    KL(p || q) = sum p (log p - log q)        (mass-covering; KL(base || adapted) for forgetting)
  reverse    KL(q || p) = sum q (log q - log p)        (mode-seeking)
  symmetric  (forward + reverse) / 2                   (half of Jeffreys' divergence)
Temperature convention (Hinton et al. 2015): the divergence of the softened distributions is multiplied by T**2, so
the gradient's scale does not shrink as 1/T**2 when T grows and alpha means the same at every temperature; at T=1
the value is the plain divergence.

Every function returns a SUM over scored tokens (callers divide by a token count, as summed_nll's users do).

Like `fused_linear_cross_entropy`, `divergence_from_hidden` never holds the (tokens x vocab) logits whole: it walks
the scored rows in chunks, forms both sides' logits for a chunk, and keeps only the gradient with respect to the
student's hidden states (and its output weight when that trains). Written by hand: neither transformers nor torch
has a chunked distillation loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from finetune.errors import UserError

# The fused CE's chunk size, shift and frozen-weight cast: the same memory budget and the same scored tokens.
from finetune.losses.lm import _CHUNK_BYTES, _in_dtype, _shifted_labels

CHUNK_BYTES = _CHUNK_BYTES  # fp32 logits per chunk, public for the callers that walk rows the same way
DivergenceKind = Literal["forward", "reverse", "symmetric"]
DIVERGENCES = ("forward", "reverse", "symmetric")


def row_divergence(log_q: Tensor, log_p: Tensor, kind: str) -> Tensor:
    """Per-row divergence of fp32 log-probabilities (rows, V): teacher log_p, student log_q (see the module doc)."""
    if kind not in DIVERGENCES:
        raise UserError(f"unknown divergence {kind!r}; use forward, reverse or symmetric")
    p, q = log_p.exp(), log_q.exp()
    forward = torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)
    if kind == "forward":
        return forward
    reverse = torch.where(q > 0, q * (log_q - log_p), 0.0).sum(-1)
    return reverse if kind == "reverse" else (forward + reverse) / 2


def scored_rows(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Flat indices (into B*T) of the positions that predict a trained token (labels[t + 1] != ignore_index)."""
    return (_shifted_labels(labels, ignore_index, labels.device) != ignore_index).nonzero().squeeze(1)


@dataclass
class DenseTeacher:
    """The teacher's full distribution for each scored row: `hidden` (rows, H) and its output `weight` (V, H), or
    `hidden` = its logits (rows, V) when `weight` is None. Logits of a chunk are formed only when it is reached."""

    hidden: Tensor
    weight: Tensor | None = None

    def log_probs(self, start: int, end: int, student_logits: Tensor, temperature: float, dtype) -> Tensor:
        logits = _logits(self.hidden[start:end], self.weight, dtype)
        return torch.log_softmax(logits / temperature, dim=-1)


@dataclass
class TopKTeacher:
    """A precomputed reference that kept, per scored row, its `k` largest log-probabilities (`logprobs`, `indices`:
    (rows, k)) and nothing else; the tail mass is 1 - sum(exp(logprobs)).

    Its distribution over the vocabulary is completed with the student's own tail shape: p~_j = p_j on the top k,
    p_tail * q_j / q_tail elsewhere. Then KL(p~ || q) = sum_topk p log(p / q) + p_tail log(p_tail / q_tail): the KL
    between the two distributions coarsened to k + 1 outcomes (top k, "the rest"), which is a LOWER BOUND on the full
    KL(p || q) (coarsening never increases a KL divergence), exact when the tail is empty or shaped as the
    student's. Its gradient with respect to the student's logits is exactly q - p~. Forward KL and T=1 only."""

    logprobs: Tensor
    indices: Tensor

    def log_probs(self, start: int, end: int, student_logits: Tensor, temperature: float, dtype) -> Tensor:
        top, idx = self.logprobs[start:end].float(), self.indices[start:end]
        log_q = torch.log_softmax(student_logits, dim=-1)
        tail_q = torch.logsumexp(log_q.scatter(1, idx, float("-inf")), dim=-1)  # log q(tail)
        tail_p = torch.log1p(-top.exp().sum(-1).clamp(max=1.0 - 1e-7))  # log p(tail)
        out = log_q + (tail_p - tail_q)[:, None]
        return out.scatter(1, idx, top)


def _logits(hidden: Tensor, weight: Tensor | None, dtype) -> Tensor:
    if weight is None:
        return hidden.float()
    return (hidden.to(dtype) @ _in_dtype(weight, dtype).t()).float()


class _ChunkedDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, teacher, kind, temperature, compute_dtype):
        rows = hidden.shape[0]
        vocab = weight.shape[0] if weight is not None else hidden.shape[1]
        chunk = max(1, _CHUNK_BYTES // (4 * vocab))
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if want_grad else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        )
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, rows, chunk):
            h = hidden[start : start + chunk]
            with torch.enable_grad():
                z = _logits(h.detach(), weight, compute_dtype).requires_grad_(want_grad)
                log_p = teacher.log_probs(start, start + h.shape[0], z.detach(), temperature, compute_dtype)
                value = row_divergence(torch.log_softmax(z / temperature, dim=-1), log_p.detach(), kind).sum()
                value = value * temperature**2
            total += value.detach()
            if not want_grad:
                continue
            (g,) = torch.autograd.grad(value, z)  # d(sum over the chunk)/d student logits, (chunk, V) fp32
            if weight is None:
                grad_hidden[start : start + chunk] = g
                continue
            g = g.to(compute_dtype)
            grad_hidden[start : start + chunk] = (g @ _in_dtype(weight, compute_dtype)).float()
            if grad_weight is not None:
                grad_weight += (g.t() @ h.to(compute_dtype)).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype if weight is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = (grad_hidden * grad_output).to(ctx.dtypes[0]) if grad_hidden is not None else None
        gw = (grad_weight * grad_output).to(ctx.dtypes[1]) if grad_weight is not None else None
        return gh, gw, None, None, None, None


def divergence_from_hidden(
    student: Tensor,
    student_weight: Tensor | None,
    labels: Tensor,
    teacher: DenseTeacher | TopKTeacher,
    kind: DivergenceKind = "forward",
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> Tensor:
    """Summed divergence(teacher || student) over the scored tokens of `labels` (B, T), in row chunks.

    student: (B, T, H) final hidden states with `student_weight` (V, H) the output projection, or (B, T, V) logits
    with `student_weight` None. The teacher holds the same scored rows, in order (`scored_rows(labels)`). Matmuls run
    in the autocast dtype when autocast is on, softmaxes in fp32. Gradients reach `student` (and the weight if it
    requires grad); the teacher is constant.
    """
    if not temperature > 0:
        raise UserError(f"distillation temperature={temperature} must be > 0; e.g. 1.0 or 2.0")
    if isinstance(teacher, TopKTeacher) and (kind != "forward" or temperature != 1.0):
        raise UserError("a top-k reference measures forward KL at temperature 1 only")
    if student.dim() != 3 or student.shape[:2] != labels.shape:
        raise UserError(f"divergence needs student (B, T, ·) and labels (B, T); got {tuple(student.shape)}")
    device = student.device.type
    compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
    rows = scored_rows(labels, ignore_index)
    flat = student.reshape(-1, student.shape[-1]).index_select(0, rows)
    with torch.autocast(device, enabled=False):
        return _ChunkedDivergence.apply(flat, student_weight, teacher, kind, float(temperature), compute_dtype)


def teacher_rows(teacher_out: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """The teacher's (B, T, ·) hidden states or logits at the scored rows of `labels`, as `DenseTeacher` wants."""
    return teacher_out.reshape(-1, teacher_out.shape[-1]).index_select(0, scored_rows(labels, ignore_index))
