"""The SD recipe's methods, one table: name -> its config section, its checks, what trains, how it is saved.

recipes/train_sd.py dispatches through `SD_METHODS` instead of `if cfg.method == ...` chains. A new method is its
module (config dataclass + how it selects and saves its parameters, e.g. finetune/methods/sd_lora.py), one
`SDMethod` entry here with its name in `SDMethodName`, and its config section in `SDRecipeConfig`;
tests/methods/test_registry.py fails until all of them agree. The diffusion step stays in the recipe, where its
maths is visible. A module apart from registry.py (the LM table) because it imports diffusers, which the LM path
never loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from finetune.errors import UserError
from finetune.export.sd import (
    EMBEDDING_FILE,
    PIPELINE_DIR,
    save_sd_lora,
    save_sd_pipeline,
    save_textual_inversion,
    save_textual_inversion_xl,
)
from finetune.methods.hypernetwork import HypernetworkConfig, add_hypernetwork, save_hypernetwork, validate_hypernetwork
from finetune.methods.sd_distill import DistillConfig, UNetDistillation, check_teacher_dir, validate_distill
from finetune.methods.sd_lora import SDLoraConfig, add_lora, lora_layers, validate_sd_lora
from finetune.methods.textual_inversion import (
    TextualInversionConfig,
    add_placeholder_tokens,
    learned_embeddings,
    placeholder_text,
    placeholder_tokens,
    template_prompt,
    templates_of,
    train_only_embeddings,
)
from finetune.models.sd import SDParts, build_pipeline, load_sd_components

SDMethodName = Literal[
    "lora", "full", "textual_inversion", "distill_unet", "hypernetwork"
]  # the recipe's `method` key: one name per SD_METHODS entry

Params = list[torch.nn.Parameter]


@dataclass(frozen=True)
class Concept:
    """A new word in the tokenizer that every prompt is written around; only its embedding rows may train."""

    token_ids: list[int]  # the new tokens' ids: their rows of the input-embedding matrix are what trains
    instance_prompt: str  # the prompt of every instance image (validation and caching use it)
    sample_prompt: str  # the same with the bare token: pipelines expand a multi-vector token themselves
    training_prompt: Callable[[str], str]  # an example's caption -> the prompt it trains with


def _count_all(cfg, unet_params: Params, te_params: Params) -> int:
    return sum(p.numel() for p in unet_params + te_params)


@dataclass(frozen=True)
class SDMethod:
    """One SD method. `cfg` below is always the whole recipe config; `trainable` unfreezes the method's part of a
    model the recipe froze whole and returns (UNet parameters, text-encoder parameters) that train. SDXL: the
    recipe passes its second text encoder as `trainable(..., text_encoder_2=...)` and calls `concept` once per
    (tokenizer, text encoder) pair; `xl=False` marks a method not built for SDXL."""

    section: str | None  # the recipe config's section holding this method's settings (cfg.<section>); None: none
    config: type | None  # that section's dataclass
    trainable: Callable[..., tuple[Params, Params]]  # (unet, text_encoder, cfg[, text_encoder_2]) -> (unet, te) params
    save: Callable[[Path, SDParts, Any, torch.dtype], list[Path]]  # (dir, parts, cfg, weight dtype) -> files written
    trained_count: Callable[[Any, Params, Params], int] = _count_all  # the summary's trained_parameters
    check: Callable[[Any], None] = lambda cfg: None  # refusals on the whole recipe config, before any model loads
    prior_preservation: bool = True  # DreamBooth's class images can keep the base model's idea of the class
    concept: Callable[[Any, Any, Any], Concept] | None = None  # (tokenizer, text_encoder, cfg) -> the word it learns
    text_encoder_fp32: bool = False  # the text encoder's frozen weights stay fp32 under mixed precision
    # (loaded unet, text_encoder, cfg) -> a UNetDistillation: the loaded UNet becomes its frozen teacher and its
    # `.student` is the UNet that trains (and saves); its `.loss` adds the distillation terms to the step's loss
    distillation: Callable[[Any, Any, Any], UNetDistillation] | None = None
    xl: bool = True  # it trains SDXL models too (both text encoders, pooled text and time ids)


def training_encoders(cfg, text_encoder, text_encoder_2=None) -> dict[str, Any]:
    """The text encoders that train, by component name: none unless text_encoder.train; SDXL's by
    text_encoder.xl_encoders (1: text_encoder, 2: text_encoder_2)."""
    if not cfg.text_encoder.train:
        return {}
    if text_encoder_2 is None:
        return {"text_encoder": text_encoder}
    named = {1: ("text_encoder", text_encoder), 2: ("text_encoder_2", text_encoder_2)}
    return dict(named[i] for i in sorted(set(cfg.text_encoder.xl_encoders)))


def _lora_trainable(unet, text_encoder, cfg, text_encoder_2=None) -> tuple[Params, Params]:
    unet_params = add_lora(unet, cfg.lora, cfg.lora.target_modules, "UNet")
    te_params = [
        p
        for name, encoder in training_encoders(cfg, text_encoder, text_encoder_2).items()
        for p in add_lora(encoder, cfg.lora, cfg.lora.text_encoder_target_modules, name.replace("_", " "))
    ]
    return unet_params, te_params


def _lora_save(path: Path, parts: SDParts, cfg, dtype: torch.dtype) -> list[Path]:
    """diffusers' LoRA file (pytorch_lora_weights.safetensors; SDXL's with text_encoder_2 keys too, as
    StableDiffusionXLPipeline.save_lora_weights writes it), and with `kohya` the A1111 / ComfyUI one."""
    encoders = training_encoders(cfg, parts.text_encoder, parts.text_encoder_2)
    components = {"unet": parts.unet, "text_encoder": parts.text_encoder}
    if parts.is_xl:
        components["text_encoder_2"] = parts.text_encoder_2
    (u, uc), te = lora_layers(parts.unet), {name: lora_layers(e) for name, e in encoders.items()}
    (t, tc), (t2, tc2) = te.get("text_encoder", ({}, None)), te.get("text_encoder_2", ({}, None))
    return save_sd_lora(path, u, uc, t, tc, components, cfg.kohya, t2, tc2, sdxl=parts.is_xl)


def _full_trainable(unet, text_encoder, cfg, text_encoder_2=None) -> tuple[Params, Params]:
    unet_params = list(unet.requires_grad_(True).parameters())
    encoders = training_encoders(cfg, text_encoder, text_encoder_2).values()
    return unet_params, [p for encoder in encoders for p in encoder.requires_grad_(True).parameters()]


def _full_save(path: Path, parts: SDParts, cfg, dtype: torch.dtype) -> list[Path]:
    """A whole diffusers pipeline: the trained UNet (and text encoders) with the base model's other parts."""
    with torch.random.fork_rng():  # frozen parts in full precision: reload them (reseeds a tiny build)
        base = load_sd_components(cfg.model) if dtype != torch.float32 else parts
    trained = training_encoders(cfg, parts.text_encoder, parts.text_encoder_2)
    encoders = {name: trained.get(name, getattr(base, name)) for name in ("text_encoder", "text_encoder_2")}
    return [save_sd_pipeline(path / PIPELINE_DIR, build_pipeline(base, unet=parts.unet, **encoders))]


