"""Causal language-model loss with token-exact normalisation across gradient accumulation.

Averaging per-micro-batch means over an accumulation window weights tokens unequally when the
micro-batches hold different numbers of trained tokens. Instead, sum the token losses of each
micro-batch (reduction="sum") and divide by the window's token count (`count_trained_tokens`
summed over the window). Same convention as transformers' ForCausalLMLoss with
`num_items_in_batch`; written out here so the reduction is explicit.
"""

from __future__ import annotations

import weakref
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from finetune.errors import UserError


def _check_shapes(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise UserError(
            f"causal LM loss needs logits (B, T, V) and labels (B, T); got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )


def causal_lm_loss(
    logits: Tensor,
    labels: Tensor,
    ignore_index: int = -100,
    reduction: Literal["mean", "sum"] = "mean",
) -> Tensor:
    """Next-token cross-entropy: position t predicts labels[t + 1]; labels equal to ignore_index do not count.

    "mean" averages over the trained tokens (0 when there are none, rather than NaN);
    "sum" is their sum, for normalising by the token count of a whole accumulation window.
    """
    _check_shapes(logits, labels)
    _check_reduction(reduction)
    flat_logits = logits.float().reshape(-1, logits.shape[-1])
    shift_labels = _shifted_labels(labels, ignore_index, flat_logits.device)
    total = F.cross_entropy(flat_logits, shift_labels, ignore_index=ignore_index, reduction="sum")
    return _reduce(total, shift_labels, ignore_index, reduction)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise UserError(f"unknown reduction {reduction!r}; use 'mean' or 'sum'")


def _shifted_labels(labels: Tensor, ignore_index: int, device) -> Tensor:
    """(B*T,) targets: position t predicts labels[t + 1]; the last position gets ignore_index and drops out.

    Shifting the labels rather than the logits: logits[:, :-1] would copy the whole (B, T, V) tensor and its gradient
    (200 MB per step for SmolLM2 at batch 4 x 256)."""
    return F.pad(labels, (0, 1), value=ignore_index)[:, 1:].reshape(-1).to(device)


def _reduce(total: Tensor, shift_labels: Tensor, ignore_index: int, reduction: str) -> Tensor:
    """ "sum": the summed token NLL; "mean": over the trained tokens (0 when there are none, rather than NaN)."""
    if reduction == "sum":
        return total
    return total / (shift_labels != ignore_index).sum().clamp(min=1)


def count_trained_tokens(labels: Tensor, ignore_index: int = -100) -> int:
    """Number of tokens that contribute to the loss after the shift (labels[:, 1:] != ignore_index)."""
    if labels.dim() != 2:
        raise UserError(f"labels must be (B, T), got {tuple(labels.shape)}")
    return int((labels[:, 1:] != ignore_index).sum().item())


# ---------------------------------------------------------------------------------------------
# The output projection and the loss in one pass over row chunks
# ---------------------------------------------------------------------------------------------
#
# `causal_lm_loss(model(...).logits, labels)` materialises the (tokens x vocab) logits several times over: the
# autocast-dtype logits, their fp32 copy, log-softmax, its gradient and the gradient's cast. For SmolLM2 at batch 4 x
# 256 that is five tensors of 100-200 MB each, which on CPU costs more time in page faults and memory traffic than the
# projection's matmul itself (half of a LoRA step, measured). `fused_linear_cross_entropy` takes the final hidden
# states and the output weight instead, and walks the rows in chunks small enough to stay in reused allocator memory:
# per chunk it forms the logits in the compute dtype, takes the fp32 log-sum-exp, and forms the gradient right away
# (softmax - one-hot), so the backward pass only scales precomputed gradients. The numbers are those of the unfused
# path under the same precision (bf16/fp16 matmul, fp32 softmax); only the order of the chunked sums differs.

_CHUNK_BYTES = 16 * 2**20  # fp32 logits per chunk; glibc keeps blocks under its 32 MiB mmap ceiling for reuse


_frozen_cast: list = []  # [(weakref to weight, (data_ptr, version, dtype), cast copy)]: one cast per frozen weight, not per step


def _in_dtype(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """`weight` in `dtype`; a frozen weight's cast (a tied 49k x 576 embedding: 56 MB) is kept until the weight changes."""
    if weight.dtype == dtype:
        return weight
    if weight.requires_grad:
        return weight.to(dtype)
    key = (weight.data_ptr(), weight._version, dtype)
    if not (_frozen_cast and _frozen_cast[0][0]() is weight and _frozen_cast[0][1] == key):
        _frozen_cast[:] = [(weakref.ref(weight), key, weight.detach().to(dtype))]  # the last weight only
    return _frozen_cast[0][2]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, compute_dtype, ignore_index):
        rows, vocab = hidden.shape[0], weight.shape[0]
        chunk = max(1, _CHUNK_BYTES // (4 * vocab))
        w = _in_dtype(weight, compute_dtype)
        want_grad = any(ctx.needs_input_grad[:2])  # False in evaluation: the loss only
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if want_grad else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        )
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, rows, chunk):
            h = hidden[start : start + chunk].to(compute_dtype)
            y = labels[start : start + chunk]
            scored = y != ignore_index
            target = torch.where(scored, y, 0)
            logits = (h @ w.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, target[:, None]).squeeze(1)
            total += ((lse - picked) * scored).sum()
            if not want_grad:
                continue
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place: d(sum of NLL)/d logits = probs - one_hot
            probs.scatter_add_(1, target[:, None], -scored[:, None].to(probs.dtype))
            probs.mul_(scored[:, None])
            g = probs.to(compute_dtype)
            grad_hidden[start : start + chunk] = g @ w
            if grad_weight is not None:
                grad_weight += (g.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = (grad_hidden * grad_output).to(ctx.dtypes[0])
        gw = (grad_weight * grad_output).to(ctx.dtypes[1]) if grad_weight is not None else None
        return gh, gw, None, None, None


def fused_linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    ignore_index: int = -100,
    reduction: Literal["mean", "sum"] = "mean",
) -> Tensor:
    """`causal_lm_loss(hidden @ weight.T, labels)` without ever holding the (B, T, V) logits.

    hidden: (B, T, H) final hidden states (after the last norm); weight: (V, H), the output projection (no bias);
    labels: (B, T), unshifted, as for `causal_lm_loss`. The matmuls run in the autocast dtype when autocast is on
    (as the model's own lm_head would), the softmax in fp32. Gradients flow to `hidden` and, if it requires grad, to
    `weight` (full fine-tuning of a tied embedding).
    """
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2] or weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise UserError(
            f"fused LM loss needs hidden (B, T, H), weight (V, H) and labels (B, T); got {tuple(hidden.shape)}, "
            f"{tuple(weight.shape)} and {tuple(labels.shape)}"
        )
    _check_reduction(reduction)
    device = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    shift_labels = _shifted_labels(labels, ignore_index, hidden.device)
    with torch.autocast(device, enabled=False):
        total = _LinearCrossEntropy.apply(
            hidden.reshape(-1, hidden.shape[-1]), weight, shift_labels, compute_dtype, ignore_index
        )
    return _reduce(total, shift_labels, ignore_index, reduction)
