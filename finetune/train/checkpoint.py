"""Checkpoints in the project's own format: safetensors + JSON only, so resuming never unpickles.

A checkpoint `checkpoint-<step>/` holds
    model.safetensors, model_1.safetensors, ...  weights (the trainable ones for the loop: a LoRA checkpoint is MBs)
    optimizer.safetensors, optimizer_1...        optimizer state dicts           } tensors + JSON skeleton
    <name>.safetensors                           registered objects (scheduler,  } (finetune/train/state.py),
                                                 EMA, unfreezer), GradScaler     } written by the main process
    rng_<rank>.safetensors, <name>_<rank>...     per-process RNG (python, numpy, torch, CUDA) and per-process objects
    trainer_state.json                           step, data position, best metric (written last)
It appears only once complete: every process writes into `.tmp-checkpoint-<step>`, then the main
process renames it. Loading reads and checks every file before any of it touches the model, so a
bad checkpoint fails in one line naming the file and leaves the run untouched; a file that is a
pickle (an accelerate-format checkpoint, *.pkl, *.bin, *.pt) is refused, never opened.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import DistributedType
from safetensors import safe_open
from safetensors.torch import save_file

from finetune.errors import UserError
from finetune.io import atomic_write_json
from finetune.train.state import load_state_file, save_state_file

STATE_FILE = "trainer_state.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")
# finetune/io.py's temporaries: mkstemp/mkdtemp names `.<name>.<8 random chars>.tmp`, atomic_dir's `.<name>.old`
_IO_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
_IO_OLD = re.compile(r"^\.(?P<name>.+)\.old$")


class RefusedCheckpoint(UserError):
    """The checkpoint holds a pickle: loading it could run foreign code."""


class CorruptCheckpoint(UserError):
    """A checkpoint file is missing, truncated or does not fit the model; resume=latest tries an older one."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"{reason}; resume from another checkpoint (train.resume=latest picks the newest usable one)")


@dataclass
class Checkpointed:
    """What a run's checkpoints save and restore, besides trainer_state.json."""

    models: list  # (prepared) modules: model.safetensors, model_1.safetensors, ...
    optimizers: list  # (prepared) optimizers: optimizer.safetensors, optimizer_1.safetensors, ...
    objects: dict[str, Any] = field(default_factory=dict)  # state_dict/load_state_dict objects equal on every process
    rank_objects: dict[str, Any] = field(
        default_factory=dict
    )  # objects whose state differs per process (seeded per rank)
    only: list | None = None  # parameters to save (frozen ones come back from the base model); None: all + buffers


def _indexed(base: str, i: int) -> str:
    return f"{base}.safetensors" if i == 0 else f"{base}_{i}.safetensors"


def _saved_names(module: torch.nn.Module, only: list | None) -> list[str]:
    """State-dict keys a checkpoint holds: the chosen parameters (tied ones once), plus buffers when saving all."""
    ids = None if only is None else {id(p) for p in only}
    names = [n for n, p in module.named_parameters() if ids is None or id(p) in ids]
    if ids is None:
        persistent = module.state_dict(keep_vars=True).keys()
        names += [n for n, _ in module.named_buffers() if n in persistent]
    return names


