"""Forgetting measured against the base model itself, with no outside data (issue 19, section 2).

Two measures, both logged in the LM recipe's evaluations and written to summary.json:

- `general_kl_to_base`: the mean per-token KL(base || adapted) on the general validation text, over the same tokens
  its perplexity scores. For LoRA and prompt methods the base is the same model with its adapter disabled (PEFT's
  `disable_adapter()`): exact, full softmax, and no second copy in memory. Full fine-tuning changes the weights
  themselves, so the base's distribution is computed once before training and only its top-k log-probabilities per
  token are kept; the measure is then KL between the two distributions coarsened to (top k, the rest), a LOWER
  BOUND on the full KL, logged as `general_kl_to_base_top<k>_lower_bound` (see losses/distill.py, TopKTeacher).
- `base_samples` perplexity: the adapted model's perplexity on text the base model wrote itself from generic prompts
  (seeded, drawn once, cached beside the converted model by model and settings). A model that keeps its general
  ability keeps assigning its own former text a low perplexity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from finetune.errors import UserError
from finetune.io import atomic_write_text
from finetune.losses.distill import CHUNK_BYTES, DenseTeacher, TopKTeacher, divergence_from_hidden, teacher_rows
from finetune.losses.lm import count_trained_tokens
from finetune.metrics.perplexity import batch_labels, logits_for
from finetune.models.causal_lm import LMModelConfig, derived_cache_path, lm_head_bypassed

# Openings of no particular domain (the base model continues each in its own words).
GENERIC_PROMPTS = (
    "Once upon a time",
    "The most important thing to know about",
    "Here is a simple recipe for",
    "Yesterday I went to the",
    "The history of the city",
    "Scientists have recently discovered",
    "Dear friend, I am writing to tell you",
    "The best way to learn a new language is",
)
# Other openings for the guard's own base samples (guard.source=base_samples): text the guard trains on shares
# neither prompts nor seed with the samples that measure forgetting.
GUARD_PROMPTS = (
    "In a small village by the sea",
    "A good friend is someone who",
    "The first thing you notice about the",
    "When the train finally arrived",
    "Many people believe that",
    "The garden was full of",
    "On the weekend we like to",
    "There are three reasons why",
)


@dataclass
class ForgettingConfig:
    enabled: bool = True  # measure KL to the base and base-sample perplexity (needs data.general_validation_file)
    top_k: int = 64  # method=full: base log-probs kept per general token (KL reported as a top-k lower bound)
    samples: int = 16  # texts the base model writes once from generic prompts (0: no base-sample perplexity)
    sample_tokens: int = 96  # new tokens per base sample
    temperature: float = 1.0  # sampling temperature of the base samples
    seed: int = 0  # seed of the base samples


def check_forgetting_config(cfg: ForgettingConfig, section: str = "forgetting") -> None:
    """Refuse sizes that cannot work, before any model loads."""
    for key, low in (("top_k", 1), ("samples", 0), ("sample_tokens", 1)):
        if getattr(cfg, key) < low:
            raise UserError(f"{section}.{key}={getattr(cfg, key)} must be >= {low}; fix it in the config")
    if not cfg.temperature > 0:
        raise UserError(f"{section}.temperature={cfg.temperature} must be > 0; e.g. 1.0")


# ------------------------------------------------------------------------- the model's rows and its base


def hidden_and_head(model, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(final hidden states, output weight) of `model` on `batch`, or (logits, None) when the head cannot be
    bypassed (a LoRA-wrapped lm_head): what `divergence_from_hidden` and `fused_linear_cross_entropy` take."""
    with lm_head_bypassed(model) as head_weight:
        out = logits_for(model, batch)
    return out, head_weight


def peft_base(model) -> contextlib.AbstractContextManager | None:
    """A context in which `model` (a PEFT model, possibly wrapped by accelerate/DDP) computes as its base model:
    PEFT's `disable_adapter()`, so no second copy is held. None when `model` is not a PEFT model."""
    inner = getattr(model, "module", model)
    disable = getattr(inner, "disable_adapter", None)
    return disable() if callable(disable) and hasattr(inner, "peft_config") else None


def base_teacher(model, batch, labels) -> DenseTeacher:
    """The base model's distribution at `batch`'s scored rows: the adapter disabled, no gradient."""
    ctx = peft_base(model)
    if ctx is None:
        raise UserError("the live base reference needs a PEFT (LoRA / prompt) model; full fine-tuning precomputes it")
    with ctx, torch.no_grad():
        out, weight = hidden_and_head(model, batch)
    return DenseTeacher(teacher_rows(out.detach(), labels), weight)


