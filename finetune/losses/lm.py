"""Causal language-model loss with token-exact normalisation across gradient accumulation.

Averaging per-micro-batch means over an accumulation window weights tokens unequally when the
micro-batches hold different numbers of trained tokens. Instead, sum the token losses of each
micro-batch (reduction="sum") and divide by the window's token count (`count_trained_tokens`
summed over the window). Same convention as transformers' ForCausalLMLoss with
`num_items_in_batch`; written out here so the reduction is explicit.
"""

from __future__ import annotations

from typing import Literal

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
    if reduction not in ("mean", "sum"):
        raise UserError(f"unknown reduction {reduction!r}; use 'mean' or 'sum'")
    # Shift the labels, not the logits: logits[:, :-1] would copy the whole (B, T, V) tensor and its gradient
    # (200 MB per step for SmolLM2 at batch 4 x 256); the last position gets ignore_index and drops out.
    flat_logits = logits.float().reshape(-1, logits.shape[-1])
    shift_labels = F.pad(labels, (0, 1), value=ignore_index)[:, 1:].reshape(-1).to(flat_logits.device)
    total = F.cross_entropy(flat_logits, shift_labels, ignore_index=ignore_index, reduction="sum")
    if reduction == "sum":
        return total
    count = (shift_labels != ignore_index).sum()
    return total / count.clamp(min=1)


def count_trained_tokens(labels: Tensor, ignore_index: int = -100) -> int:
    """Number of tokens that contribute to the loss after the shift (labels[:, 1:] != ignore_index)."""
    if labels.dim() != 2:
        raise UserError(f"labels must be (B, T), got {tuple(labels.shape)}")
    return int((labels[:, 1:] != ignore_index).sum().item())