def _model_weights(accelerator, model, only) -> dict[str, torch.Tensor]:
    module = accelerator.unwrap_model(model)
    sd = module.state_dict()
    return {n: sd[n].detach().cpu().contiguous() for n in _saved_names(module, only)}


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint directories (renamed into place, so written whole), oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _CKPT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def check_output_dir(output_dir: str | Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to mix a new run into a directory that holds another run's checkpoints."""
    if resume or overwrite:
        return
    ckpts = list_checkpoints(output_dir)
    if ckpts:
        raise UserError(
            f"output_dir '{output_dir}' already holds checkpoints of another run ({ckpts[-1].name}); "
            "pass train.resume=latest to continue it, train.overwrite_output_dir=true to replace it, "
            "or choose another train.output_dir"
        )


def params_finite(params) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


def _rng_state() -> dict:
    legacy = np.random.get_state(legacy=True)  # the default, spelled out: numpy's stub types the bare call as a dict
    if isinstance(legacy, dict):  # only a non-MT19937 bit generator gives a dict; np.random's global one is MT19937
        raise RuntimeError("numpy's global RandomState is not MT19937; its state cannot be checkpointed")
    kind, keys, pos, has_gauss, gauss = legacy
    state = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_supported(accelerator) -> None:
    """Sharded runs hold partial weights and optimizer states per process: this format stores whole ones."""
    kind = accelerator.distributed_type
    if kind in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise UserError(
            f"checkpoints support single-process and DDP runs, not {kind.value}; set train.save_every=0 "
            "and train.resume=null, or launch without sharding"
        )


def _scaler(accelerator):
    return getattr(accelerator, "scaler", None)  # accelerate's fp16 GradScaler, when it has one


def save_checkpoint(
    accelerator, output_dir: str | Path, step: int, state: dict, keep_last: int, what: Checkpointed
) -> Path:
    """Write `what` + trainer `state` as checkpoint-<step> (atomically); rotate old checkpoints."""
    _check_supported(accelerator)
    out = Path(output_dir)
    tmp = out / f".tmp-checkpoint-{step}"
    final = out / f"checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    if accelerator.is_main_process:  # shared state: equal on every process under DDP
        for i, model in enumerate(what.models):
            save_file(
                _model_weights(accelerator, model, what.only),
                str(tmp / _indexed("model", i)),
                metadata={"format": "pt"},
            )
        for i, opt in enumerate(what.optimizers):
            save_state_file(tmp / _indexed("optimizer", i), opt.state_dict())
        for name, obj in what.objects.items():
            save_state_file(tmp / f"{name}.safetensors", obj.state_dict())
        if _scaler(accelerator) is not None:
            save_state_file(tmp / "scaler.safetensors", _scaler(accelerator).state_dict())
    save_state_file(tmp / f"rng_{rank}.safetensors", _rng_state())
    for name, obj in what.rank_objects.items():
        save_state_file(tmp / f"{name}_{rank}.safetensors", obj.state_dict())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, state)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if keep_last > 0:
            for old in list_checkpoints(out)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _refuse_pickles(path: Path) -> None:
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        if f.suffix.lower() in PICKLE_SUFFIXES or _looks_pickled(f):
            raise RefusedCheckpoint(
                f"checkpoint {path} holds {f.relative_to(path)}, a pickle: finetune loads only safetensors/JSON "
                "checkpoints and never unpickles one (it can run foreign code); resume from a checkpoint this "
                "version wrote, or start again with train.overwrite_output_dir=true"
            )


def _looks_pickled(f: Path) -> bool:
    """A pickle (protocol 2+) or torch.save's zip, whatever the file is called (only to name it: nothing unpickles)."""
    with open(f, "rb") as fh:
        head = fh.read(8)
    if f.suffix == ".safetensors" and len(head) == 8 and int.from_bytes(head, "little") <= f.stat().st_size - 8:
        return False  # a plausible safetensors header length, whose first byte may well be 0x80
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head[:4] == b"PK\x03\x04"


def _corrupt(f: Path, problem: str) -> CorruptCheckpoint:
    problem = " ".join(str(problem).split())  # one line, whatever the library said
    return CorruptCheckpoint(f"checkpoint file {f} {problem}")


def _read(f: Path, reader) -> Any:
    if not f.is_file():
        raise _corrupt(f, "is missing")
    try:
        return reader(f)
    except Exception as e:  # safetensors, JSON and skeleton errors all mean the same: unusable file
        raise _corrupt(f, f"is unreadable ({type(e).__name__}: {e})") from None


def _read_weights(f: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(f), framework="pt", device="cpu") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def _read_trainer_state(f: Path, world: int) -> dict:
    state = _read(f, lambda p: json.loads(p.read_text()))
    keys = ("global_step", "epoch", "position")
    if not isinstance(state, dict) or not all(isinstance(state.get(k), int) and state[k] >= 0 for k in keys):
        raise _corrupt(f, f"lacks the non-negative integers {', '.join(keys)}")
    if state.get("world_size", world) != world:
        raise UserError(
            f"checkpoint {f.parent} was written by {state['world_size']} processes, this run has {world}; "
            f"resume with --num_processes {state['world_size']} (the data order depends on it)"
        )
    return state


