"""LoRA (and DoRA) adapters on a causal LM, through PEFT.

`apply_lora(model, LoraMethodConfig(...))` wraps the model with `peft.get_peft_model`; only the adapter
matrices train. Save with `PeftModel.save_pretrained(dir)` (adapter_model.safetensors + adapter_config.json),
which the stock `peft.PeftModel.from_pretrained(base, dir)` loads; `merge_and_unload()` folds the adapter
into plain transformers weights. Recommended learning rate: about 2e-4 (see `recommended_lr`).
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
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # ["all-linear"] (every linear but lm_head) or module names, e.g. ["q_proj", "v_proj"]
    use_dora: bool = False  # DoRA: learn a per-column magnitude on top of LoRA's direction (slower, often better at low rank)
    bias: Literal["none", "all", "lora_only"] = "none"  # which biases train along with the adapter


def apply_lora(model, cfg: LoraMethodConfig):
    """Wrap `model` in a PeftModel whose only trainable parameters are the LoRA (and DoRA) weights."""
    from peft import LoraConfig, get_peft_model

    _validate(cfg)
    targets = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    if targets != "all-linear":
        _check_targets_exist(model, targets)
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


def linear_module_names(model) -> list[str]:
    """Distinct leaf names of the model's nn.Linear modules (what target_modules may name)."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def _check_targets_exist(model, targets: list[str]) -> None:
    # PEFT matches a target against the end of each module's dotted name ("q_proj", "self_attn.q_proj").
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    available = linear_module_names(model)
    if missing:
        raise UserError(
            f"lora target_modules {missing} not found in the model; choose from {available} or use ['all-linear']"
        )


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
