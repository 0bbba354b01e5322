"""Full fine-tuning: layer groups, static freezing, discriminative learning rates and gradual unfreezing.

This is ULMFiT's recipe (Howard & Ruder 2018, fastai's splitter + `freeze_to` + lr slice) for LLaMA-style
models, written by hand because none of transformers, peft or accelerate provides it:

- `layer_groups(model)` splits every parameter into groups ordered bottom -> top:
  [input embeddings], [layer 0], ..., [layer L-1], [final norm + lm_head].
- `build_param_groups(...)` makes ONE optimizer param group per layer group, over ALL groups up front,
  with lr = base_lr / factor ** (distance from the top). Frozen groups are in the optimizer from step 0,
  so unfreezing never needs a new optimizer (the trap of Lightning #20340 and of Trainer-style
  "only parameters with requires_grad" optimizers, which silently never train later-unfrozen groups).
- `GradualUnfreezer` decides which groups are frozen (by steps, epochs or on an eval plateau) and enforces
  it with `mask_grads`: after backward and before clipping / `optimizer.step()`, it sets `p.grad = None`
  for frozen parameters, so AdamW skips them entirely (no update, no weight decay, no optimizer state).
  This is correct under DDP, where every parameter must keep requires_grad=True. Single-process runs may
  also pass `set_requires_grad=True` so frozen bottom groups cost no backward compute.

Tied embeddings (SmolLM2 ties embed_tokens and lm_head): the shared matrix is ONE parameter and belongs to
the top group, with the head, as in fastai's AWD-LSTM language-model splitter. The bottom group then holds
only other input-side parameters and is dropped when empty, so a tied LLaMA has L + 1 groups.

Note on depth: with factor 2.6 and one layer per group, layer 0 of a 30-layer model gets lr / 2.6**30
(effectively zero). For deep models raise `layers_per_group` (e.g. 5-6) or lower the factor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from finetune.errors import UserError


@dataclass
class FullMethodConfig:
    freeze_first_n_layers: int = (
        0  # decoder layers (from the bottom, plus untied input embeddings below them) that never train
    )
    unfreeze: Literal["none", "steps", "epochs", "plateau"] = (
        "none"  # gradual unfreezing schedule; none: all non-static-frozen groups train from the start
    )
    unfreeze_every: int = 100  # "steps"/"epochs": optimizer steps or epochs between unfreezing the next group down
    plateau_patience: int = 1  # "plateau": evaluations without improvement before the next group unfreezes
    layers_per_group: int = 1  # consecutive decoder layers per layer group
    discriminative_factor: float = (
        2.6  # lr of group i = lr / factor**(groups above it); ULMFiT's 2.6; 1.0 = one lr for all
    )
    start_unfrozen_groups: int = 1  # groups (counted from the top) that train from step 0 under gradual unfreezing


@dataclass
class LayerGroup:
    label: str  # human-readable name, e.g. "layers 4-5" or "head"
    names: list[str]  # parameter names (as model.named_parameters() spells them) in this group


# ----------------------------------------------------------------------------------------------------------
# Layer groups


def layer_groups(model, layers_per_group: int = 1) -> list[list[str]]:
    """Parameter names per layer group, bottom -> top; every parameter is in exactly one group."""
    return [group.names for group in describe_layer_groups(model, layers_per_group)]


def describe_layer_groups(model, layers_per_group: int = 1) -> list[LayerGroup]:
    """Like `layer_groups`, with a label per group (for logs)."""
    if layers_per_group < 1:
        raise UserError(f"layers_per_group must be >= 1, got {layers_per_group}")
    prefix, num_layers = _decoder_layers(model)
    tied = _tied_output_weight(model)
    bottom: list[str] = []
    top: list[str] = []
    layers: list[list[str]] = [[] for _ in range(num_layers)]
    seen_layer = False
    # named_parameters() lists a shared (tied) tensor once, under its first name.
    for name, param in model.named_parameters():
        index = _layer_index(name, prefix)
        if index is not None:
            layers[index].append(name)
            seen_layer = True
        elif param is tied or seen_layer:
            top.append(name)
        else:
            bottom.append(name)
    groups = [LayerGroup("embeddings", bottom)] if bottom else []
    for start in range(0, num_layers, layers_per_group):
        stop = min(start + layers_per_group, num_layers)
        label = f"layer {start}" if stop - start == 1 else f"layers {start}-{stop - 1}"
        groups.append(LayerGroup(label, [n for chunk in layers[start:stop] for n in chunk]))
    if top:
        groups.append(LayerGroup("head", top))
    return groups


def num_static_frozen_groups(model, cfg: FullMethodConfig) -> int:
    """How many bottom groups `freeze_first_n_layers` freezes for good (embeddings included when present)."""
    if cfg.freeze_first_n_layers == 0:
        return 0
    _, num_layers = _decoder_layers(model)
    if cfg.freeze_first_n_layers > num_layers:
        raise UserError(f"freeze_first_n_layers={cfg.freeze_first_n_layers} but the model has {num_layers} layers")
    if cfg.freeze_first_n_layers % cfg.layers_per_group:
        raise UserError(
            f"freeze_first_n_layers={cfg.freeze_first_n_layers} must be a multiple of "
            f"layers_per_group={cfg.layers_per_group} so no group is half frozen"
        )
    groups = describe_layer_groups(model, cfg.layers_per_group)
    has_bottom = groups[0].label == "embeddings"
    return int(has_bottom) + cfg.freeze_first_n_layers // cfg.layers_per_group


def apply_static_freeze(model, cfg: FullMethodConfig) -> list[str]:
    """Set requires_grad=False on the groups `freeze_first_n_layers` freezes for good; returns their names.

    Call it before accelerate/DDP wraps the model (DDP then leaves those parameters out entirely).
    The parameters stay in `build_param_groups`' optimizer groups; with no grad, AdamW never touches them.
    """
    _validate(cfg)
    count = num_static_frozen_groups(model, cfg)
    names = [n for group in layer_groups(model, cfg.layers_per_group)[:count] for n in group]
    named = dict(model.named_parameters())
    for name in names:
        named[name].requires_grad_(False)
    return names


def _decoder_layers(model) -> tuple[str, int]:
    """Dotted name and length of the model's stack of decoder layers (its longest nn.ModuleList)."""
    best_name, best_len = None, 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > best_len:
            best_name, best_len = name, len(module)
    if best_name is None:
        raise UserError(
            f"cannot find the decoder layers (an nn.ModuleList) of {type(model).__name__}; full/unfreeze needs a layered model"
        )
    return best_name, best_len


