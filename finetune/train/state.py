"""Training state without pickle: a nested state dict <-> safetensors tensors + a JSON skeleton.

Optimizer, scheduler, GradScaler, EMA and RNG states are nests of dicts (with int keys), lists,
tuples, numbers (inf included), strings and tensors. torch.save stores them with pickle, which runs
code when loaded. Here the tensors go to safetensors and everything else to a JSON skeleton that
names them, stored in the same file's metadata, so the two cannot get out of step; `join_state`
rebuilds the exact structure (tuples stay tuples, int keys stay ints). Written by hand: neither
safetensors nor accelerate stores non-tensor state without pickle.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SKELETON_KEY = "finetune_state"  # safetensors metadata key holding the JSON skeleton
TENSOR, TUPLE, FLOAT, DICT = "__tensor__", "__tuple__", "__float__", "__dict__"
_TAGS = (TENSOR, TUPLE, FLOAT, DICT)


def split_state(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """(tensors by key, JSON-able skeleton referencing them) for a nested state; TypeError names an unstorable value."""
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}  # id(tensor) -> key: one tensor referenced twice is stored once
    storages: set[int] = set()

    def tensor(t: torch.Tensor) -> dict:
        ident = id(t)
        if ident not in seen:
            t = t.detach().cpu().contiguous()
            ptr = t.untyped_storage().data_ptr()
            if ptr in storages and t.numel():  # safetensors refuses two views of one storage
                t = t.clone()
            storages.add(t.untyped_storage().data_ptr())
            seen[ident] = key = str(len(tensors))
            tensors[key] = t
        return {TENSOR: seen[ident]}

    def enc(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            return tensor(x)
        if x is None or isinstance(x, (bool, int, str)):
            return x
        if isinstance(x, float):
            return x if math.isfinite(x) else {FLOAT: repr(x)}  # strict JSON has no inf/nan
        if isinstance(x, tuple):
            return {TUPLE: [enc(v, f"{path}/{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{path}/{i}") for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x) and not (len(x) == 1 and next(iter(x)) in _TAGS):
                return {k: enc(v, f"{path}/{k}") for k, v in x.items()}
            return {DICT: [[enc(k, f"{path}/<key>"), enc(v, f"{path}/{k}")] for k, v in x.items()]}
        raise TypeError(
            f"cannot store a {type(x).__name__} at {path or '/'} in a checkpoint (tensors, numbers, "
            "strings, None, lists, tuples and dicts only)"
        )

    return tensors, enc(obj, "")


def join_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The nested state `split_state` split; ValueError when the skeleton is malformed or names a missing tensor."""

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if not isinstance(x, dict):
            return x
        if len(x) == 1 and next(iter(x)) in _TAGS:
            ((tag, v),) = x.items()
            if tag == TENSOR:
                if v not in tensors:
                    raise ValueError(f"the skeleton names tensor {v!r}, which the file lacks")
                return tensors[v]
            if tag == FLOAT:
                if v not in ("inf", "-inf", "nan"):
                    raise ValueError(f"{v!r} is not a non-finite float")
                return float(v)
            if not isinstance(v, list):
                raise ValueError(f"{tag} holds a {type(v).__name__}, not a list")
            if tag == TUPLE:
                return tuple(dec(i) for i in v)
            return {_hashable(dec(k)): dec(val) for k, val in v}
        return {k: dec(v) for k, v in x.items()}

    return dec(skeleton)


def _hashable(key: Any) -> Any:
    if isinstance(key, (list, dict)):
        raise ValueError(f"a dict key cannot be a {type(key).__name__}")
    return key


def save_state_file(path: str | Path, state: Any) -> None:
    """Write `state` as one safetensors file: its tensors, and the JSON skeleton in the metadata."""
    tensors, skeleton = split_state(state)
    meta = {"format": "pt", SKELETON_KEY: json.dumps(skeleton, allow_nan=False, separators=(",", ":"))}
    save_file(tensors, str(path), metadata=meta)


def load_state_file(path: str | Path) -> Any:
    """Read a `save_state_file` file back; safetensors' or ValueError's message says what is wrong."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if SKELETON_KEY not in meta:
        raise ValueError(f"no '{SKELETON_KEY}' entry in its metadata (not a finetune state file)")
    return join_state(json.loads(meta[SKELETON_KEY], parse_constant=_no_constant), tensors)


def _no_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")
