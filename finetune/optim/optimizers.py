"""Optimizer construction: a typed config, decay/no-decay parameter groups, and TTUR pairs for GANs.

torch.optim supplies the optimizers; this module only chooses among them from config, splits
parameters into weight-decay groups (the usual rule: no decay on biases, norm weights and,
optionally, embeddings) and validates the user's settings before torch sees them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from finetune.errors import UserError

GAN_BETAS = (0.5, 0.999)  # Adam betas of DCGAN (Radford et al. 2016); beta1 = 0.9 makes GAN training oscillate


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam", "rmsprop", "sgd"] = "adamw"  # which torch.optim optimizer to build
    lr: float = 1e-4  # base learning rate (a param group's own "lr" overrides it)
    weight_decay: float = 0.0  # decoupled (AdamW) or L2 (adam/rmsprop/sgd) weight decay for groups that decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam/AdamW (beta1, beta2); GANs use [0.5, 0.999]
    eps: float = 1e-8  # denominator epsilon of Adam/AdamW/RMSprop
    momentum: float = 0.0  # momentum of SGD and RMSprop
    foreach: bool = False  # torch's multi-tensor update: fewer kernel launches for many small tensors (LoRA), a
    #                        temporary copy of the parameters' size in memory (avoid for full fine-tuning of big models)
    fused: bool = (
        False  # torch's fused update (adamw/adam/sgd): one kernel over all tensors, no temporaries; on the CPU,
    )
    #                      where foreach falls back to a per-tensor loop, the fast choice for many small tensors (LoRA)


def validate_optim_config(cfg: OptimConfig) -> None:
    """Raise UserError naming the field when an OptimConfig value is out of range."""
    valid = ("adamw", "adam", "rmsprop", "sgd")
    if cfg.name not in valid:
        raise UserError(f"optim.name={cfg.name!r} is unknown; choose one of {', '.join(valid)}")
    if not 0 < cfg.lr < 1e6:  # NaN fails too; an lr near float32's max (3.4e38) overflows inside the update
        raise UserError(f"optim.lr={cfg.lr} is out of range: it must be > 0 and below 1e6 (typical: 1e-5 to 1e-2)")
    if cfg.weight_decay < 0:
        raise UserError(f"optim.weight_decay={cfg.weight_decay} must be >= 0")
    if len(cfg.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise UserError(f"optim.betas={list(cfg.betas)} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    if not cfg.eps > 0:
        raise UserError(f"optim.eps={cfg.eps} must be > 0")
    if cfg.momentum < 0:
        raise UserError(f"optim.momentum={cfg.momentum} must be >= 0")
    if cfg.fused and cfg.foreach:
        raise UserError("optim.fused and optim.foreach are two ways to batch the update; set only one of them")
    if cfg.fused and cfg.name == "rmsprop":
        raise UserError("optim.fused is not available for rmsprop in torch; unset it or use optim.foreach=true")


def is_no_decay(name: str, param: nn.Parameter, no_decay_embeddings: bool = False) -> bool:
    """True for parameters that conventionally get no weight decay.

    Biases and norm weights (any tensor with fewer than 2 dims, or whose owning module's name contains
    "norm", e.g. LayerNorm/RMSNorm/GroupNorm: `input_layernorm.weight`, `norm1.weight`) and, when
    asked, embeddings (the owning module's name contains "embed").
    """
    parts = name.lower().split(".")
    owner = parts[-2] if len(parts) >= 2 else ""
    if param.dim() < 2 or parts[-1] == "bias" or "norm" in owner:
        return True
    return no_decay_embeddings and "embed" in owner


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    lr: float | None = None,
    *,
    no_decay_embeddings: bool = False,
    trainable_only: bool = True,
) -> list[dict[str, Any]]:
    """Split named parameters into a decaying group and a no-decay group (empty groups are dropped).

    Each group is a torch param-group dict with "params", "param_names" and "weight_decay" (and "lr"
    when given). trainable_only=True keeps only requires_grad parameters; pass False to build groups
    over frozen parameters too (gradual unfreezing raises their lr later instead of rebuilding).
    Shared (tied) parameters appear once, under their first name.
    """
    decay: dict[str, Any] = {"params": [], "param_names": []}  # a torch param group: lists, then floats
    no_decay: dict[str, Any] = {"params": [], "param_names": []}
    seen: set[int] = set()
    for name, p in named_params:
        if (trainable_only and not p.requires_grad) or id(p) in seen:
            continue
        seen.add(id(p))
        group = no_decay if is_no_decay(name, p, no_decay_embeddings) else decay
        group["params"].append(p)
        group["param_names"].append(name)
    groups = []
    for group, wd in ((decay, weight_decay), (no_decay, 0.0)):
        if group["params"]:
            group["weight_decay"] = wd
            if lr is not None:
                group["lr"] = lr
            groups.append(group)
    return groups


def _as_groups(params_or_groups) -> list:
    """A list of param-group dicts or of tensors; (name, param) pairs become one named group."""
    items = list(params_or_groups)
    if items and isinstance(items[0], tuple):
        items = [{"params": [p for _, p in items], "param_names": [n for n, _ in items]}]
    items = [{**g, "params": list(g["params"])} if isinstance(g, dict) else g for g in items]
    n_params = sum(len(g["params"]) if isinstance(g, dict) else 1 for g in items)
    if n_params == 0:
        raise UserError("there are no parameters to optimize; check which parameters the method marks trainable")
    return items


def build_optimizer(params_or_groups, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The torch optimizer named by cfg over parameters, (name, parameter) pairs or param-group dicts.

    Group dicts keep their own "lr"/"weight_decay"; cfg supplies the defaults. Parameters are
    taken as given (no requires_grad filtering here, so groups frozen for later unfreezing stay in).
    """
    validate_optim_config(cfg)
    groups = _as_groups(params_or_groups)
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    common: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "foreach": cfg.foreach}
    if cfg.fused:
        common["fused"] = True
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, betas=betas, eps=cfg.eps, **common)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, betas=betas, eps=cfg.eps, **common)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, eps=cfg.eps, momentum=cfg.momentum, **common)
    return torch.optim.SGD(groups, momentum=cfg.momentum, **common)


def _param_ids(items: list) -> set[int]:
    ids: set[int] = set()
    for it in items:
        if isinstance(it, dict):
            ids.update(id(p) for p in it["params"])
        elif isinstance(it, tuple):
            ids.add(id(it[1]))
        else:
            ids.add(id(it))
    return ids


def build_ttur(
    gen_params, disc_params, cfg_g: OptimConfig, cfg_d: OptimConfig
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Two optimizers with their own learning rates (two time-scale update rule, Heusel et al. 2017).

    TTUR usually gives the discriminator the larger lr (e.g. 4e-4 vs 1e-4). The two parameter
    sets must be disjoint: a parameter stepped by both optimizers is a wiring bug.
    """
    gen_items, disc_items = list(gen_params), list(disc_params)
    if _param_ids(gen_items) & _param_ids(disc_items):
        raise UserError("generator and discriminator parameter lists overlap; pass each network's own parameters")
    return build_optimizer(gen_items, cfg_g), build_optimizer(disc_items, cfg_d)
