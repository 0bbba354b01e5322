"""The LM recipe's methods, one table: name -> its config section, its checks, how it trains, how it is saved.

recipes/train_lm.py dispatches through `LM_METHODS` instead of `if cfg.method == ...` chains, and
finetune/export/lm.py reads the export kind and the model-card line from it. A new method is its module
(config dataclass + how it selects trainable parameters, e.g. finetune/methods/lora.py), one `LMMethod` entry
here with its name in `LMMethodName`, and its config section in `LMRecipeConfig`;
tests/methods/test_registry.py fails until all of them agree. The training step itself stays in the recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from finetune.errors import UserError
from finetune.methods.full import (
    FullMethodConfig,
    GradualUnfreezer,
    apply_static_freeze,
    build_param_groups,
)
from finetune.methods.lora import LoraMethodConfig, apply_lora, store_frozen_weights
from finetune.methods.prompt_tuning import PromptMethodConfig, apply_prompt_method
from finetune.models.quantize import prepare_for_training
from finetune.optim.optimizers import param_groups
from finetune.train.loop import weight_dtype

LMMethodName = Literal["lora", "prompt", "full"]  # the recipe's `method` key: one name per LM_METHODS entry


@dataclass
class Trainable:
    """What applying a method hands the recipe: the model to train and exactly the parameters the optimizer sees."""

    model: Any  # the model to train (a PeftModel for adapter methods)
    groups: list[dict]  # optimizer param groups, all built up front (a group frozen now is already in them)
    trainable: int  # parameters that train, counted before an unfreezer holds groups back (those train later)
    unfreezer: GradualUnfreezer | None = None  # gradual unfreezing: the recipe's hooks drive it
    cast_frozen: bool = False  # frozen weights stored in the autocast dtype: restore their fp32 values before export


@dataclass(frozen=True)
class LMMethod:
    section: str  # the recipe config's section holding this method's settings: cfg.<section>
    config: type  # that section's dataclass
    apply: Callable[..., Trainable]  # (model, tokenizer, cfg, accelerator) -> Trainable; cfg is the whole recipe config
    export: Literal["adapter", "model"]  # adapter/: a PEFT directory for the untouched base; model/: every weight
    describe: Callable[[dict], str]  # the model card's line for the method, from its saved config section
    mergeable: bool = False  # export.merged can fold it into the base weights (merged/)
    check: Callable[[Any], None] = lambda cfg: None  # refusals on the whole recipe config, before any model loads
    virtual_tokens: Callable[[Any], int] = lambda section: 0  # tokens it prepends to every input (context budget)


def _count_trainable(groups: list[dict]) -> int:
    return sum(p.numel() for g in groups for p in g["params"] if p.requires_grad)


def _apply_lora(model, tokenizer, cfg, accelerator) -> Trainable:
    quantized = cfg.model.quantization != "none"
    if quantized:  # QLoRA: PEFT's k-bit preparation before the adapter goes on (finetune/models/quantize.py)
        model = prepare_for_training(model)
    model = apply_lora(model, cfg.lora)
    cast = False
    if not cfg.lora.use_dora and not quantized:  # quantized frozen weights stay as they were loaded
        # Autocast would cast these frozen weights to bf16/fp16 on every forward: do it once (same numbers,
        # less time and memory); fp32 weights come back from the base model before export.
        cast = store_frozen_weights(model, weight_dtype(accelerator)) > 0
    groups = param_groups(model.named_parameters(), cfg.optim.weight_decay)
    return Trainable(model, groups, _count_trainable(groups), cast_frozen=cast)


def _apply_prompt(model, tokenizer, cfg, accelerator) -> Trainable:
    model = apply_prompt_method(model, tokenizer, cfg.prompt)
    groups = param_groups(model.named_parameters(), cfg.optim.weight_decay)
    return Trainable(model, groups, _count_trainable(groups))


def _apply_full(model, tokenizer, cfg, accelerator) -> Trainable:
    apply_static_freeze(model, cfg.full)
    groups = build_param_groups(model, cfg.full, cfg.optim.lr, cfg.optim.weight_decay)
    count = _count_trainable(groups)  # before the unfreezer toggles requires_grad
    unfreezer = None
    if cfg.full.unfreeze != "none":
        # One process: requires_grad off saves the frozen groups' backward; under DDP every rank must keep the
        # same parameters in the graph, so their gradients are masked instead (GradualUnfreezer.mask_grads).
        unfreezer = GradualUnfreezer(model, cfg.full, set_requires_grad=accelerator.num_processes == 1)
    return Trainable(model, groups, count, unfreezer)


def _check_prompt(cfg) -> None:
    if cfg.data.format == "text" and cfg.data.pack and cfg.data.packed_attention != "none":
        raise UserError(
            "prompt methods only accept a 2D attention mask; set data.packed_attention=none or data.pack=false"
        )


def _describe_lora(lora: dict) -> str:
    return (
        f"LoRA{' (DoRA)' if lora['use_dora'] else ''}: r={lora['r']}, alpha={lora['alpha']}, "
        f"dropout={lora['dropout']}, target modules {', '.join(lora['target_modules'])}, bias {lora['bias']}"
    )


def _describe_full(full: dict) -> str:
    return (
        f"full fine-tuning: unfreeze={full['unfreeze']}, first {full['freeze_first_n_layers']} layers frozen, "
        f"discriminative lr factor {full['discriminative_factor']}"
    )


LM_METHODS: dict[str, LMMethod] = {
    "lora": LMMethod(
        section="lora",
        config=LoraMethodConfig,
        apply=_apply_lora,
        export="adapter",
        describe=_describe_lora,
        mergeable=True,
    ),
    "prompt": LMMethod(
        section="prompt",
        config=PromptMethodConfig,
        apply=_apply_prompt,
        export="adapter",
        describe=lambda prompt: f"{prompt['kind']}: {prompt['num_virtual_tokens']} virtual tokens",
        check=_check_prompt,
        virtual_tokens=lambda prompt: prompt.num_virtual_tokens,
    ),
    "full": LMMethod(
        section="full",
        config=FullMethodConfig,
        apply=_apply_full,
        export="model",
        describe=_describe_full,
    ),
}