def _layer_index(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix + "."):
        return None
    head = name[len(prefix) + 1 :].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _tied_output_weight(model) -> torch.nn.Parameter | None:
    """The lm_head weight when it is the same tensor as the input embedding, else None."""
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return None
    inp, out = get_in(), get_out()
    if inp is None or out is None or out.weight is not inp.weight:
        return None
    return out.weight


# ----------------------------------------------------------------------------------------------------------
# Optimizer param groups


def build_param_groups(model, cfg: FullMethodConfig, base_lr: float, weight_decay: float) -> list[dict]:
    """One optimizer param group per layer group (ALL of them, frozen or not), with discriminative lrs.

    Each dict has params, lr, weight_decay, group_index (0 = bottom) and group_name. Parameters are
    deliberately not filtered by requires_grad: a group frozen now must already be in the optimizer when
    it unfreezes. Weight decay applies to every parameter of a group (one group per layer group).
    """
    _validate(cfg)
    if base_lr <= 0:
        raise UserError(f"learning rate must be > 0, got {base_lr}")
    groups = describe_layer_groups(model, cfg.layers_per_group)
    named = dict(model.named_parameters())
    top = len(groups) - 1
    return [
        {
            "params": [named[n] for n in group.names],
            "lr": base_lr / cfg.discriminative_factor ** (top - i),
            "weight_decay": weight_decay,
            "group_index": i,
            "group_name": group.label,
        }
        for i, group in enumerate(groups)
    ]


# ----------------------------------------------------------------------------------------------------------
# Gradual unfreezing


