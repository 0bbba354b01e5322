"""The LM recipe's optional objectives beside the plain causal-LM loss: a forgetting guard and distillation.

All return a SUM that the loop divides by the window's `count_items` (finetune/train/loop.py), as summed_nll does.

Forgetting guard (`guard:`; issue 19, section 3). `guard.fraction` of each micro-batch's rows (rounded, at least one,
taking the place of domain rows, so the step's size is unchanged) are general text: `guard.train_file`, or text the
base model wrote itself (drawn apart from, and never equal to, the base samples that measure forgetting).
- replay: the general rows are ordinary trained rows. Window loss = (sum of token NLL over the domain and general
  tokens) / (number of those tokens): the plain mean CE over every trained token of the window.
- kl: the general rows train no CE; they add beta * KL(base || adapted) over their tokens. A micro-batch returns
  CE_sum(domain tokens) + beta * KL_sum(general tokens) * n_domain / n_general, and the loop divides by the window's
  domain tokens N. Window loss = mean CE over the domain tokens + beta * sum_b (n_domain_b / N) * meanKL_b: the mean
  KL over the general tokens, each micro-batch's mean weighted by its share of the domain tokens (equal shares with
  packed blocks or grad_accum=1, where it is exactly mean CE + beta * mean KL). The base is the model with its PEFT
  adapter disabled under no_grad (LoRA, prompt), or for full fine-tuning the base's top-k log-probs of every general
  row, computed once before training (the penalty is then the coarsened KL, a lower bound: losses/distill.py).

Distillation (`distill:`; issue 15): loss = (1 - alpha) * CE_sum + alpha * divergence_sum(teacher || student) over
the same trained tokens, divided by their count: per token (1 - alpha) * CE + alpha * divergence. The teacher is a
local causal LM with the student's vocabulary, frozen, in eval mode, under no_grad, stored in the compute dtype.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from finetune.errors import UserError
from finetune.losses.distill import DenseTeacher, DivergenceKind, TopKTeacher, divergence_from_hidden, teacher_rows
from finetune.losses.lm import causal_lm_loss, count_trained_tokens, fused_linear_cross_entropy
from finetune.metrics.forgetting import (
    GUARD_PROMPTS,
    ForgettingConfig,
    base_samples_file,
    base_teacher,
    hidden_and_head,
    text_split,
    top_k_reference,
)
from finetune.metrics.perplexity import summed_nll
from finetune.models.causal_lm import LMModelConfig, load_causal_lm, resolve_model_source
from finetune.train.batches import BatchesFn, shuffled_batches

GENERAL_INDEX = "general_index"  # item key marking a general row (its index in the general split)
GUARD_SEED_OFFSET = 1  # the guard's base samples use forgetting.seed + this: never the measured samples


@dataclass
class GuardConfig:
    method: Literal["none", "replay", "kl"] = (
        "none"  # forgetting guard: none, replay general text, or a KL-to-base penalty
    )
    source: Literal["file", "base_samples"] = "file"  # general text: guard.train_file, or the base model's own samples
    train_file: str | None = None  # source=file: general-domain {"text"} JSONL (e.g. data/general/train.jsonl)
    fraction: float = 0.25  # share of each micro-batch's rows that are general text (rounded, at least one row)
    beta: float = 0.1  # method=kl: weight of the mean KL(base || adapted) on the general rows
    samples: int = 64  # source=base_samples: texts the base model writes for the guard (seeded apart from the measure)
    top_k: int = 64  # method=kl with method=full: base log-probs kept per general token (penalty is a lower bound)


@dataclass
class DistillConfig:
    teacher: str | None = None  # local causal LM (dir, .gguf) with the student's tokenizer; None: no distillation
    alpha: float = 0.5  # loss = (1 - alpha) * CE + alpha * divergence(teacher || student), per trained token
    divergence: DivergenceKind = "forward"  # forward KL(teacher||student), reverse KL, or symmetric (their mean)
    temperature: float = 1.0  # both distributions softened by T; the divergence is multiplied by T**2


def general_rows(cfg: GuardConfig, batch_size: int) -> int:
    """General rows per micro-batch: guard.fraction of train.batch_size, rounded, at least one."""
    return max(1, round(cfg.fraction * batch_size))


def check_objectives(guard: GuardConfig, distill: DistillConfig, batch_size: int) -> None:
    """Refuse settings that cannot work, before any model loads."""
    if guard.method != "none":
        if not 0 < guard.fraction < 1:
            raise UserError(f"guard.fraction={guard.fraction} must be in (0, 1); e.g. 0.25")
        if general_rows(guard, batch_size) >= batch_size:
            raise UserError(
                f"guard.fraction={guard.fraction} of train.batch_size={batch_size} leaves no domain row; "
                "raise train.batch_size or lower guard.fraction"
            )
        if guard.source == "file" and not (guard.train_file and Path(guard.train_file).is_file()):
            raise UserError(
                f'guard.source=file needs guard.train_file, a general {{"text"}} JSONL file (got {guard.train_file!r}); '
                "e.g. guard.train_file=data/general/train.jsonl, or guard.source=base_samples"
            )
        if guard.method == "kl" and not guard.beta > 0:
            raise UserError(f"guard.beta={guard.beta} must be > 0 for guard.method=kl; e.g. 0.1")
        if guard.samples < 1 or guard.top_k < 1:
            raise UserError("guard.samples and guard.top_k must be >= 1")
    if distill.teacher is None:
        return
    if guard.method != "none":
        raise UserError("distill.teacher and guard.method are both set; use one objective at a time")
    if not 0 <= distill.alpha <= 1:
        raise UserError(f"distill.alpha={distill.alpha} must be in [0, 1]; e.g. 0.5")
    if not distill.temperature > 0:
        raise UserError(f"distill.temperature={distill.temperature} must be > 0; e.g. 1.0 or 2.0")
    resolve_model_source(teacher_config(distill, LMModelConfig()))  # a missing teacher path fails now


def teacher_config(cfg: DistillConfig, student: LMModelConfig) -> LMModelConfig:
    """How the teacher loads: the project's loader, with the student's cache and attention kernel."""
    return LMModelConfig(
        name_or_path=str(cfg.teacher), cache_dir=student.cache_dir, attn_implementation=student.attn_implementation
    )


def load_teacher(cfg: DistillConfig, student_cfg: LMModelConfig, student, tokenizer, dtype: torch.dtype, device):
    """The teacher loaded, its vocabulary checked against the student's, frozen in the compute dtype."""
    teacher, teacher_tokenizer = load_causal_lm(teacher_config(cfg, student_cfg))
    check_same_vocabulary(teacher, teacher_tokenizer, student, tokenizer, str(cfg.teacher))
    return freeze_teacher(teacher, dtype, device)


