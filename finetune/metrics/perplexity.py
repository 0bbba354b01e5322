"""Perplexity of a causal language model, and the summed token NLL it is made of (also the LM recipe's train loss).

Token-weighted: exp(sum of token NLLs / number of scored tokens) over the whole iterable, not the
mean of per-batch losses (which over-weights short or heavily padded batches). Written by hand
because transformers' models return the batch-mean loss only, and the Trainer averages those.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import torch

from finetune.errors import UserError
from finetune.losses.lm import causal_lm_loss, count_trained_tokens, fused_linear_cross_entropy
from finetune.models.causal_lm import lm_head_bypassed

IGNORE_INDEX = -100  # label value that is not scored (padding, prompt tokens), as in transformers
OVERFLOW_NLL = 700.0  # math.exp raises past ~709: a mean NLL this large (a diverged model) is perplexity inf


def batch_labels(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The batch's `labels`, or `input_ids` with padding (attention_mask == 0) set to IGNORE_INDEX."""
    if "labels" in batch and batch["labels"] is not None:
        return batch["labels"]
    labels = batch["input_ids"].clone()
    if batch.get("attention_mask") is not None:
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    return labels


def logits_for(model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Logits aligned with `batch["input_ids"]` (prompt/p-tuning prepend virtual tokens: cut them off)."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    logits = model(**inputs, use_cache=False).logits
    return logits[:, -batch["input_ids"].shape[1] :]


def summed_nll(model, batch: Mapping[str, torch.Tensor], fused: bool = True) -> torch.Tensor:
    """Summed next-token NLL over the batch's scored tokens. fused: the model hands back its final hidden states
    and `fused_linear_cross_entropy` applies the output projection chunk by chunk (less memory, same numbers)."""
    labels = batch_labels(batch)
    with lm_head_bypassed(model) if fused else contextlib.nullcontext() as head_weight:
        out = logits_for(model, batch)
    if head_weight is None:  # not fused, or a head that cannot be bypassed (e.g. a LoRA-wrapped lm_head)
        return causal_lm_loss(out, labels, reduction="sum")
    return fused_linear_cross_entropy(out, head_weight, labels, reduction="sum")


class Indexed(Protocol):
    """What `dataset_batches` reads: a length and items by position (a list, a tokenized split)."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Any: ...


def dataset_batches(
    dataset: Indexed, collate: Callable[[list], dict], batch_size: int, max_batches: int = 0
) -> Iterator[dict]:
    """`dataset` in order, `batch_size` items a batch, at most `max_batches` batches (0: the whole dataset)."""
    for b, start in enumerate(range(0, len(dataset), batch_size)):
        if max_batches and b >= max_batches:
            return
        yield collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


def _checked(batch) -> Mapping[str, torch.Tensor]:
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise UserError(
            "perplexity batches must be mappings with 'input_ids' (and optional 'attention_mask', 'labels')"
        )
    labels = batch_labels(batch)
    if labels.shape != batch["input_ids"].shape:
        raise UserError(
            f"labels shape {tuple(labels.shape)} differs from input_ids shape "
            f"{tuple(batch['input_ids'].shape)}; give one label per token"
        )
    return batch


def nll_and_tokens(
    model, batches: Iterable[Mapping[str, torch.Tensor]], fused: bool = True, device=None
) -> tuple[float, int]:
    """(summed token NLL, scored tokens) of `model` over `batches`, each moved to `device` (default: the model's)."""
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in batches:
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in _checked(batch).items()}
                total += float(summed_nll(model, batch, fused))
                count += count_trained_tokens(batch_labels(batch))
    finally:
        model.train(was_training)
    if count == 0:
        raise UserError("perplexity found no tokens to score: every label is -100 or the batches are empty")
    return total, count


def perplexity_of(total_nll: float, tokens: int) -> float:
    """exp(mean token NLL); inf for a diverged model rather than math.exp's OverflowError."""
    mean = total_nll / tokens
    return math.exp(mean) if mean < OVERFLOW_NLL else math.inf


def perplexity(model, batches: Iterable[Mapping[str, torch.Tensor]], fused: bool = True, device=None) -> float:
    """exp(total token NLL / total scored tokens) of `model` over `batches`.

    Each batch is a mapping with `input_ids` (B x T) and optionally `attention_mask`, `position_ids` and `labels`
    (IGNORE_INDEX marks unscored tokens; without labels, every non-padding token is scored). The model is put in
    eval mode for the pass and given back in the mode it came in; autocast, if wanted, is the caller's.
    """
    return perplexity_of(*nll_and_tokens(model, batches, fused, device))
