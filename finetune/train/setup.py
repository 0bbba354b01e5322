"""Run setup shared by recipes: the accelerator and the output directory."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed

from finetune.config import parse_recipe_args, save_config
from finetune.errors import UserError, discard, on_user_error
from finetune.io import atomic_write_bytes, atomic_write_json
from finetune.train.checkpoint import STATE_FILE, check_output_dir, list_checkpoints


def build_accelerator(seed: int) -> Accelerator:
    """Precision, device and process count come from `accelerate launch` (accelerate_config.yaml) only.

    Accumulation is done by the loop itself (see finetune/train/loop.py), so accelerate's own
    counter stays at 1.
    """
    import torch

    # With no accelerator present, say so: accelerate then runs several launched processes as
    # MULTI_CPU over gloo (`accelerate launch --multi_gpu --num_processes 2` on a CPU machine).
    has_accel = (
        torch.cuda.is_available()
        or torch.backends.mps.is_available()
        or (hasattr(torch, "xpu") and torch.xpu.is_available())
    )
    accelerator = Accelerator(cpu=not has_accel, gradient_accumulation_steps=1, step_scheduler_with_optimizer=False)
    if accelerator.mixed_precision == "fp16" and not accelerator.native_amp:
        # accelerate turns fp16 on only for accelerators; on the CPU it would keep "fp16" as a name and run fp32
        raise UserError(
            "mixed_precision fp16 needs a GPU: on the CPU accelerate runs neither fp16 autocast nor loss "
            "scaling; use --mixed_precision bf16 (CPUs run bf16 autocast) or no"
        )
    set_seed(seed)
    return accelerator


# What a run leaves beside its artifacts that a second run in the same directory would mix with its own (a second
# series appended to metrics.jsonl, an old summary, an old best/): replaced together with the checkpoints.
RUN_STATE = ("metrics.jsonl", "summary.json", "loss_curve.png", "tensorboard", "best", "samples", "conv_backend.json")
_provisional: list = []  # undo steps of start_run until the first optimizer step (see keep_output_dir)


def start_run(accelerator, cfg, train_cfg) -> Path:
    """Check the output directory is ours to use, then write the resolved config beside the outputs.

    A directory holding another run is refused, unless the run resumes from one of its checkpoints or
    `overwrite_output_dir` replaces it (its checkpoints and run state, not the user's other files). A directory this
    call creates is removed again if the run ends in a user error before its first optimizer step: a mistake that
    only shows once the model is built (a rank of 0, a batch larger than the data) leaves nothing behind.
    """
    out = Path(train_cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"train.output_dir '{out}' is a file, not a directory; choose another train.output_dir")
    check_output_dir(out, train_cfg.resume, train_cfg.overwrite_output_dir)
    previous = [name for name in RUN_STATE if (out / name).exists()]
    checkpoints = list_checkpoints(out)
    stale = []
    if train_cfg.overwrite_output_dir:
        stale = previous + [p.name for p in checkpoints]
    elif previous and not (train_cfg.resume and checkpoints):
        if not train_cfg.resume or "summary.json" in previous:
            what = "a finished run" if "summary.json" in previous else "another run"
            raise UserError(
                f"train.output_dir '{out}' already holds {what} ({', '.join(previous)}) and no checkpoint to resume "
                "from; pass train.overwrite_output_dir=true to replace it, or choose another train.output_dir"
            )
        accelerator.print(f"warning: {out} holds a run killed before its first checkpoint; starting it again")
        stale = previous
    created = not out.exists()
    config = out / "config.yaml"
    # a resume refused later (a damaged or foreign checkpoint, a changed LoRA rank) must leave the run's config as it was
    previous_config = config.read_bytes() if config.is_file() and not train_cfg.overwrite_output_dir else None
    accelerator.wait_for_everyone()  # every process has checked the directory before the main one changes it
    if accelerator.is_main_process:
        try:
            for name in stale:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, config)
        except OSError as e:
            raise UserError(
                f"cannot write to train.output_dir '{out}' ({e.strerror}); choose a writable directory"
            ) from None
        if created:
            _provisional.append(on_user_error(lambda: shutil.rmtree(out, ignore_errors=True)))
        elif previous_config is not None:
            _provisional.append(on_user_error(lambda: atomic_write_bytes(config, previous_config)))
    accelerator.wait_for_everyone()
    return out


@dataclass
class Run:
    """A started recipe: its resolved config, the accelerator and the output directory start_run checked."""

    cfg: Any  # the recipe's config dataclass (with a `train` section)
    accelerator: Accelerator
    out: Path

    def train(self, model, optimizer, scheduler, dataset, step_fn: Callable, **options):
        """The one loop (finetune/train/loop.py) on this run's accelerator and `cfg.train`; `options` are the loop's
        other keywords. Items stack with torch.stack unless `collate_fn` says otherwise (tensor datasets)."""
        import torch

        from finetune.train.loop import train

        options.setdefault("collate_fn", torch.stack)
        return train(
            accelerator=self.accelerator,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            dataset=dataset,
            step_fn=step_fn,
            cfg=self.cfg.train,
            **options,
        )


def open_recipe(config_cls: type, argv: list[str] | None, doc: str, validate: Callable[[Any], None]) -> Run:
    """How a recipe with nothing to load before its output directory opens: parse argv/--config into `config_cls`,
    refuse bad combinations (`validate` raises UserError), build the accelerator, then start the run."""
    cfg = parse_recipe_args(config_cls, argv, doc)
    validate(cfg)
    accelerator = build_accelerator(cfg.train.seed)
    return Run(cfg, accelerator, start_run(accelerator, cfg, cfg.train))


def finished_run(train_cfg) -> dict | None:
    """The summary of the run in output_dir when `resume` would continue a run that already reached max_steps and
    wrote its summary (a finished job re-run with resume=latest): nothing is left to do, and redoing the export would
    replace the run's measured figures with those of a process that trained no step. A run killed during its final
    export has no summary yet: it resumes, evaluates and exports. A finished run is said in one line."""
    out = Path(train_cfg.output_dir)
    if train_cfg.resume != "latest" or not (out / "summary.json").is_file() or not (ckpts := list_checkpoints(out)):
        return None
    try:
        step = json.loads((ckpts[-1] / STATE_FILE).read_text())["global_step"]
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the resume path reports a damaged checkpoint in its own words
    if step < train_cfg.max_steps:
        return None
    print(
        f"{train_cfg.output_dir} holds this run, finished at step {step}; nothing to do "
        f"(its summary: {train_cfg.output_dir}/summary.json; raise train.max_steps to train on)"
    )
    return summary


def keep_output_dir() -> None:
    """The run has trained a step: from now on its directory stays, whatever happens (the loop calls this)."""
    while _provisional:
        discard(_provisional.pop())


CONV_BACKENDS = ("auto", "onednn", "native")


def cpu_conv_backend(choice: str, probe, accelerator, record: Path, reuse: bool = False) -> str:
    """The CPU convolution kernels to train with: "onednn" (torch's default) or "native" (im2col + BLAS).

    oneDNN pays a fixed cost per call that pays off on big feature maps but dominates small ones: on a 2-core CPU
    a 3x3 convolution of 32 channels on 2x8x8 (the tiny SD at 64 px), channels-last, takes 269 us forward +
    backward with oneDNN and 141 us natively. "auto" times `probe()` (one forward + backward of the real model on
    a batch of the real shape) under each, keeps the faster and writes it to `record`; the main process decides
    for all. With `reuse` (a resumed run) a choice already in `record` is taken again, so a resumed run computes
    with the same kernels as the run it continues. Not a CUDA setting: on GPUs this returns "cudnn" and changes
    nothing. Both are timed in the model's layout as it is (the SD recipe: contiguous unless channels-last is fixed
    in its config), so oneDNN runs without its channels-last gain there (5% on the tiny SD) and close calls go to
    native. Apply the result with `with conv_backend(result):` around what should run on it.
    """
    import time

    import torch
    from accelerate.utils import broadcast_object_list

    if choice not in CONV_BACKENDS:
        raise UserError(f"conv backend {choice!r} is unknown; choose one of {', '.join(CONV_BACKENDS)}")
    if accelerator.device.type != "cpu":
        return "cudnn" if accelerator.device.type == "cuda" else accelerator.device.type
    if choice == "auto" and reuse and record.is_file():
        choice = json.loads(record.read_text())["conv_backend"]
        accelerator.print(f"cpu conv backend: {choice}, as in the run this one resumes ({record})")
    elif choice == "auto":
        seconds: dict[str, float] = {}
        with torch.random.fork_rng():  # the probe must not shift the training noise
            for name in ("onednn", "native"):
                with conv_backend(name):
                    probe()  # warm-up: oneDNN creates its kernels on first use
                    runs = []
                    for _ in range(2):
                        start = time.perf_counter()
                        probe()
                        runs.append(time.perf_counter() - start)
                    seconds[name] = min(runs)
        choice = min(seconds, key=seconds.__getitem__)
        accelerator.print(
            "cpu conv backend: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items()) + f" -> {choice}"
        )
        choice = broadcast_object_list([choice])[0] if accelerator.num_processes > 1 else choice
        if accelerator.is_main_process:
            atomic_write_json(
                record, {"conv_backend": choice, "probe_ms": {k: round(v * 1e3, 2) for k, v in seconds.items()}}
            )
    return choice


def uses_channels_last(choice: bool | str, conv: str) -> bool:
    """Whether the UNet trains in channels-last layout: `choice` true/false as given; "auto": yes on GPUs (cuDNN's
    fast path) and with oneDNN (its fast path: 5% more steps/s on the tiny SD), no with the native CPU kernels,
    which run a whole step no faster in it (tiny SD, 64 px: 34.3 vs 33.6 steps/s) while the layout's copy of the
    conv weights stays resident beside the memory-mapped checkpoint they came from (3.6 MiB more peak RSS there)."""
    if choice == "auto":
        return conv != "native"
    return bool(choice)


@contextlib.contextmanager
def conv_backend(name: str):
    """Inside the block CPU convolutions run on `name`'s kernels ("native" turns oneDNN off; anything else leaves it on).
    Only oneDNN's on/off switch changes (torch.backends.mkldnn.flags would also reset its precision flags)."""
    import torch

    before = torch.backends.mkldnn.set_flags(name != "native", None, None, None)[0]
    try:
        yield
    finally:
        torch.backends.mkldnn.set_flags(before, None, None, None)
