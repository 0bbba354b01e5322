"""Textual inversion (Gal et al. 2022): learn new token embeddings for a concept; nothing else changes.

One method, one place: the config, `add_placeholder_tokens` (new tokens `<tok>`, `<tok>_1`, ... as diffusers'
loader names multi-vector embeddings, initialised from an existing word), which parameters train (only the
text encoder's input-embedding matrix; `RowRestorer`, run after every optimizer step, puts back every row but
the new ones, undoing weight decay and any optimizer drift), the prompt templates, and what is saved
(`learned_embeddings`: {placeholder: (num_vectors, dim)}, diffusers' format, which the stock
`pipe.load_textual_inversion` reads). The restore-after-step idea is that of diffusers' example script; the
code is written here because diffusers has no library function for it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

import torch

from finetune.errors import UserError

OBJECT_TEMPLATES = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a bright photo of the {}",
    "a close-up photo of a {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a rendition of the {}",
    "a photo of the nice {}",
    "a photo of a small {}",
    "a photo of a large {}",
]
STYLE_TEMPLATES = [
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a bright painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a small painting in the style of {}",
]


@dataclass
class TextualInversionConfig:
    placeholder_token: str = "<concept>"  # the new word prompts use for the concept; must not exist in the tokenizer
    initializer_token: str = "object"  # an existing single-token word whose embedding starts every new vector
    num_vectors: int = 1  # embedding vectors learned for the concept (more = more capacity)
    template: Literal["object", "style"] = (
        "object"  # prompt templates: "a photo of a {}" or "a painting in the style of {}"
    )
    templates: list[str] = field(
        default_factory=list
    )  # your own prompt templates, each with one "{}" (replace `template`'s set)


def placeholder_tokens(cfg: TextualInversionConfig) -> list[str]:
    """The tokens that get embeddings: `<tok>`, `<tok>_1`, ... (the names diffusers' loader gives them)."""
    return [cfg.placeholder_token] + [f"{cfg.placeholder_token}_{i}" for i in range(1, cfg.num_vectors)]


def placeholder_text(cfg: TextualInversionConfig) -> str:
    """What stands for the concept inside a training prompt (all its vectors in order)."""
    return " ".join(placeholder_tokens(cfg))


def check_placeholder(tokenizer, cfg: TextualInversionConfig, which: str = "the tokenizer") -> None:
    """Fail before training when the placeholder or initializer cannot work with this tokenizer (`which` names it:
    SDXL has two, and the word must be new in both)."""
    token = cfg.placeholder_token
    if cfg.num_vectors < 1:
        raise UserError(f"textual_inversion.num_vectors must be >= 1, got {cfg.num_vectors}")
    if not token or any(c.isspace() for c in token):
        raise UserError(
            f"textual_inversion.placeholder_token {token!r} must be one word without spaces, e.g. '<my-cat>'"
        )
    vocab = tokenizer.get_vocab()
    existing = [t for t in placeholder_tokens(cfg) if t in vocab or f"{t}</w>" in vocab]
    if existing:
        raise UserError(
            f"textual_inversion.placeholder_token {existing[0]!r} already exists in {which}; "
            "choose a new word such as '<my-concept>'"
        )
    bad = [t for t in cfg.templates if t.count("{}") != 1]
    if bad:
        raise UserError(
            f"textual_inversion.templates {bad[0]!r} must contain exactly one '{{}}' where the concept goes, "
            "e.g. 'a drawing of a {}'"
        )
    if len(_word_ids(tokenizer, cfg.initializer_token)) != 1:
        raise UserError(
            f"textual_inversion.initializer_token {cfg.initializer_token!r} is not a single token of {which}; "
            "choose one common word (e.g. 'dog', 'toy', 'painting')"
        )


def add_placeholder_tokens(tokenizer, text_encoder, cfg: TextualInversionConfig) -> list[int]:
    """Add the placeholder tokens, grow the embedding matrix and copy the initializer's row into the new rows."""
    check_placeholder(tokenizer, cfg)
    tokens = placeholder_tokens(cfg)
    if tokenizer.add_tokens(tokens) != len(tokens):
        raise UserError(
            f"textual_inversion.placeholder_token {cfg.placeholder_token!r} already exists in the tokenizer; "
            "choose a new word such as '<my-concept>'"
        )
    ids = tokenizer.convert_tokens_to_ids(tokens)
    init_id = _word_ids(tokenizer, cfg.initializer_token)[0]
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows are set below
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = weight[init_id].clone()
    return ids


def train_only_embeddings(text_encoder) -> torch.nn.Parameter:
    """Freeze the text encoder except its input-embedding matrix (the rows to keep are restored after each step)."""
    text_encoder.requires_grad_(False)
    weight = text_encoder.get_input_embeddings().weight
    weight.requires_grad_(True)
    return weight


class RowRestorer:
    """After each optimizer step, copy back every embedding row except the trainable ones.

    A full-matrix copy is kept because AdamW's weight decay moves every row of a trained tensor, and
    gradients of other rows are not exactly zero under mixed precision either. Use as
    `Hooks(after_optimizer_step=restorer)`.
    """

    def __init__(self, weight: torch.nn.Parameter, trainable_ids: list[int]):
        self.weight = weight
        self.original = weight.detach().clone()
        self.keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        self.keep[trainable_ids] = False

    def __call__(self, step: int = 0) -> None:
        with torch.no_grad():
            self.weight[self.keep] = self.original[self.keep].to(self.weight.dtype)


def learned_embeddings(text_encoder, ids: list[int]) -> torch.Tensor:
    """The learned vectors, (num_vectors, dim), in fp32."""
    return text_encoder.get_input_embeddings().weight[ids].detach().float().cpu().clone()


def templates_of(cfg: TextualInversionConfig) -> list[str]:
    """The prompt templates training draws from: `templates` when given, else the `template` set."""
    return list(cfg.templates) or (OBJECT_TEMPLATES if cfg.template == "object" else STYLE_TEMPLATES)


def template_prompt(cfg: TextualInversionConfig, rng: random.Random | None = None) -> str:
    """A random training prompt for the concept (Python's `random`, whose state accelerate checkpoints)."""
    return (rng or random).choice(templates_of(cfg)).format(placeholder_text(cfg))


def _word_ids(tokenizer, word: str) -> list[int]:
    return tokenizer(word, add_special_tokens=False).input_ids