class GradualUnfreezer:
    """Which layer groups train, from the top down; enforces it on gradients (see the module docstring).

    Loop contract: `update(step, epoch)` before each optimizer step (step = optimizer steps done so far),
    `on_eval(improved)` after each evaluation, `mask_grads(optimizer)` after the last backward of a step
    and before gradient clipping and `optimizer.step()`. Save `state_dict()` with the checkpoint.
    """

    def __init__(
        self,
        model,
        cfg: FullMethodConfig,
        set_requires_grad: bool = False,
        log: Callable[[str], None] = print,
    ):
        _validate(cfg)
        if set_requires_grad and _world_size() > 1:
            raise UserError(
                "set_requires_grad=True is for single-process runs; under DDP keep it False (grads are masked)"
            )
        self.cfg = cfg
        self.set_requires_grad = set_requires_grad
        self.log = log
        self.groups = describe_layer_groups(model, cfg.layers_per_group)
        named = dict(model.named_parameters())
        self._params = [[named[n] for n in g.names] for g in self.groups]
        self._all_ids = {id(p) for params in self._params for p in params}
        self.num_static_frozen = num_static_frozen_groups(model, cfg)
        self.max_unfrozen = len(self.groups) - self.num_static_frozen
        if self.max_unfrozen < 1:
            raise UserError("freeze_first_n_layers leaves no group to train; lower it")
        if cfg.unfreeze == "none":
            self.unfrozen = self.max_unfrozen
        else:
            self.unfrozen = min(cfg.start_unfrozen_groups, self.max_unfrozen)
        self.bad_evals = 0
        self._apply()

    # -- schedule --------------------------------------------------------------------------------------

    def update(self, step: int, epoch: int = 0) -> bool:
        """Advance the "steps"/"epochs" schedule to `step`/`epoch`; True when a group unfroze."""
        if self.cfg.unfreeze == "steps":
            target = self.cfg.start_unfrozen_groups + step // self.cfg.unfreeze_every
        elif self.cfg.unfreeze == "epochs":
            target = self.cfg.start_unfrozen_groups + epoch // self.cfg.unfreeze_every
        else:
            return False
        return self._unfreeze_to(min(target, self.max_unfrozen))

    def on_eval(self, improved: bool) -> bool:
        """ "plateau" mode: after `plateau_patience` evals without improvement, unfreeze the next group."""
        if self.cfg.unfreeze != "plateau":
            return False
        self.bad_evals = 0 if improved else self.bad_evals + 1
        if self.bad_evals < self.cfg.plateau_patience or self.unfrozen >= self.max_unfrozen:
            return False
        self.bad_evals = 0
        return self._unfreeze_to(self.unfrozen + 1)

    # -- enforcement -----------------------------------------------------------------------------------

    def mask_grads(self, optimizer_or_params=None) -> int:
        """Set p.grad = None for every frozen parameter (of the optimizer / iterable given, default: the
        model's); returns how many grads were dropped."""
        if optimizer_or_params is None:
            optimizer_or_params = [p for params in self._params for p in params]
        params = list(_iter_params(optimizer_or_params))
        if params and not any(id(p) in self._all_ids for p in params):
            raise UserError(
                "mask_grads got parameters that are not this model's (a different model, or FSDP-flattened); "
                "build the GradualUnfreezer on the model whose parameters the optimizer holds"
            )
        dropped = 0
        for p in params:
            if id(p) in self._frozen_ids and p.grad is not None:
                p.grad = None
                dropped += 1
        return dropped

    def frozen_groups(self) -> list[int]:
        """Indices (0 = bottom) of the groups that do not train now."""
        return list(range(len(self.groups) - self.unfrozen))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters of the groups that train now."""
        first = len(self.groups) - self.unfrozen
        return [p for params in self._params[first:] for p in params]

    # -- checkpointing ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"unfrozen_groups": self.unfrozen, "bad_evals": self.bad_evals, "num_groups": len(self.groups)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_groups") != len(self.groups):
            raise UserError(
                f"unfreeze state has {state.get('num_groups')} layer groups but this model/config has "
                f"{len(self.groups)}; resume with the same layers_per_group"
            )
        self.unfrozen = min(int(state["unfrozen_groups"]), self.max_unfrozen)
        self.bad_evals = int(state["bad_evals"])
        self._apply()

    # -- internals -------------------------------------------------------------------------------------

    def _unfreeze_to(self, target: int) -> bool:
        if target <= self.unfrozen:
            return False
        total = len(self.groups)
        for count in range(self.unfrozen + 1, target + 1):  # top-down, one line per group
            index = total - count
            self.log(
                f"unfreeze: group {index} ({self.groups[index].label}) now trains; {count}/{total} groups trainable"
            )
        self.unfrozen = target
        self._apply()
        return True

    def _apply(self) -> None:
        first_trainable = len(self.groups) - self.unfrozen
        self._frozen_ids = {id(p) for params in self._params[:first_trainable] for p in params}
        if self.set_requires_grad:
            for index, params in enumerate(self._params):
                for p in params:
                    p.requires_grad_(index >= first_trainable)


def _iter_params(optimizer_or_params) -> Iterable[torch.nn.Parameter]:
    if isinstance(optimizer_or_params, torch.optim.Optimizer) or hasattr(optimizer_or_params, "param_groups"):
        for group in optimizer_or_params.param_groups:
            yield from group["params"]
    else:
        yield from optimizer_or_params


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def _validate(cfg: FullMethodConfig) -> None:
    if cfg.unfreeze not in ("none", "steps", "epochs", "plateau"):
        raise UserError(f"unfreeze {cfg.unfreeze!r} is not one of none, steps, epochs, plateau")
    if cfg.layers_per_group < 1:
        raise UserError(f"layers_per_group must be >= 1, got {cfg.layers_per_group}")
    if cfg.freeze_first_n_layers < 0:
        raise UserError(f"freeze_first_n_layers must be >= 0, got {cfg.freeze_first_n_layers}")
    if cfg.discriminative_factor <= 0:
        raise UserError(
            f"discriminative_factor must be > 0, got {cfg.discriminative_factor}; 2.6 is ULMFiT's, 1.0 disables it"
        )
    if cfg.unfreeze in ("steps", "epochs") and cfg.unfreeze_every < 1:
        raise UserError(f"unfreeze_every must be >= 1, got {cfg.unfreeze_every}")
    if cfg.unfreeze == "plateau" and cfg.plateau_patience < 1:
        raise UserError(f"plateau_patience must be >= 1, got {cfg.plateau_patience}")
    if cfg.unfreeze != "none" and cfg.start_unfrozen_groups < 1:
        raise UserError(f"start_unfrozen_groups must be >= 1, got {cfg.start_unfrozen_groups}")