def _check_weights(f: Path, saved: dict, module, only) -> None:
    live = module.state_dict()
    expected = _saved_names(module, only)
    missing, extra = [n for n in expected if n not in saved], [n for n in saved if n not in expected]
    if missing or extra:
        raise _corrupt(
            f,
            f"does not fit the model: {len(missing)} weights missing (e.g. {(missing or extra)[0]})"
            f"{f', {len(extra)} unknown' if extra else ''}; was the model or method config changed?",
        )
    for n in expected:
        if saved[n].shape != live[n].shape:
            raise _corrupt(
                f,
                f"does not fit the model: {n} has shape {list(saved[n].shape)}, the model's is "
                f"{list(live[n].shape)} (was the model or method config changed, e.g. lora.r?)",
            )


def _check_optimizer(f: Path, saved: Any, optimizer) -> None:
    """The checks torch's load_state_dict skips: per-parameter state shapes (Adam moments, SGD momentum)."""
    if not (
        isinstance(saved, dict) and isinstance(saved.get("state"), dict) and isinstance(saved.get("param_groups"), list)
    ):
        raise _corrupt(f, "is not an optimizer state (no 'state' and 'param_groups')")
    groups = optimizer.param_groups
    sizes = [len(g.get("params", [])) for g in saved["param_groups"] if isinstance(g, dict)]
    if sizes != [len(g["params"]) for g in groups]:
        raise _corrupt(
            f,
            f"has parameter groups of sizes {sizes}, the optimizer {[len(g['params']) for g in groups]}; "
            "was the model, method or optimizer config changed?",
        )
    ids = [i for g in saved["param_groups"] for i in g["params"]]
    params = dict(zip(ids, (p for g in groups for p in g["params"])))
    for i, st in saved["state"].items():
        if i not in params or not isinstance(st, dict):
            raise _corrupt(f, f"holds state for unknown parameter {i!r}")
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != params[i].shape:
                raise _corrupt(
                    f, f"holds {k} of shape {list(v.shape)} for a parameter of shape {list(params[i].shape)}"
                )


def _read_all(accelerator, path: Path, what: Checkpointed) -> dict:
    """Every file of `path`, read and checked against the live run; nothing is applied yet."""
    _refuse_pickles(path)
    rank = accelerator.process_index
    loaded: dict[str, Any] = {
        "state": _read_trainer_state(path / STATE_FILE, accelerator.num_processes),
        "models": [],
        "optimizers": [],
    }
    for i, model in enumerate(what.models):
        f = path / _indexed("model", i)
        weights = _read(f, _read_weights)
        _check_weights(f, weights, accelerator.unwrap_model(model), what.only)
        loaded["models"].append(weights)
    for i, opt in enumerate(what.optimizers):
        f = path / _indexed("optimizer", i)
        loaded["optimizers"].append(_read(f, load_state_file))
        _check_optimizer(f, loaded["optimizers"][-1], opt)
    loaded["objects"] = {n: _read(path / f"{n}.safetensors", load_state_file) for n in what.objects}
    loaded["rank_objects"] = {n: _read(path / f"{n}_{rank}.safetensors", load_state_file) for n in what.rank_objects}
    scaler = path / "scaler.safetensors"
    loaded["scaler"] = _read(scaler, load_state_file) if _scaler(accelerator) is not None and scaler.exists() else None
    f = path / f"rng_{rank}.safetensors"
    loaded["rng"] = _read(f, load_state_file)
    if not (isinstance(loaded["rng"], dict) and {"python", "numpy", "torch"} <= loaded["rng"].keys()):
        raise _corrupt(f, "lacks the python/numpy/torch RNG states")
    return loaded


def _agree(accelerator, ok: bool) -> bool:
    """True when every process read its files: they must take the same checkpoint (or fail together)."""
    if accelerator.num_processes == 1:
        return ok
    flag = torch.tensor(float(ok), device=accelerator.device)
    return int(accelerator.reduce(flag, reduction="sum")) == accelerator.num_processes