def check_same_vocabulary(teacher, teacher_tokenizer, student, tokenizer, where: str) -> None:
    """A teacher must score the student's tokens: the same vocabulary and the same output width, or one line."""
    t_out, s_out = teacher.get_output_embeddings().weight.shape[0], student.get_output_embeddings().weight.shape[0]
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab() or t_out != s_out:
        raise UserError(
            f"distill.teacher {where} has a different vocabulary ({len(teacher_tokenizer)} tokens, {t_out} outputs) "
            f"from the student's ({len(tokenizer)} tokens, {s_out} outputs); use a teacher with the student's tokenizer"
        )


def freeze_teacher(teacher, dtype: torch.dtype, device):
    """The teacher frozen, in eval mode and stored in the compute dtype: it never trains and never keeps graphs."""
    teacher.requires_grad_(False)
    return teacher.to(device=device, dtype=dtype).eval()


# ------------------------------------------------------------------------- general rows in every batch


class MixedSplit(torch.utils.data.Dataset):
    """Domain items 0..n-1, then general items; a general item carries its index under GENERAL_INDEX."""

    def __init__(self, domain, general):
        self.domain, self.general = domain, general

    def __len__(self) -> int:
        return len(self.domain) + len(self.general)

    def __getitem__(self, i: int):
        if i < len(self.domain):
            return self.domain[i]
        j = i - len(self.domain)
        return {**self.general[j], GENERAL_INDEX: torch.tensor(j)}


def mixed_batches(n_domain: int, n_general: int, batch_size: int, n_rows: int, seed: int) -> BatchesFn:
    """Epoch -> batches of (batch_size - n_rows) domain indices (the usual seeded order) and n_rows general ones
    (MixedSplit indices), drawn from a seeded permutation of the general split: a pure function of (seed, epoch),
    so a resumed run sees the same rows."""
    domain = shuffled_batches(n_domain, batch_size - n_rows, seed)

    def batches(epoch: int) -> list[list[int]]:
        dom = domain(epoch)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7919)
        need = len(dom) * n_rows
        laps = math.ceil(need / max(n_general, 1))
        draws = torch.cat([torch.randperm(n_general, generator=g) for _ in range(laps)])[:need] + n_domain
        return [d + draws[i * n_rows : (i + 1) * n_rows].tolist() for i, d in enumerate(dom)]

    return batches


def mixed_collate(collate):
    """Wrap the recipe's collate: general items are collated as ordinary rows; the batch says which rows they are
    (`general_rows`, bool (B,)) and their general-split indices in row order (GENERAL_INDEX)."""

    def collate_mixed(items):
        marks = [GENERAL_INDEX in it for it in items]
        batch = collate([{k: v for k, v in it.items() if k != GENERAL_INDEX} for it in items])
        batch["general_rows"] = torch.tensor(marks)
        batch[GENERAL_INDEX] = torch.stack([it[GENERAL_INDEX] for it in items if GENERAL_INDEX in it])
        return batch

    return collate_mixed


def guard_general_split(model, tokenizer, guard: GuardConfig, forgetting: ForgettingConfig, data_cfg, model_cfg):
    """The guard's general text, tokenized as the training data: guard.train_file, or the base model's own samples
    (call before any adapter is applied), prompted and seeded apart from the samples that measure forgetting."""
    if guard.source == "file":
        return text_split(data_cfg, tokenizer, Path(str(guard.train_file)))
    own = dataclasses.replace(forgetting, samples=guard.samples, seed=forgetting.seed + GUARD_SEED_OFFSET)
    return text_split(data_cfg, tokenizer, base_samples_file(model, tokenizer, model_cfg, own, GUARD_PROMPTS)[0])