def top_k_reference(model, batches, k: int) -> list[TopKTeacher]:
    """Per batch, the top-k log-probabilities of `model` (the untouched base) at its scored rows, computed now and
    kept for a model whose own weights will train (full fine-tuning). Memory: rows x k x (4 + 4) bytes."""
    refs = []
    with torch.no_grad():
        for batch in batches:
            labels = batch_labels(batch)
            out, weight = hidden_and_head(model, batch)
            rows = teacher_rows(out, labels)
            vocab = rows.shape[-1] if weight is None else weight.shape[0]
            chunk = max(1, CHUNK_BYTES // (4 * vocab))  # the (rows x vocab) logits a chunk at a time, as the loss
            parts = [_top_k(rows[s : s + chunk], weight, k) for s in range(0, rows.shape[0], chunk)]
            refs.append(TopKTeacher(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])))
    return refs


def _top_k(rows: torch.Tensor, weight: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    logits = rows if weight is None else rows.to(weight.dtype) @ weight.t()
    top, idx = torch.log_softmax(logits.float(), dim=-1).topk(min(k, logits.shape[-1]), dim=-1)
    return top, idx.to(torch.int32)


def kl_key(top_k: int | None) -> str:
    """The summary/eval key of the KL measure: named as a bound when it is one."""
    return "general_kl_to_base" if top_k is None else f"general_kl_to_base_top{top_k}_lower_bound"


def kl_to_base(model, batches, reference: list[TopKTeacher] | None = None) -> float:
    """Mean per-token KL(base || model) over the scored tokens of `batches` (move them to the model's device first).

    reference None: the base is `model` with its PEFT adapter disabled (exact). Otherwise the precomputed top-k base
    distribution of each batch, in the same order (a lower bound, see the module doc)."""
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                labels = batch_labels(batch)
                teacher = base_teacher(model, batch, labels) if reference is None else reference[i]
                out, weight = hidden_and_head(model, batch)
                total += float(divergence_from_hidden(out, weight, labels, teacher, "forward"))
                tokens += count_trained_tokens(labels)
    finally:
        model.train(was_training)
    return total / max(tokens, 1)


# ------------------------------------------------------------------------- text the base model writes itself


def samples_cache_path(model_cfg: LMModelConfig, cfg: ForgettingConfig, prompts=GENERIC_PROMPTS) -> Path:
    """The JSONL cache of the base samples, keyed by the model (derived_cache_path) and every sampling setting."""
    settings = json.dumps([cfg.samples, cfg.sample_tokens, cfg.temperature, cfg.seed, list(prompts)])
    return derived_cache_path(model_cfg, f"base_samples-{hashlib.sha256(settings.encode()).hexdigest()[:12]}.jsonl")


def sample_base_texts(model, tokenizer, cfg: ForgettingConfig, prompts=GENERIC_PROMPTS) -> list[str]:
    """`cfg.samples` texts, prompt included, sampled from `model` (call it before any adapter is applied): the
    prompts in turn, `cfg.sample_tokens` new tokens each, seeded, without touching the global RNG."""
    texts = []
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(cfg.seed)
        for i in range(cfg.samples):
            ids = tokenizer(prompts[i % len(prompts)], return_tensors="pt").input_ids.to(device)
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=cfg.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=cfg.sample_tokens,
                min_new_tokens=cfg.sample_tokens // 2,  # an early EOS would leave a near-empty document
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
            )
            texts.append(tokenizer.decode(out[0], skip_special_tokens=True).strip())
    return [t for t in texts if t]


def base_samples_file(
    model, tokenizer, model_cfg: LMModelConfig, cfg: ForgettingConfig, prompts=GENERIC_PROMPTS
) -> tuple[Path, bool]:
    """(path of the cached {"text"} JSONL of base samples, whether it was reused); drawn and written atomically once."""
    path = samples_cache_path(model_cfg, cfg, prompts)
    if path.is_file():
        return path, True
    texts = sample_base_texts(model, tokenizer, cfg, prompts)
    if not texts:
        raise UserError("the base model wrote only empty samples; raise forgetting.sample_tokens")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path, False


def text_split(data_cfg, tokenizer, path: Path):
    """A {"text"} JSONL file tokenized as the recipe tokenizes its data (same packing and length)."""
    from finetune.data.text import build_text_datasets

    cfg = dataclasses.replace(
        data_cfg,
        train_file=str(path),
        format="text",
        validation_file=None,
        test_file=None,
        general_validation_file=None,
        validation_fraction=0.0,
    )
    return build_text_datasets(cfg, tokenizer)["train"]