def _distill_check(cfg) -> None:
    validate_distill(cfg.distill)
    if cfg.text_encoder.train:
        raise UserError(
            "method=distill_unet trains the student UNet only (the teacher's text encoder is kept); unset text_encoder.train"
        )
    if not cfg.model.tiny:
        check_teacher_dir(cfg.model.pretrained)


def _ti_concept(tokenizer, text_encoder, cfg) -> Concept:
    ti = cfg.textual_inversion
    ids = add_placeholder_tokens(tokenizer, text_encoder, ti)  # refuses a token the tokenizer already has
    prompt = templates_of(ti)[0].format(placeholder_text(ti))
    return Concept(
        ids,
        prompt,
        prompt.replace(placeholder_text(ti), ti.placeholder_token),
        lambda caption: template_prompt(ti),  # a random template each time (Python's random, checkpointed)
    )


def _ti_save(path: Path, parts: SDParts, cfg, dtype: torch.dtype) -> list[Path]:
    """learned_embeds.safetensors, {placeholder: (num_vectors, dim)}: what pipe.load_textual_inversion reads.
    SDXL: {"clip_l": (n, d1), "clip_g": (n, d2)}, each loaded into its encoder (diffusers' SDXL TI docs)."""
    ti = cfg.textual_inversion
    embeddings = [
        learned_embeddings(encoder, tokenizer.convert_tokens_to_ids(placeholder_tokens(ti)))
        for tokenizer, encoder in parts.text_encoders
    ]
    if parts.is_xl:
        return [save_textual_inversion_xl(path / EMBEDDING_FILE, *embeddings)]
    return [save_textual_inversion(path / EMBEDDING_FILE, ti.placeholder_token, embeddings[0])]


