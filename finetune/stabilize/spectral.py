"""Spectral normalisation (Miyato et al. 2018) applied across a network, via torch's parametrization."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from finetune.errors import UserError

DEFAULT_TYPES = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)


def apply_spectral_norm(module: nn.Module, types: tuple[type, ...] = DEFAULT_TYPES) -> nn.Module:
    """Register torch's spectral_norm parametrization on the weight of every submodule of the given types.

    In place; returns `module`. Each weight is divided by its largest singular value, estimated by
    one power iteration per forward pass in training mode. Already-normalised weights are skipped.
    """
    matched = 0
    for sub in list(module.modules()):
        if not isinstance(sub, types) or getattr(sub, "weight", None) is None:
            continue
        matched += 1
        if parametrize.is_parametrized(sub, "weight"):
            continue
        spectral_norm(sub)
    if matched == 0:
        names = ", ".join(t.__name__ for t in types)
        raise UserError(
            f"apply_spectral_norm found no {names} layer in {type(module).__name__}; pass the layer types it has"
        )
    return module


def largest_singular_value(module: nn.Module) -> float:
    """Largest singular value of a layer's weight seen as a (out, -1) matrix (dim 1 first for ConvTranspose)."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):  # a submodule named `weight`: not a layer with one weight matrix
        raise TypeError(f"largest_singular_value needs a layer with a weight tensor, got {type(module).__name__}")
    w = weight.detach()
    if isinstance(module, nn.ConvTranspose2d):
        w = w.transpose(0, 1)
    return float(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1).float(), ord=2))
