"""The decoder's repeated layers: find them, list their linear layers, and remove whole layers.

Removing layers (structured pruning) shrinks the model for real: fewer parameters and fewer matmuls per token.
The saved model must then be an ordinary model of the smaller depth, so `config.num_hidden_layers` follows the
new count (transformers' LLaMA runs `self.layers[: config.num_hidden_layers]`) and every attention module's
`layer_idx` (its slot in the KV cache) is renumbered 0..K-1. Written by hand: transformers and peft have no
layer-removal helper.
"""

from __future__ import annotations

import torch

from finetune.errors import UserError


def decoder_layers(model) -> torch.nn.ModuleList:
    """The ModuleList of repeated decoder blocks (the class transformers names in `_no_split_modules`)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and all(type(m).__name__ in names for m in module):
            return module
    raise UserError(
        f"{type(model).__name__} names no repeated decoder layer (_no_split_modules); pruning supports "
        "transformers' decoder-only causal LMs such as LLaMA"
    )


def prunable_linears(model) -> dict[str, torch.nn.Linear]:
    """Every nn.Linear inside the decoder layers, by qualified name; embeddings and lm_head are never pruned
    (the head is tied to the embeddings in SmolLM2, and both are lookups, not the bulk of the matmuls)."""
    layers = decoder_layers(model)
    inside = {id(m) for layer in layers for m in layer.modules()}
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and id(m) in inside}


def check_drop(drop: int, num_layers: int | None = None) -> None:
    """K >= 1 always; K below the model's depth once it is known (`num_layers`): at least one layer stays."""
    if drop < 1:
        raise UserError(f"--drop {drop}: pass how many decoder layers to remove, at least 1")
    if num_layers is not None and drop >= num_layers:
        raise UserError(
            f"--drop {drop} would remove every decoder layer (the model has {num_layers}); pass at most {num_layers - 1}"
        )


def drop_decoder_layers(model, remove: list[int]) -> list[int]:
    """Remove the decoder layers at indices `remove` in place; returns the indices (in the old model) kept."""
    layers = decoder_layers(model)
    check_drop(len(set(remove)), len(layers))
    kept = [i for i in range(len(layers)) if i not in set(remove)]
    new = torch.nn.ModuleList([layers[i] for i in kept])
    for module in model.modules():  # swap the list where it hangs (model.model.layers for LLaMA)
        for name, child in list(module.named_children()):
            if child is layers:
                setattr(module, name, new)
    for new_idx, layer in enumerate(new):
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_idx  # type: ignore[assignment]  # an int (the KV-cache slot), not a submodule
    config = model.config
    config.num_hidden_layers = len(kept)
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (sliding / full)
        config.layer_types = [config.layer_types[i] for i in kept]
    return kept
