"""Adapt a LLaMA-style causal LM to domain text: LoRA, prompt / p- / prefix tuning, or full
fine-tuning with static freezing or scheduled gradual unfreezing. One recipe; `method` picks.

    accelerate launch --config_file accelerate_config.yaml recipes/train_lm.py \
        --config recipes/configs/legal_lora.yaml [key=value ...]

Reports domain and general-text perplexity before and after training (summary.json and screen) and forgetting
against the base model (KL on general text, perplexity on the base model's own samples: finetune/metrics/forgetting.py),
writes the adapter (PEFT dir) or the full model, an optional merged model, and a model card. Optional objectives
(finetune/train/objectives.py): a forgetting guard (replay or a KL-to-base penalty) and distillation from a teacher.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import send_to_device

from finetune.config import parse_recipe_args, to_dict
from finetune.data.inspect import overlap_lines
from finetune.data.text import TextDataConfig, build_text_datasets, check_data_files, make_collate
from finetune.data.text import check_config as check_data_config
from finetune.errors import UserError, exit_on_user_error
from finetune.export.gguf import GGUFChoice, check_exportable, check_recipe_gguf, export_run_gguf
from finetune.export.lm import save_lm_artifacts, write_model_card
from finetune.io import atomic_write_json
from finetune.methods.full import FullMethodConfig
from finetune.methods.lora import LoraMethodConfig, restore_frozen_weights
from finetune.methods.prompt_tuning import PromptMethodConfig
from finetune.methods.registry import LM_METHODS, LMMethodName
from finetune.metrics.forgetting import (
    ForgettingConfig,
    base_samples_file,
    check_forgetting_config,
    kl_key,
    kl_to_base,
    text_split,
    top_k_reference,
)
from finetune.metrics.perplexity import dataset_batches, perplexity, summed_nll
from finetune.models.causal_lm import (
    LMModelConfig,
    compile_decoder_layers,
    fit_context,
    load_causal_lm,
    resolve_model_source,
)
from finetune.models.quantize import check_quantized_training
from finetune.optim.optimizers import OptimConfig, build_optimizer, validate_optim_config
from finetune.optim.schedulers import SchedulerConfig, build_scheduler, validate_scheduler_config
from finetune.train import Hooks, TrainConfig, build_accelerator, start_run, train
from finetune.train.loop import validate_train_config, weight_dtype
from finetune.train.objectives import (
    DistillConfig,
    GuardConfig,
    check_objectives,
    distill_loss,
    general_top_k,
    guard_general_split,
    guard_training_data,
    kl_guard_loss,
    load_teacher,
    trained_tokens,
)
from finetune.train.setup import finished_run


@dataclass
class EvalConfig:
    batch_size: int = 8  # sequences per evaluation forward pass
    max_batches: int = 0  # evaluate at most this many batches per split (0: the whole split)
    overlap_check: bool = True  # print each held-out split's 8-gram / duplicate overlap with train, warn past 20%


@dataclass
class LossConfig:
    fused: bool = True  # lm_head + cross-entropy in row chunks: the (tokens x vocab) logits are never held whole


@dataclass
class ExportConfig:
    merged: bool = False  # LoRA only: also write base+adapter merged into one model (merged/)
    verify: bool = True  # reload each exported artifact with the stock library and compare logits
    gguf: GGUFChoice = "none"  # also write model.<type>.gguf for llama.cpp/Ollama (LoRA merged, or full): f16 ... q4_0


@dataclass
class LMRecipeConfig:
    data: TextDataConfig  # training / validation text (data.train_file is required)
    method: LMMethodName = "lora"  # what trains: a LoRA adapter, a soft prompt/prefix, or the weights
    model: LMModelConfig = field(default_factory=LMModelConfig)  # which causal LM to start from
    lora: LoraMethodConfig = field(default_factory=LoraMethodConfig)  # used when method=lora
    prompt: PromptMethodConfig = field(default_factory=PromptMethodConfig)  # used when method=prompt
    full: FullMethodConfig = field(
        default_factory=FullMethodConfig
    )  # used when method=full (freezing, gradual unfreezing)
    train: TrainConfig = field(
        default_factory=TrainConfig
    )  # loop settings (steps, batch, accumulation, eval, checkpoints)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4))  # optimizer
    scheduler: SchedulerConfig = field(
        default_factory=lambda: SchedulerConfig(name="cosine", warmup_steps=10)
    )  # lr schedule
    eval: EvalConfig = field(default_factory=EvalConfig)  # perplexity evaluation
    loss: LossConfig = field(default_factory=LossConfig)  # how the token loss is computed (same numbers either way)
    export: ExportConfig = field(default_factory=ExportConfig)  # what is written at the end
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)  # forgetting measured against the base
    guard: GuardConfig = field(default_factory=GuardConfig)  # forgetting guard: replay or a KL-to-base penalty
    distill: DistillConfig = field(default_factory=DistillConfig)  # distillation from a teacher (same tokenizer)


def check_combination(cfg: LMRecipeConfig) -> None:
    """Refuse settings that cannot work together, before any model loads."""
    validate_train_config(cfg.train)
    validate_optim_config(cfg.optim)
    validate_scheduler_config(cfg.scheduler, cfg.train.max_steps)
    check_data_config(cfg.data)
    resolve_model_source(cfg.model)  # a missing path or a non-GGUF file fails here, before anything loads
    check_data_files(cfg.data)  # every source loaded and checked now: errors name the file (and line) and the fix
    LM_METHODS[cfg.method].check(cfg)
    check_forgetting_config(cfg.forgetting)
    check_objectives(cfg.guard, cfg.distill, cfg.train.batch_size)
    check_recipe_gguf(cfg.export.gguf, LM_METHODS[cfg.method].export, LM_METHODS[cfg.method].mergeable)
    check_quantized_training(cfg.model.quantization, cfg.method, cfg.model.compile_layers)
    if cfg.export.merged and not LM_METHODS[cfg.method].mergeable:
        mergeable = " or ".join(f"method={name}" for name, m in LM_METHODS.items() if m.mergeable)
        raise UserError(f"export.merged only applies to {mergeable}; unset it or switch method")
    if cfg.method != "full" and cfg.full.unfreeze != "none":
        raise UserError(f"full.unfreeze={cfg.full.unfreeze} needs method=full")


def evaluate_ppl(model, dataset, collate, cfg: LMRecipeConfig, device) -> float:
    """Token-weighted perplexity of `model` on `dataset` (eval.batch_size, at most eval.max_batches batches)."""
    batches = dataset_batches(dataset, collate, cfg.eval.batch_size, cfg.eval.max_batches)
    return perplexity(model, batches, cfg.loss.fused, device)


def eval_batches_on(device, dataset, collate, cfg: LMRecipeConfig) -> list[dict]:
    """The evaluation batches of `dataset` on `device`, in order (the KL measure pairs them with a reference)."""
    return [
        send_to_device(b, device) for b in dataset_batches(dataset, collate, cfg.eval.batch_size, cfg.eval.max_batches)
    ]


@exit_on_user_error
def main(argv=None):
    cfg = parse_recipe_args(LMRecipeConfig, argv, description=__doc__)
    check_combination(cfg)
    if finished_run(cfg.train) is not None:
        return  # finished_run has said so in one line: nothing to do
    accelerator = build_accelerator(cfg.train.seed)
    if cfg.eval.overlap_check and accelerator.is_main_process:  # a held-out split that shares text with train lies
        for line in overlap_lines(cfg.data):
            print(line)

    # Model and data first: their errors must leave no output directory behind.
    model, tokenizer = load_causal_lm(cfg.model, compute_dtype=weight_dtype(accelerator))  # NF4 computes in it
    method = LM_METHODS[cfg.method]
    if cfg.export.gguf != "none":
        check_exportable(model, tokenizer)  # before training: what the GGUF writer cannot map fails now
    fit_context(cfg.data.max_length, model, "data.max_length", method.virtual_tokens(getattr(cfg, method.section)))
    splits = build_text_datasets(cfg.data, tokenizer)
    collate = make_collate(cfg.data, tokenizer)
    device, live_base = accelerator.device, method.export == "adapter"  # adapter methods: base = adapter disabled
    model.to(device).eval()
    teacher = None
    if cfg.distill.teacher:
        teacher = load_teacher(cfg.distill, cfg.model, model, tokenizer, weight_dtype(accelerator), device)
    # Forgetting against the base (metrics/forgetting.py): the base's own samples are drawn before anything trains.
    forgetting = cfg.forgetting.enabled and "general_validation" in splits
    if forgetting and cfg.forgetting.samples:
        with accelerator.main_process_first():  # one process draws and caches them, the others read the cache
            samples_path, reused = base_samples_file(model, tokenizer, cfg.model, cfg.forgetting)
        splits["base_samples"] = text_split(cfg.data, tokenizer, samples_path)
        accelerator.print(f"base samples: {samples_path} ({'reused' if reused else 'drawn now'})")
    dataset, batches_fn, collate_train = splits["train"], None, collate
    count = trained_tokens  # the loop divides the summed loss by this, summed over the window
    if cfg.guard.method != "none":  # general rows in every micro-batch (train/objectives.py)
        with accelerator.main_process_first():
            general = guard_general_split(model, tokenizer, cfg.guard, cfg.forgetting, cfg.data, cfg.model)
        dataset, batches_fn, collate_train, count = guard_training_data(
            splits["train"], general, collate, cfg.guard, cfg.train.batch_size, cfg.train.seed
        )
    out = start_run(accelerator, cfg, cfg.train)
    for name, ds in splits.items():
        accelerator.print(f"data {name}: {ds.stats}")
    eval_splits = {k: splits[k] for k in ("validation", "general_validation", "base_samples") if k in splits}

    # Perplexity before training, on the untouched base model; a full fine-tune keeps the base's top-k log-probs.
    with torch.no_grad(), accelerator.autocast():
        before = {k: evaluate_ppl(model, ds, collate, cfg, accelerator.device) for k, ds in eval_splits.items()}
        if "test" in splits:  # never evaluated during training, so no choice (best step, unfreezing) has seen it
            before["test"] = evaluate_ppl(model, splits["test"], collate, cfg, device)
        kl_ref = general_ref = None
        if forgetting and not live_base:
            general_eval = eval_batches_on(device, splits["general_validation"], collate, cfg)
            kl_ref = top_k_reference(model, general_eval, cfg.forgetting.top_k)  # the measure's own batches, in order
        if cfg.guard.method == "kl" and not live_base:
            general_ref = general_top_k(model, general, collate, cfg.guard.top_k, cfg.eval.batch_size)
    accelerator.print(f"perplexity before: {before}")

    # Trainable parameters: the method decides (finetune/methods/registry.py), the optimizer sees exactly those
    # (all groups up front; a gradual unfreezer holds some back now and they train later).
    trained = method.apply(model, tokenizer, cfg, accelerator)
    model, groups, n_train, unfreezer = trained.model, trained.groups, trained.trainable, trained.unfreezer
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.model.compile_layers and compile_decoder_layers(model):
        accelerator.print("decoder layers compiled in place (torch.compile); the first step pays the compile")
    n_total = sum(p.numel() for p in model.parameters())
    accelerator.print(f"method {cfg.method}: {n_train:,} trainable of {n_total:,} parameters")

    optimizer = build_optimizer(groups, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.train.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    seen = {"tokens": 0}

    def step_fn(batch):
        seen["tokens"] += batch["input_ids"].numel()
        # Summed losses; the loop divides by the window's count (trained tokens; the domain ones under the KL guard).
        logs: dict[str, float] = {}  # the objective's terms, logged beside the loss
        if teacher is not None:  # (1 - alpha) CE + alpha divergence, per token
            return distill_loss(model, teacher, batch, cfg.distill, logs), logs
        if cfg.guard.method == "kl":  # CE + beta KL(base || adapted)
            return kl_guard_loss(model, batch, cfg.guard.beta, general_ref, logs), logs
        return summed_nll(model, batch, cfg.loss.fused)  # replay's general rows are ordinary trained rows

    def eval_fn(step):
        with accelerator.autocast():  # the same precision as the perplexity before training
            ppl = {k: evaluate_ppl(model, ds, collate, cfg, accelerator.device) for k, ds in eval_splits.items()}
        metrics = {f"{k}_ppl": v for k, v in ppl.items()}
        if "validation" in ppl:
            metrics["val_loss"] = math.log(ppl["validation"])
        if forgetting:
            batches = eval_batches_on(device, splits["general_validation"], collate, cfg)  # the reference's order
            with accelerator.autocast():
                metrics[kl_key(None if live_base else cfg.forgetting.top_k)] = kl_to_base(model, batches, kl_ref)
        return metrics

    def save_fn(path: Path):
        save_lm_artifacts(accelerator.unwrap_model(model), tokenizer, path, method=cfg.method, merged=False)

    hooks = Hooks()
    if unfreezer is not None:
        hooks.before_step = unfreezer.update
        hooks.before_optimizer_step = lambda step: unfreezer.mask_grads()
        hooks.on_eval = lambda step, metrics, improved: unfreezer.on_eval(improved)
    result = train(
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        dataset=dataset,
        collate_fn=collate_train,
        step_fn=step_fn,
        cfg=cfg.train,
        eval_fn=eval_fn if eval_splits else None,
        save_fn=save_fn,
        hooks=hooks,
        count_items=count,
        batches_fn=batches_fn,
        checkpoint_objects=(unfreezer,) if unfreezer is not None else (),
    )

    # Outputs: artifacts, their reload check, the summary and the model card (main process only).
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    after = {k.removesuffix("_ppl"): v for k, v in result.last_eval.items() if k.endswith("_ppl")}
    # Exports are plain fp32 models: drop accelerate's autocast wrapper around forward (otherwise the reload
    # check compares bf16 logits with fp32 ones) and give LoRA's frozen weights their fp32 values back.
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if trained.cast_frozen:
        restore_frozen_weights(model, load_causal_lm(cfg.model)[0])
    if "test" in splits:  # the final weights as exported, in the precision of the measure before training
        with torch.no_grad(), accelerator.autocast():
            after["test"] = evaluate_ppl(model.eval(), splits["test"], collate, cfg, device)
    verify = save_lm_artifacts(
        model,
        tokenizer,
        out,
        method=cfg.method,
        merged=cfg.export.merged,
        verify=cfg.export.verify,
        base_cfg=cfg.model,
    )
    gguf_file = (
        None if cfg.export.gguf == "none" else export_run_gguf(model, tokenizer, out, cfg.export.gguf, cfg.model)
    )
    tokens = seen["tokens"] * accelerator.num_processes
    summary = {
        "method": cfg.method,
        "steps": result.global_step,
        # None: this process resumed a run whose training had ended (killed during its export), so it timed no step
        # the loop's timing (finetune/train/loop.py): optimizer steps only, evaluations and checkpoints left out
        "train_seconds": round(result.train_seconds, 1) if result.trained_steps else None,
        "tokens_per_second": round(tokens / result.train_seconds, 1) if result.trained_steps else None,
        "median_step_seconds": round(statistics.median(result.step_seconds), 4) if result.step_seconds else None,
        "step_seconds": [
            round(t, 4) for t in result.step_seconds
        ],  # every optimizer step (data, forward, backward, update)
        "train_peak_memory": result.peak_memory,  # peak RSS (CPU) / max_memory_allocated (GPU) at the last optimizer step
        "trainable_parameters": n_train,
        "perplexity_before": before,
        "perplexity_after": after,
        "relative_change": {k: round(after[k] / before[k] - 1, 4) for k in after if k in before},
        # KL(base || adapted) on general text after training (0 before, by definition); "_lower_bound": top-k reference
        "forgetting": {k: round(v, 5) for k, v in result.last_eval.items() if k.startswith("general_kl_to_base")},
        "guard": cfg.guard.method,
        "distill_teacher": cfg.distill.teacher,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "nonfinite_steps": result.nonfinite_steps,
        "export_check": verify,
        "gguf": {"file": gguf_file.path.name, "seconds": round(gguf_file.seconds, 1)} if gguf_file else None,
    }
    atomic_write_json(out / "summary.json", summary)
    write_model_card(out, to_dict(cfg), summary)
    for k in after:
        if k in before:
            print(f"{k} perplexity: {before[k]:.2f} -> {after[k]:.2f} ({100 * (after[k] / before[k] - 1):+.1f}%)")
    for k, v in summary["forgetting"].items():
        print(f"{k}: {v:.4f} nats/token (mean KL(base || adapted) on general text; 0 = the base's distribution)")
    print(f"summary: {out / 'summary.json'}")
    print(json.dumps({"export_check": verify}))


if __name__ == "__main__":
    main()