def _ti_check(cfg) -> None:
    if cfg.text_encoder.train:
        raise UserError("method=textual_inversion already trains only the new embeddings; unset text_encoder.train")


def _hypernetwork_check(cfg) -> None:
    validate_hypernetwork(cfg.hypernetwork)
    if cfg.text_encoder.train:
        raise UserError(
            "method=hypernetwork trains only its MLPs on the UNet's keys and values; unset text_encoder.train"
        )


SD_METHODS: dict[str, SDMethod] = {
    "lora": SDMethod(
        section="lora",
        config=SDLoraConfig,
        trainable=_lora_trainable,
        save=_lora_save,
        check=lambda cfg: validate_sd_lora(cfg.lora),
    ),
    "full": SDMethod(section=None, config=None, trainable=_full_trainable, save=_full_save),
    "textual_inversion": SDMethod(
        section="textual_inversion",
        config=TextualInversionConfig,
        # the whole token table trains (SDXL: both encoders'); the recipe's RowRestorer puts every row but the
        # concept's back after each step
        trainable=lambda unet, text_encoder, cfg, text_encoder_2=None: (
            [],
            [train_only_embeddings(e) for e in (text_encoder, text_encoder_2) if e is not None],
        ),
        save=_ti_save,
        trained_count=lambda cfg, unet_params, te_params: sum(
            cfg.textual_inversion.num_vectors * p.shape[1] for p in te_params
        ),
        check=_ti_check,
        prior_preservation=False,
        concept=_ti_concept,
        # The whole (fp32) token table trains, so the embeddings' sum is fp32; bf16 layer norms after it fail on the
        # CPU (autocast there does not cast layer_norm): its text encoder stays fp32, as in diffusers'
        # textual_inversion.py. Autocast still runs its matmuls in the mixed precision.
        text_encoder_fp32=True,
    ),
    "distill_unet": SDMethod(
        section="distill",
        config=DistillConfig,
        trainable=_full_trainable,  # every weight of the student (the recipe put it in place of the loaded UNet)
        save=_full_save,  # a whole pipeline around the student: a stock diffusers UNet of the smaller config
        check=_distill_check,
        prior_preservation=False,  # class images of the teacher would teach what distillation already does
        distillation=lambda unet, text_encoder, cfg: UNetDistillation(unet, text_encoder, cfg.distill),
        xl=False,  # its student is cut from an SD1.x/2.x UNet layout
    ),
    "hypernetwork": SDMethod(
        section="hypernetwork",
        config=HypernetworkConfig,
        # the web UI's residual MLPs on the inputs of every to_k / to_v, attached to the frozen UNet
        trainable=lambda unet, text_encoder, cfg: (add_hypernetwork(unet, cfg.hypernetwork), []),
        # hypernetwork.safetensors (what load_hypernetwork reads) and the web UI's hypernetwork.pt; its "step" is
        # the run's train.max_steps (the web UI shows it and counts on from it)
        save=lambda path, parts, cfg, dtype: save_hypernetwork(path, parts.unet.hypernetwork, cfg.train.max_steps),
        check=_hypernetwork_check,
        prior_preservation=False,  # the web UI trains it on captioned images; DreamBooth class images are not its
        xl=False,  # the web UI's hypernetworks are SD1.x/2.x files
    ),
}
