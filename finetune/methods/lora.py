"""LoRA (and DoRA) adapters on a causal LM, through PEFT.

`apply_lora(model, LoraMethodConfig(...))` wraps the model with `peft.get_peft_model`; only the adapter
matrices train. Save with `PeftModel.save_pretrained(dir)` (adapter_model.safetensors + adapter_config.json),
which the stock `peft.PeftModel.from_pretrained(base, dir)` loads; `merge_and_unload()` folds the adapter
into plain transformers weights. Recommended learning rate: about 2e-4 (see `recommended_lr`).

Under bf16/fp16 mixed precision, `store_frozen_weights(model, dtype)` keeps the frozen base weights of the
adapted layers in that dtype (the adapter stays fp32); `restore_frozen_weights` puts fp32 weights back before
export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from finetune.errors import UserError


@dataclass
class LoraMethodConfig:
    r: int = 8  # rank of the low-rank update B@A; more rank = more capacity and parameters (lr ~2e-4 works for r 8..64)
    alpha: int = 16  # lora_alpha: the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the adapter's input during training
    target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"]
    )  # ["all-linear"] (every linear but lm_head) or module names, e.g. ["q_proj", "v_proj"]
    use_dora: bool = (
        False  # DoRA: learn a per-column magnitude on top of LoRA's direction (slower, often better at low rank)
    )
    bias: Literal["none", "all", "lora_only"] = "none"  # which biases train along with the adapter


def apply_lora(model, cfg: LoraMethodConfig):
    """Wrap `model` in a PeftModel whose only trainable parameters are the LoRA (and DoRA) weights."""
    from peft import LoraConfig, get_peft_model

    _validate(cfg)
    targets = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    if isinstance(targets, list):
        check_target_modules(model, targets, "lora target_modules", "the model", " or use ['all-linear']")
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        use_dora=cfg.use_dora,
        bias=cfg.bias,
    )
    return get_peft_model(model, peft_config)


def _adapted_layers(model):
    """(name, layer) of every LoRA-wrapped layer, named as in the unwrapped base model."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [(name, m) for name, m in base.named_modules() if isinstance(m, LoraLayer)]


def store_frozen_weights(model, dtype) -> int:
    """Store the frozen base weights of the LoRA-wrapped layers in `dtype` (why: finetune.train.precision); returns
    how many were cast.

    The trainable adapter matrices stay fp32, and layers that are not adapted (embeddings, norms, a tied lm_head)
    are left as they are. The model must then run under autocast; call `restore_frozen_weights` before running it
    without autocast or exporting it.
    """
    import torch

    from finetune.train.precision import cast_frozen

    if dtype == torch.float32:
        return 0
    layers = [layer for _, layer in _adapted_layers(model)]
    if any(any(getattr(layer, "use_dora", {}).values()) for layer in layers):
        raise UserError("store_frozen_weights does not support DoRA (its magnitude uses the base weight in fp32)")
    return cast_frozen((layer.get_base_layer().weight for layer in layers), dtype)


def restore_frozen_weights(model, base_model) -> int:
    """Copy the base weights of the LoRA-wrapped layers back from `base_model` (the same base, freshly loaded)."""
    modules = dict(base_model.named_modules())
    count = 0
    for name, layer in _adapted_layers(model):
        weight = layer.get_base_layer().weight
        source = modules[name].weight
        if weight.dtype != source.dtype:
            weight.data = source.data.to(weight.device)
            count += 1
    return count


def linear_module_names(model) -> list[str]:
    """Distinct leaf names of the model's nn.Linear modules (what target_modules may name)."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def check_target_modules(model, targets: list[str], key: str, what: str, alternative: str = "") -> None:
    """Refuse LoRA targets that match no module of `model`, before PEFT fails deep inside with its own message.

    PEFT matches a target against the end of each module's dotted name ("q_proj", "self_attn.q_proj"). The error
    names `key` (the config key) and up to 10 of the model's Linear layer names, then `alternative`."""
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        available = linear_module_names(model)
        more = f" (and {len(available) - 10} more)" if len(available) > 10 else ""
        raise UserError(f"{key} {missing} not found in {what}; choose from {available[:10]}{more}{alternative}")


def _validate(cfg: LoraMethodConfig) -> None:
    if cfg.r < 1:
        raise UserError(f"lora r must be >= 1, got {cfg.r}; typical values are 8..64")
    if cfg.alpha <= 0:
        raise UserError(f"lora alpha must be > 0, got {cfg.alpha}; a common choice is 2 * r")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"lora dropout must be in [0, 1), got {cfg.dropout}")
    if not cfg.target_modules:
        raise UserError("lora target_modules is empty; use ['all-linear'] or name modules such as ['q_proj', 'v_proj']")
    if "all-linear" in cfg.target_modules and len(cfg.target_modules) > 1:
        raise UserError("lora target_modules: 'all-linear' must stand alone; use ['all-linear'] or explicit names")
    if cfg.bias not in ("none", "all", "lora_only"):
        raise UserError(f"lora bias {cfg.bias!r} is not one of none, all, lora_only")
