"""The one training loop for every non-GAN recipe.

A recipe builds the accelerator, model, optimizer, scheduler and data, defines `step_fn(batch)`
(the loss, written inline so the maths is visible) and calls `train`. The loop owns what must be
done the same way everywhere: deterministic resumable data order, gradient accumulation,
precision, clipping, the NaN/Inf guard, optimizer/scheduler steps, logging, evaluation, early
stopping, best-model saves, atomic checkpoints, and each step's time and the peak memory (TrainResult).

Accumulation is explicit (`accelerator.no_sync` on all but the last micro-batch of a window) so
the loss normalisation is visible: a mean loss is divided by the number of micro-batches; a summed
per-token loss (when `count_items` is given) is divided by the trained-token count of the whole
window across all processes, times the world size because DDP averages gradients.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate.utils import send_to_device
from tqdm.auto import tqdm

from finetune.errors import UserError
from finetune.train.batches import BatchesFn, iterate_batches, shuffled_batches
from finetune.train.checkpoint import (
    Checkpointed,
    check_output_dir,
    params_finite,
    remove_partial,
    resume_checkpoint,
    save_checkpoint,
)
from finetune.train.logging import MetricsLogger, plot_loss_curve
from finetune.train.setup import keep_output_dir
from finetune.train.timing import peak_memory, synced_clock


@dataclass
class TrainConfig:
    output_dir: str = "outputs/run"  # where checkpoints, metrics, config.yaml and artifacts go
    seed: int = 0  # seeds model init, data order and noise
    max_steps: int = 100  # optimizer steps to train for
    batch_size: int = 4  # micro-batch size per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0  # clip the global gradient norm to this; 0 disables clipping
    log_every: int = 10  # log train loss/lr/grad norm every N optimizer steps
    eval_every: int = 0  # evaluate every N steps (0: only at the end)
    save_every: int = 0  # checkpoint every N steps (0: no checkpoints)
    keep_last: int = 2  # complete checkpoints to keep (older ones are deleted)
    resume: str | None = None  # "latest" or a checkpoint-<step> directory to continue from
    overwrite_output_dir: bool = False  # allow replacing a directory that holds another run's checkpoints
    early_stopping_patience: int = 0  # evaluations without improvement before stopping (0: off)
    monitor: str = "val_loss"  # eval metric used for best model, early stopping and plateau schedulers
    monitor_mode: Literal["min", "max"] = "min"  # whether lower or higher `monitor` is better
    save_best: bool = True  # save the best model (by `monitor`) to <output_dir>/best
    max_consecutive_nonfinite: int = 10  # stop after this many non-finite (or exploding) steps in a row
    divergence_factor: float = 1000.0  # a loss above this many times the run's early losses counts as diverged (0: off)
    tensorboard: bool = True  # also log to <output_dir>/tensorboard when tensorboard is installed
    progress_bar: bool = True  # show a tqdm progress bar


@dataclass
class Hooks:
    """Named points where a method changes the loop's behaviour (no callback framework)."""

    before_step: Callable[[int, int], None] | None = None  # (step, epoch): e.g. gradual unfreezing
    before_optimizer_step: Callable[[int], None] | None = None  # after backward, before clipping
    after_optimizer_step: Callable[[int], None] | None = None  # e.g. restore frozen embedding rows
    on_eval: Callable[[int, dict, bool], None] | None = None  # (step, metrics, improved)


@dataclass
class TrainResult:
    global_step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    nonfinite_steps: int = 0
    last_eval: dict = field(default_factory=dict)
    trained_steps: int = 0  # optimizer steps this call ran: 0 when it resumed a run already at max_steps
    step_seconds: list[float] = field(
        default_factory=list
    )  # each of those steps: data, forward, backward, update, hooks
    train_seconds: float = 0.0  # the loop's time over those steps (logging included), evaluations and checkpoints not
    peak_memory: dict | None = None  # after the last of them: GPU max_memory_allocated, or the process's peak RSS


# The smallest value each loop counter can work with, and what the key means (for the error line). Below these
# the loop misbehaves far from the cause (grad_accum=0: "a training window has no trained tokens").
TRAIN_MINIMUMS = {
    "max_steps": (1, "optimizer steps to train for"),
    "batch_size": (1, "samples per micro-batch"),
    "grad_accum": (1, "micro-batches per optimizer step; 1 means no accumulation"),
    "log_every": (1, "log every N optimizer steps"),
    "eval_every": (0, "0 evaluates only at the end"),
    "save_every": (0, "0 writes no checkpoints"),
    "keep_last": (0, "0 keeps every checkpoint"),
    "early_stopping_patience": (0, "0 turns early stopping off"),
    "max_consecutive_nonfinite": (0, "non-finite steps in a row before the run stops"),
    "max_grad_norm": (0, "0 disables clipping"),
    "divergence_factor": (0, "0 turns the exploding-loss check off"),
}


