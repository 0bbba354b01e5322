"""Sanity checks on a LoRA state dict before it is saved or shipped.

Two silent failures are caught here: a LoRA whose up (B) matrices are all still zero (PEFT initialises B to
zero, so this means training never moved the adapter: lr 0, params not in the optimizer, no optimizer step),
and keys that name no module of the model they are meant for (wrong base model, wrong prefix), which loaders
may drop without a word. Accepts diffusers/PEFT keys (`unet.<module>.lora_A.weight`, optionally with an
adapter name, or PEFT's `base_model.model.` prefix) and kohya keys (`lora_unet_<module>.lora_down.weight`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from finetune.errors import UserError
from finetune.export.kohya import from_kohya

_LORA_SUFFIX = re.compile(
    r"\.(lora_A|lora_B|lora\.down|lora\.up|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(\.[A-Za-z0-9_-]+)?(\.weight)?$"
)
_UP = re.compile(r"\.(lora_B|lora\.up|lora_embedding_B)(\.[A-Za-z0-9_-]+)?(\.weight)?$")
_COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "transformer")


def check_lora_state_dict(state_dict: Mapping[str, torch.Tensor], model: Any) -> int:
    """Raise UserError if the LoRA is empty, non-finite, all-zero in B, or names modules `model` lacks.

    `model` is an nn.Module, a mapping {"unet": unet, "text_encoder": te}, or anything with such attributes
    (SDParts, a diffusers pipeline). Returns the number of LoRA modules checked.
    """
    if not state_dict:
        raise UserError("the LoRA state dict is empty; nothing was trained or the wrong adapter was saved")
    components = _components(model)
    if any(k.startswith(("lora_unet_", "lora_te")) for k in state_dict):
        state_dict, _ = from_kohya(state_dict, {c: m for c, m in components.items() if c})
    modules = {_module_path(k) for k in state_dict}
    _check_targets(modules, components)
    _check_values(state_dict)
    return len(modules)


def _components(model: Any) -> dict[str, torch.nn.Module]:
    if isinstance(model, torch.nn.Module):
        return {"": model}
    if isinstance(model, Mapping):
        return dict(model)
    attributes = {name: getattr(model, name, None) for name in _COMPONENTS}
    found = {name: m for name, m in attributes.items() if isinstance(m, torch.nn.Module)}
    if not found:
        raise TypeError(
            f"check_lora_state_dict needs an nn.Module, a mapping of them, or an object with .unet; got {type(model)}"
        )
    return found


def _module_path(key: str) -> str:
    match = _LORA_SUFFIX.search(key)
    if match is None:
        raise UserError(f"key {key!r} is not a LoRA weight (expected '<module>.lora_A.weight' / '.lora_B.weight')")
    return key[: match.start()]


def _check_targets(modules: set[str], components: dict[str, torch.nn.Module]) -> None:
    names = {c: {n for n, _ in m.named_modules()} for c, m in components.items()}
    missing = sorted(m for m in modules if not _matches(m, names))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(
            f"{len(missing)} of {len(modules)} LoRA modules match no module of the target model ({shown}); "
            "the LoRA was made for another base model or its key prefix is wrong"
        )


def _matches(path: str, names: dict[str, set[str]]) -> bool:
    """Route by the leading component name ("unet.", "text_encoder.") when the model has it, else try every
    component. PEFT's `base_model.model.` wrapper prefix is ignored, and CLIP's pre-transformers-5
    `text_model.` level may be present or absent (diffusers' loader accepts both)."""
    path = path.removeprefix("base_model.model.")
    return any(_matches_exactly(p, names) for p in (path, path.replace("text_model.", "", 1)))


def _matches_exactly(path: str, names: dict[str, set[str]]) -> bool:
    head, _, rest = path.partition(".")
    if head in names:
        return rest in names[head]
    if head in _COMPONENTS:  # e.g. "unet.<module>" checked against the bare unet
        return any(rest in component_names for component_names in names.values())
    return any(path in component_names for component_names in names.values())


def _check_values(state_dict: Mapping[str, torch.Tensor]) -> None:
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(
            f"LoRA weight {bad[0]} has NaN/inf values ({len(bad)} tensors); training diverged, "
            "lower the learning rate or use fp32/bf16 instead of fp16"
        )
    ups = [v for k, v in state_dict.items() if _UP.search(k)]
    if not ups:
        raise UserError("the LoRA has no up (lora_B / lora_up) weights; the state dict is incomplete")
    if all(not torch.any(v) for v in ups):
        raise UserError(
            f"all {len(ups)} LoRA up (B) matrices are zero, so the adapter changes nothing: training never "
            "moved it (check the learning rate, that LoRA params reach the optimizer, and that steps ran)"
        )
