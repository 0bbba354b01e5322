"""LoRA on a Stable Diffusion UNet (and optionally its CLIP text encoder), through PEFT as diffusers uses it.

One method, one place: the config (`SDLoraConfig`), how the adapters are attached so that only they train
(`add_lora`: `model.add_adapter(LoraConfig)`, diffusers' own integration), what is saved (`lora_layers`: PEFT
keys prefixed by component, `unet.<module>.lora_A.weight`, plus each component's LoraConfig as metadata so
alpha, hence the scale alpha / rank, travels with the weights). `finetune.export.sd.save_sd_lora` writes them
with `StableDiffusionPipeline.save_lora_weights`, which the stock `pipe.load_lora_weights` reads back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from finetune.errors import UserError
from finetune.methods.lora import check_target_modules

if TYPE_CHECKING:  # the UNet is a diffusers model, the text encoder a transformers one; both have PEFT's add_adapter
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the attention projections diffusers' LoRA examples train
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # CLIP attention projections


@dataclass
class SDLoraConfig:
    rank: int = 4  # r of each low-rank update B @ A; 4..32 is usual for SD
    alpha: float = 4.0  # lora_alpha: the update is scaled by alpha / rank; stored in the saved file's metadata
    dropout: float = 0.0  # dropout on the adapter input while training
    target_modules: list[str] = field(
        default_factory=lambda: list(UNET_TARGETS)
    )  # UNet module names (suffixes) that get LoRA
    text_encoder_target_modules: list[str] = field(
        default_factory=lambda: list(TEXT_ENCODER_TARGETS)
    )  # text-encoder modules, when it trains with LoRA


def validate_sd_lora(cfg: SDLoraConfig) -> None:
    if cfg.rank < 1:
        raise UserError(f"lora.rank must be >= 1, got {cfg.rank}; 4..32 is usual for Stable Diffusion")
    if not cfg.alpha > 0:
        raise UserError(f"lora.alpha must be > 0, got {cfg.alpha}; alpha = rank gives scale 1")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"lora.dropout must be in [0, 1), got {cfg.dropout}")
    if not cfg.target_modules:
        raise UserError(f"lora.target_modules is empty; use e.g. {UNET_TARGETS}")


def lora_config(cfg: SDLoraConfig, targets: list[str]):
    """The PEFT LoraConfig diffusers' examples use: gaussian A, zero B, so a fresh adapter is a no-op."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        init_lora_weights="gaussian",
        target_modules=list(targets),
    )


def add_lora(
    model: ModelMixin | PreTrainedModel, cfg: SDLoraConfig, targets: list[str], what: str
) -> list[torch.nn.Parameter]:
    """Freeze `model`, attach a LoRA adapter to `targets` and return the adapter parameters (the only trainable ones)."""
    validate_sd_lora(cfg)
    check_target_modules(model, targets, f"{what} LoRA target modules", f"the {what}")
    model.requires_grad_(False)
    model.add_adapter(lora_config(cfg, targets))
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def lora_layers(model: ModelMixin | PreTrainedModel) -> tuple[dict[str, torch.Tensor], dict]:
    """(PEFT state dict of the adapter, its LoraConfig as a dict) for `save_lora_weights`."""
    from peft.utils import get_peft_model_state_dict

    state = {k: v.detach().float().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    return state, model.peft_config["default"].to_dict()