def guard_training_data(train_split, general, collate, guard: GuardConfig, batch_size: int, seed: int):
    """(dataset, batches_fn, collate_fn, count_items) for the loop: general rows in every micro-batch; the KL guard
    normalises by the domain tokens only, replay by every trained token (see the module doc)."""
    n_rows = general_rows(guard, batch_size)
    batches = mixed_batches(len(train_split), len(general), batch_size, n_rows, seed)
    count = domain_tokens if guard.method == "kl" else trained_tokens
    return MixedSplit(train_split, general), batches, mixed_collate(collate), count


def rows_of(batch: dict, rows: torch.Tensor) -> dict:
    """The sub-batch of the model inputs at `rows` (a 4D block mask is cut along its batch axis too)."""
    keys = ("input_ids", "attention_mask", "position_ids", "labels")
    return {k: batch[k][rows] for k in keys if k in batch}


def trained_tokens(batch: dict) -> int:
    """Trained tokens of every row (count_items of plain training and of replay)."""
    return count_trained_tokens(batch["labels"])


def domain_tokens(batch: dict) -> int:
    """Trained tokens of the domain rows only: the KL guard's normaliser (count_items)."""
    return count_trained_tokens(batch["labels"][~batch["general_rows"]])


def general_top_k(model, general, collate, k: int, batch_size: int) -> list[TopKTeacher]:
    """Full fine-tuning's KL guard reference: the untouched model's top-k log-probs at each general item's scored
    rows, one TopKTeacher per item (computed once, before training)."""
    refs = []
    for start in range(0, len(general), batch_size):
        items = [general[i] for i in range(start, min(start + batch_size, len(general)))]
        (batched,) = top_k_reference(model, [collate(items)], k)
        counts = [count_trained_tokens(it["labels"][None]) for it in items]
        refs += [TopKTeacher(lp, ix) for lp, ix in zip(batched.logprobs.split(counts), batched.indices.split(counts))]
    return refs


def kl_guard_loss(
    model, batch: dict, beta: float, reference: list[TopKTeacher] | None, logs: dict | None = None
) -> torch.Tensor:
    """CE_sum over the domain rows + beta * KL_sum(base || model) over the general rows * n_domain / n_general
    (see the module doc for the window's normalisation). One forward over all rows; the base sees the general rows
    only (adapter disabled, no_grad) unless `reference` holds the precomputed top-k of each general item."""
    general = batch["general_rows"]
    labels = batch["labels"]
    out, weight = hidden_and_head(model, batch)
    domain_labels = labels.masked_fill(general[:, None], -100)
    ce = _ce_sum(out, weight, domain_labels)
    g_rows = general.nonzero().squeeze(1)
    g_labels = labels[g_rows]
    if reference is None:
        teacher: DenseTeacher | TopKTeacher = base_teacher(model, rows_of(batch, g_rows), g_labels)
    else:
        parts = [reference[int(i)] for i in batch[GENERAL_INDEX]]
        teacher = TopKTeacher(torch.cat([p.logprobs for p in parts]), torch.cat([p.indices for p in parts]))
        teacher = TopKTeacher(teacher.logprobs.to(out.device), teacher.indices.to(out.device))
    kl = divergence_from_hidden(out[g_rows], weight, g_labels, teacher, "forward")
    n_domain, n_general = count_trained_tokens(domain_labels), count_trained_tokens(g_labels)
    if logs is not None:  # the micro-batch's means, for the train log (the loop averages them over the window)
        logs.update(domain_ce=float(ce.detach()) / max(n_domain, 1), guard_kl=float(kl.detach()) / max(n_general, 1))
    return ce + beta * kl * (n_domain / max(n_general, 1))


# ------------------------------------------------------------------------- distillation


def _ce_sum(out: torch.Tensor, weight: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    if weight is None:
        return causal_lm_loss(out, labels, reduction="sum")
    return fused_linear_cross_entropy(out, weight, labels, reduction="sum")


def distill_loss(model, teacher, batch: dict, cfg: DistillConfig, logs: dict | None = None) -> torch.Tensor:
    """(1 - alpha) * CE_sum + alpha * divergence_sum(teacher || model) over the batch's trained tokens."""
    labels = batch["labels"]
    if cfg.alpha == 0:
        return summed_nll(model, batch)
    with torch.no_grad():
        t_out, t_weight = hidden_and_head(teacher, batch)
    out, weight = hidden_and_head(model, batch)
    div = divergence_from_hidden(
        out, weight, labels, DenseTeacher(teacher_rows(t_out, labels), t_weight), cfg.divergence, cfg.temperature
    )
    ce = _ce_sum(out, weight, labels)
    if logs is not None:  # per-token means of the two terms, for the train log
        n = max(count_trained_tokens(labels), 1)
        logs.update(ce=float(ce.detach()) / n, divergence=float(div.detach()) / n)
    return (1 - cfg.alpha) * ce + cfg.alpha * div
