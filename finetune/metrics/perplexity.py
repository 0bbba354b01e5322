"""Perplexity of a causal language model over an iterable of batches.

Token-weighted: exp(sum of token NLLs / number of scored tokens) over the whole iterable, not the
mean of per-batch losses (which over-weights short or heavily padded batches). Written by hand
because transformers' models return the batch-mean loss only, and the Trainer averages those.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F

from finetune.errors import UserError

IGNORE_INDEX = -100  # label value that is not scored (padding, prompt tokens), as in transformers


def batch_labels(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The batch's `labels`, or `input_ids` with padding (attention_mask == 0) set to IGNORE_INDEX."""
    if "labels" in batch and batch["labels"] is not None:
        return batch["labels"]
    labels = batch["input_ids"].clone()
    if batch.get("attention_mask") is not None:
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    return labels


def nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL and scored-token count: logits at t predict labels at t + 1."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1).to(shift_logits.device)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return float(total), int((shift_labels != IGNORE_INDEX).sum())


@torch.no_grad()
def perplexity(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> float:
    """exp(total token NLL / total scored tokens) of `model` over `batches`.

    Each batch is a mapping with `input_ids` (B x T) and optionally `attention_mask` and `labels`
    (IGNORE_INDEX marks unscored tokens; without labels, every non-padding token is scored). The
    model is put in eval mode for the pass and given back in the mode it came in.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        for batch in batches:
            if not isinstance(batch, Mapping) or "input_ids" not in batch:
                raise UserError(
                    "perplexity batches must be mappings with 'input_ids' "
                    "(and optional 'attention_mask', 'labels')"
                )
            labels = batch_labels(batch)
            if labels.shape != batch["input_ids"].shape:
                raise UserError(
                    f"labels shape {tuple(labels.shape)} differs from input_ids shape "
                    f"{tuple(batch['input_ids'].shape)}; give one label per token"
                )
            mask = batch.get("attention_mask")
            mask = None if mask is None else mask.to(device)
            out = model(input_ids=batch["input_ids"].to(device), attention_mask=mask)
            nll, count = nll_sum(out.logits, labels)
            total_nll += nll
            total_tokens += count
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise UserError("perplexity found no tokens to score: every label is -100 or the batches are empty")
    return math.exp(total_nll / total_tokens)