def validate_train_config(cfg, section: str = "train") -> None:
    """Refuse a loop counter below its minimum in one line naming `section.key`, before any model loads.

    Duck-typed: a recipe's own train section (the GAN's) is checked on the keys it shares with TrainConfig.
    """
    for key, (low, meaning) in TRAIN_MINIMUMS.items():
        value = getattr(cfg, key, None)
        if value is not None and not value >= low:  # `not >=` also refuses a NaN max_grad_norm
            raise UserError(f"{section}.{key}={value} must be >= {low} ({meaning}); fix {section}.{key} in the config")


class NonFiniteTraining(UserError):
    """Training produced NaN/Inf losses or gradients too many times in a row."""


def weight_dtype(accelerator) -> torch.dtype:
    """The dtype frozen weights may be stored in under the accelerator's mixed precision."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def _optimizer_params(optimizer) -> list[torch.nn.Parameter]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def trainable_only_checkpoints(model, optimizer, scheduler, objects: tuple) -> Checkpointed:
    """Checkpoints keep only the weights the optimizer can change (the LoRA/prompt/unfrozen ones).

    Frozen weights never change, so saving them (540 MB for SmolLM2 under LoRA) buys nothing;
    resume rebuilds them from the base model and loads exactly the saved names.
    """
    named = {"scheduler": scheduler} if scheduler is not None else {}  # stepped by us, not prepared (see train)
    named.update({f"object_{i}": obj for i, obj in enumerate(objects)})
    return Checkpointed([model], [optimizer], named, only=_optimizer_params(optimizer))


def _is_plateau(scheduler) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


class Divergence:
    """Tells a diverged loss from a noisy one: non-finite, or above `factor` times the median of the run's first
    `warmup` losses (those seen so far while fewer). Weights blown up to ~1e30 stay finite, so a NaN check alone lets
    them through; a diffusion or LM loss varies by a few times from batch to batch, not by orders of magnitude."""

    def __init__(self, factor: float, warmup: int = 10):
        self.factor, self.warmup = factor, warmup
        self.early: list[float] = []

    def diverged(self, value: float) -> bool:
        if not math.isfinite(value):
            return True
        if self.early and self.factor > 0:
            reference = sorted(self.early)[(len(self.early) - 1) // 2]
            if reference > 0 and value > self.factor * reference:
                return True
        if len(self.early) < self.warmup:
            self.early.append(value)
        return False


def eval_diverged(metrics: dict, monitor: str, best: float | None, mode: str, factor: float) -> str | None:
    """Why an evaluation says the weights diverged (a non-finite metric, or the monitored loss `factor` times the
    best one), or None."""
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not math.isfinite(v):
            return f"{k} = {v}"
    value = metrics.get(monitor)
    if mode == "min" and factor > 0 and value is not None and best is not None and best > 0 and value > factor * best:
        return f"{monitor} = {value:.4g}, {value / best:.0f} times the best {best:.4g}"
    return None


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def train(
    *,
    accelerator,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    dataset,
    collate_fn: Callable,
    step_fn: Callable[[Any], Any],
    cfg: TrainConfig,
    eval_fn: Callable[[int], dict] | None = None,
    save_fn: Callable[[Path], object] | None = None,
    hooks: Hooks | None = None,
    count_items: Callable[[Any], int] | None = None,
    batches_fn: BatchesFn | None = None,
    checkpoint_objects: tuple = (),
) -> TrainResult:
    """Train `model` (already `accelerator.prepare`d with `optimizer`) for `cfg.max_steps` steps.

    step_fn(batch) returns a loss tensor, or (loss, dict_of_extra_logs). With `count_items` the loss
    must be a SUM over the batch's items (e.g. trained tokens); without it, a MEAN.
    save_fn(dir) writes the recipe's artifacts into `dir` (main process only), used for `best/`.
    """
    hooks = hooks or Hooks()
    out = Path(cfg.output_dir)
    check_output_dir(out, cfg.resume, cfg.overwrite_output_dir)
    world, rank = accelerator.num_processes, accelerator.process_index
    saved = trainable_only_checkpoints(model, optimizer, scheduler, checkpoint_objects)
    logger = MetricsLogger(out, accelerator.is_main_process, cfg.tensorboard)
    batches_fn = batches_fn or shuffled_batches(len(dataset), cfg.batch_size, cfg.seed)

    result = TrainResult()
    epoch, position, consecutive_bad, evals_since_best = 0, 0, 0, 0
    divergence, loss_bad, loss_value = Divergence(cfg.divergence_factor), False, float("nan")
    if accelerator.is_main_process:
        remove_partial(out)
    resumed = resume_checkpoint(accelerator, out, cfg.resume, saved)
    if resumed is not None:
        resume_from, state = resumed
        result.global_step = state["global_step"]
        epoch, position = state["epoch"], state["position"]
        result.best_metric, result.best_step = state.get("best_metric"), state.get("best_step")
        result.nonfinite_steps = state.get("nonfinite_steps", 0)
        evals_since_best = state.get("evals_since_best", 0)
        divergence.early = [float(v) for v in state.get("early_losses", [])]
        # a run resumed at max_steps trains no step but evaluates again (below), so that evaluation is logged once
        logger.truncate_after(result.global_step, redo_eval=result.global_step >= cfg.max_steps)
        accelerator.print(f"resumed from {resume_from} at step {result.global_step}")
    resumed_done = resumed is not None and result.global_step >= cfg.max_steps

    data = iterate_batches(batches_fn, rank, world, epoch, position)
    params = _optimizer_params(optimizer)
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
    bar = tqdm(
        total=cfg.max_steps,
        initial=result.global_step,
        disable=not (cfg.progress_bar and accelerator.is_main_process),
        desc="train",
        dynamic_ncols=True,
    )

    def trainer_state() -> dict:
        return {
            "global_step": result.global_step,
            "epoch": epoch,
            "position": position,
            "best_metric": result.best_metric,
            "best_step": result.best_step,
            "nonfinite_steps": result.nonfinite_steps,
            "evals_since_best": evals_since_best,
            "early_losses": divergence.early,  # the divergence guard's reference: a resumed run judges as before
            "world_size": world,
        }

    def evaluate(step: int, run_eval: Callable[[int], dict]) -> bool:
        """Run `run_eval` (the recipe's eval_fn); return True when early stopping says stop."""
        nonlocal evals_since_best
        model.eval()
        with torch.no_grad():
            metrics = run_eval(step)
        model.train()
        logger.log(step, "eval", **metrics)
        if why := eval_diverged(metrics, cfg.monitor, result.best_metric, cfg.monitor_mode, cfg.divergence_factor):
            # never "best", never checkpointed or exported: the weights on disk stay the last ones that evaluated finite
            raise NonFiniteTraining(
                f"the run diverged at step {step} ({why}); nothing was saved from these weights. "
                "Lower optim.lr or enable train.max_grad_norm, then resume from the last checkpoint"
            )
        result.last_eval = dict(metrics)
        raw = metrics.get(cfg.monitor)
        value = None if raw is None else float(raw)  # None: this evaluation did not measure the monitored metric
        improved = value is not None and _improved(value, result.best_metric, cfg.monitor_mode)
        if scheduler is not None and _is_plateau(scheduler) and value is not None:
            scheduler.step(value)
        if hooks.on_eval:
            hooks.on_eval(step, metrics, improved)
        if improved:
            result.best_metric, result.best_step, evals_since_best = value, step, 0
            if cfg.save_best and save_fn is not None:
                save_artifacts(out / "best", save_fn)
        else:
            evals_since_best += 1
        return cfg.early_stopping_patience > 0 and evals_since_best >= cfg.early_stopping_patience

    def save_artifacts(path: Path, save: Callable[[Path], object]) -> None:
        if not params_finite(params):
            raise NonFiniteTraining("refusing to save non-finite weights; lower optim.lr or enable clipping")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save(path)
        accelerator.wait_for_everyone()

    model.train()
    while result.global_step < cfg.max_steps:
        step, started = result.global_step, time.perf_counter()
        if hooks.before_step:
            hooks.before_step(step, epoch)
        window = []
        for _ in range(cfg.grad_accum):
            epoch, position, indices = next(data)
            window.append(collate_fn([dataset[i] for i in indices]))
        total_items = None
        if count_items is not None:
            n = torch.tensor(float(sum(count_items(b) for b in window)), device=accelerator.device)
            total_items = float(accelerator.reduce(n, reduction="sum"))
            if total_items == 0:
                raise UserError("a training window has no trained tokens; check the data with `finetune inspect-data`")

        # extra logs stay tensors until a log step reads them: float() of a GPU tensor waits for the step to finish
        logged: dict[str, Any] = {}
        loss_total = torch.zeros((), device=accelerator.device)
        for i, batch in enumerate(window):
            batch = send_to_device(batch, accelerator.device)
            sync = i == len(window) - 1
            ctx = contextlib.nullcontext() if sync else accelerator.no_sync(model)
            with ctx, accelerator.autocast():
                output = step_fn(batch)
                loss, extra = output if isinstance(output, tuple) else (output, {})
                scale = (world / total_items) if total_items else (1.0 / len(window))
                accelerator.backward(loss * scale)
            loss_total += loss.detach().float() * (1.0 / total_items if total_items else 1.0 / len(window))
            for k, v in extra.items():
                v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
                logged[k] = logged.get(k, 0.0) + v / len(window)
        # Summed-token losses were divided by the all-process count: sum across ranks; means: average.
        loss_value = float(accelerator.reduce(loss_total, reduction="sum" if total_items else "mean"))

        if hooks.before_optimizer_step:
            hooks.before_optimizer_step(step)
        grad_norm = accelerator.clip_grad_norm_(params, max_norm)  # unscales fp16 grads first
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        loss_bad = divergence.diverged(loss_value)  # the current weights give a non-finite or exploded loss
        finite = math.isfinite(grad_norm) and not loss_bad
        scaler = getattr(accelerator, "scaler", None)
        if loss_bad:
            optimizer.zero_grad(set_to_none=True)  # a diverged loss's gradient must not move the weights
        if finite or scaler is not None:
            optimizer.step()  # with fp16 the GradScaler skips non-finite steps and lowers its scale
        skipped = not finite or accelerator.optimizer_step_was_skipped
        if not skipped and scheduler is not None and not _is_plateau(scheduler):
            scheduler.step()  # not accelerate-prepared: it would step once per process
        optimizer.zero_grad(set_to_none=True)
        if loss_bad and not consecutive_bad and accelerator.is_main_process and (out / f"checkpoint-{step}").is_dir():
            # the weights that gave this loss are the last update's: a checkpoint of them would resume a dead run
            shutil.rmtree(out / f"checkpoint-{step}")
            accelerator.print(f"removed checkpoint-{step}: its weights give a non-finite or exploding loss")
        if skipped:
            result.nonfinite_steps += 1
            consecutive_bad += 1
            if consecutive_bad >= cfg.max_consecutive_nonfinite:
                raise NonFiniteTraining(
                    f"{consecutive_bad} non-finite or exploding steps in a row (loss {loss_value:.4g}, grad norm "
                    f"{grad_norm:.4g}); nothing was saved from these weights; "
                    "lower optim.lr, enable train.max_grad_norm, or use bf16 instead of fp16"
                )
        else:
            consecutive_bad = 0
            if hooks.after_optimizer_step:
                hooks.after_optimizer_step(step)
        result.global_step = step = step + 1
        result.trained_steps += 1
        keep_output_dir()  # a trained step: a later error no longer removes the run's directory
        result.step_seconds.append(synced_clock() - started)
        result.peak_memory = peak_memory()

        lr = optimizer.param_groups[0]["lr"]
        if step % cfg.log_every == 0 or step == cfg.max_steps or skipped:
            extra_logs = {"loss_scale": scaler.get_scale()} if scaler is not None else {}
            logger.log(
                step,
                "train",
                loss=loss_value,
                lr=lr,
                grad_norm=grad_norm,
                epoch=epoch,
                skipped=skipped,
                nonfinite_steps=result.nonfinite_steps,
                **{k: float(v) for k, v in logged.items()},
                **extra_logs,
            )
        # refresh=False: tqdm redraws at its own pace (mininterval), not once more every step just for the postfix
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)
        bar.update(1)
        result.train_seconds += (
            time.perf_counter() - started
        )  # what follows, evaluation and checkpoint, is not training

        stop = False
        is_last = step == cfg.max_steps
        if eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or is_last):
            stop = evaluate(step, eval_fn)
        if cfg.save_every and loss_bad and step % cfg.save_every == 0:
            accelerator.print(f"step {step}: no checkpoint, the loss is non-finite or exploding ({loss_value:.4g})")
        elif cfg.save_every and (step % cfg.save_every == 0 or (stop and not is_last)):
            if not params_finite(params):
                raise NonFiniteTraining("weights became non-finite; refusing to checkpoint them")
            save_checkpoint(accelerator, out, step, trainer_state(), cfg.keep_last, saved)
        if stop:
            result.stopped_early = True
            accelerator.print(
                f"early stopping at step {step}: no {cfg.monitor} improvement "
                f"in {cfg.early_stopping_patience} evaluations"
            )
            break
    if resumed_done and eval_fn is not None:
        # a kill during the final export, or a finished job re-run: the result is as complete as a normal end's
        evaluate(result.global_step, eval_fn)
    bar.close()
    logger.close()
    if consecutive_bad and loss_bad:
        raise NonFiniteTraining(
            f"training ended on {consecutive_bad} non-finite or exploding steps (loss {loss_value:.4g}): "
            "the weights diverged and were not exported; lower optim.lr or enable train.max_grad_norm"
        )
    if accelerator.is_main_process:
        plot_loss_curve(out)
    return result
