"""Soft-prompt methods on a causal LM through PEFT: prompt tuning, p-tuning and prefix tuning.

- prompt tuning (Lester et al.): `num_virtual_tokens` trainable input embeddings prepended to every input,
  optionally initialised from the embeddings of a text such as a task instruction;
- p-tuning (Liu et al.): the virtual tokens come out of a small MLP encoder (`encoder_hidden_size`);
- prefix tuning (Li & Liang): trainable key/value prefixes in every attention layer, optionally produced
  by a projection MLP (`prefix_projection`).

The base model stays frozen. Save with `PeftModel.save_pretrained(dir)`; the stock
`peft.PeftModel.from_pretrained(base, dir)` loads it. These methods want far larger learning rates than
LoRA: see `recommended_lr`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from finetune.errors import UserError

# Starting learning rates per method, for AdamW with a short warmup. Sweep around them for real work.
# - LoRA/DoRA 2e-4: the usual value in PEFT's and transformers' LoRA examples.
# - prompt tuning 3e-2: soft prompts need large steps (PEFT's prompt-based-methods guide uses 3e-2; the
#   useful range is about 1e-2..3e-2; PEFT's method comparison finds 1e-4..1e-3 too small for them).
# - p-tuning / prefix tuning 1e-2: their reparameterising MLP makes them less tolerant of 3e-2.
# - full fine-tuning 2e-5: all weights move, so small steps (with discriminative lr lower in the stack).
RECOMMENDED_LR = {
    "lora": 2e-4,
    "dora": 2e-4,
    "prompt_tuning": 3e-2,
    "p_tuning": 1e-2,
    "prefix_tuning": 1e-2,
    "full": 2e-5,
}

PromptKind = Literal["prompt_tuning", "p_tuning", "prefix_tuning"]


@dataclass
class PromptMethodConfig:
    kind: PromptKind = "prompt_tuning"  # prompt_tuning (lr ~3e-2), p_tuning (lr ~1e-2) or prefix_tuning (lr ~1e-2)
    num_virtual_tokens: int = 20  # length of the learned soft prompt / prefix, in tokens
    init: Literal["text", "random"] = "text"  # prompt_tuning only: start from the embeddings of init_text, or random
    init_text: str = "Read the text and answer the question about it accurately and concisely."  # text whose token embeddings initialise the prompt (repeated or cut to fit)
    encoder_hidden_size: int = 128  # hidden width of p-tuning's prompt encoder MLP and of prefix tuning's projection
    prefix_projection: bool = (
        False  # prefix_tuning only: produce the prefixes through an MLP (more parameters, often steadier)
    )


def recommended_lr(method: str) -> float:
    """A starting learning rate for `method` (lora, dora, prompt_tuning, p_tuning, prefix_tuning, full)."""
    if method not in RECOMMENDED_LR:
        raise UserError(f"no recommended lr for method {method!r}; known methods: {', '.join(RECOMMENDED_LR)}")
    return RECOMMENDED_LR[method]


def apply_prompt_method(model, tokenizer, cfg: PromptMethodConfig):
    """Wrap `model` in a PeftModel whose only trainable parameters are the soft prompt (and its encoder)."""
    from peft import get_peft_model

    _validate(cfg)
    return get_peft_model(model, build_peft_config(tokenizer, cfg))


def build_peft_config(tokenizer, cfg: PromptMethodConfig):
    """The PEFT config object (PromptTuningConfig, PromptEncoderConfig or PrefixTuningConfig) for `cfg`."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig

    common = {"task_type": "CAUSAL_LM", "num_virtual_tokens": cfg.num_virtual_tokens}
    if cfg.kind == "p_tuning":
        return PromptEncoderConfig(encoder_hidden_size=cfg.encoder_hidden_size, **common)
    if cfg.kind == "prefix_tuning":
        return PrefixTuningConfig(
            encoder_hidden_size=cfg.encoder_hidden_size, prefix_projection=cfg.prefix_projection, **common
        )
    if cfg.init == "random":
        return PromptTuningConfig(prompt_tuning_init="RANDOM", **common)
    return PromptTuningConfig(
        prompt_tuning_init="TEXT",
        prompt_tuning_init_text=cfg.init_text,
        tokenizer_name_or_path=_tokenizer_location(tokenizer),
        **common,
    )


def _tokenizer_location(tokenizer) -> str:
    """Where PEFT can reload the tokenizer from: PEFT's TEXT init tokenizes init_text itself, by name or path."""
    location = getattr(tokenizer, "name_or_path", "") or ""
    if not location or (Path(location).expanduser().is_absolute() and not Path(location).expanduser().is_dir()):
        raise UserError(
            "prompt_tuning init='text' needs a tokenizer loaded from a directory or hub id; "
            "save it with tokenizer.save_pretrained(dir) and reload it, or set init='random'"
        )
    return location


def _validate(cfg: PromptMethodConfig) -> None:
    if cfg.kind not in ("prompt_tuning", "p_tuning", "prefix_tuning"):
        raise UserError(f"prompt method kind {cfg.kind!r} is not one of prompt_tuning, p_tuning, prefix_tuning")
    if cfg.num_virtual_tokens < 1:
        raise UserError(f"num_virtual_tokens must be >= 1, got {cfg.num_virtual_tokens}; 8..100 is typical")
    if cfg.init not in ("text", "random"):
        raise UserError(f"prompt init {cfg.init!r} is not one of text, random")
    if cfg.kind == "prompt_tuning" and cfg.init == "text" and not cfg.init_text.strip():
        raise UserError("prompt init='text' needs a non-empty init_text; write a task instruction or set init='random'")
    if cfg.encoder_hidden_size < 1:
        raise UserError(f"encoder_hidden_size must be >= 1, got {cfg.encoder_hidden_size}")