def load_checkpoint(accelerator, path: Path, what: Checkpointed) -> dict:
    """Check every file of checkpoint `path`, then restore `what` and the RNG; return the trainer state."""
    _check_supported(accelerator)
    try:
        loaded, error = _read_all(accelerator, path, what), None
    except UserError as e:
        loaded, error = None, e
    agreed = _agree(accelerator, error is None)  # every process takes part, whether its own read failed or not
    if loaded is None or not agreed:  # None: this process's read failed, with `error`
        raise error or CorruptCheckpoint(f"checkpoint {path} is unusable on another process (see its line)")
    # objects first: one that refuses its state (a changed config) fails before the model is touched
    for name, obj in what.objects.items():
        _load_object(obj, loaded["objects"][name], path / f"{name}.safetensors")
    for name, obj in what.rank_objects.items():
        _load_object(obj, loaded["rank_objects"][name], path / f"{name}_{accelerator.process_index}.safetensors")
    for model, weights in zip(what.models, loaded["models"]):
        accelerator.unwrap_model(model).load_state_dict(weights, strict=False)  # checked: exactly the saved names
    for opt, state in zip(what.optimizers, loaded["optimizers"]):
        opt.load_state_dict(state)
    if loaded["scaler"] is not None:
        _scaler(accelerator).load_state_dict(loaded["scaler"])
    _set_rng_state(loaded["rng"])
    return loaded["state"]


def _load_object(obj, state: Any, f: Path) -> None:
    try:
        obj.load_state_dict(state)
    except UserError:
        raise
    except Exception as e:  # e.g. diffusers' EMA: ValueError("shadow_params must be a list")
        raise _corrupt(f, f"does not fit {type(obj).__name__} ({type(e).__name__}: {e})") from None


def _warn(accelerator, message: str) -> None:
    if accelerator.is_main_process:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def resume_checkpoint(
    accelerator, output_dir: str | Path, resume: str | None, what: Checkpointed
) -> tuple[Path, dict] | None:
    """Restore `resume` (None, "latest" or a checkpoint path) into `what`: (path, trainer state), or None.

    "latest" skips checkpoints that are missing a file, truncated or no longer fit the model, newest
    first, with a one-line warning each; a checkpoint holding a pickle is refused outright.
    """
    if not resume:
        return None
    if resume != "latest":
        path = Path(resume)
        if not path.is_dir() or not (path / STATE_FILE).is_file():
            raise UserError(
                f"resume checkpoint '{resume}' is not a complete checkpoint (no {STATE_FILE}); "
                "pass train.resume=latest or a checkpoint-<step> directory"
            )
        return path, load_checkpoint(accelerator, path, what)
    ckpts = list_checkpoints(output_dir)
    for path in reversed(ckpts):
        try:
            return path, load_checkpoint(accelerator, path, what)
        except CorruptCheckpoint as e:
            _warn(accelerator, f"skipping {path.name}: {e.reason}; trying the checkpoint before it")
    if ckpts:
        raise UserError(
            f"no usable checkpoint in {output_dir} ({len(ckpts)} tried, see the warnings); "
            "pass a checkpoint path as train.resume, or train.overwrite_output_dir=true to start again"
        )
    return None  # nothing saved yet: start fresh


def remove_partial(output_dir: str | Path) -> None:
    """Remove what a killed run left half-written: .tmp-checkpoint-* and finetune/io.py's temporaries."""
    out = Path(output_dir)
    if not out.is_dir():
        return
    for p in out.glob(".tmp-checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)
    remove_io_leftovers(out)


def remove_io_leftovers(out: Path) -> None:
    """Delete `.<name>.<random>.tmp` files/dirs of interrupted atomic writes under `out`.

    A kill inside atomic_dir between moving the old `name` aside (`.<name>.old`) and renaming the new
    one in leaves no `name`: the old one is put back, as if the interrupted write never began.
    """
    for dirpath, dirnames, filenames in os.walk(out):
        here = Path(dirpath)
        for name in filenames + dirnames:
            p = here / name
            if _IO_TEMP.match(name):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            elif (m := _IO_OLD.match(name)) and p.is_dir():
                target = here / m.group("name")
                shutil.rmtree(p, ignore_errors=True) if target.exists() else os.replace(p, target)
        dirnames[:] = [d for d in dirnames if (here / d).is_dir()]  # do not walk into what was just removed
