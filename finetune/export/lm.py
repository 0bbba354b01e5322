"""Causal-LM artifacts: a PEFT adapter directory, a full or merged model, and a model card.

Every artifact is written atomically and, when asked, verified by reloading it the way a user
would (peft.PeftModel.from_pretrained on a fresh base, or AutoModelForCausalLM.from_pretrained)
and comparing logits with the in-memory model.

Artifacts name their base model as another machine can find it: the adapter's
`base_model_name_or_path` is the base's hub id when one is known (`finetune.models.causal_lm.
base_model_reference`), not this machine's cache path; the run's README.md is the one model card, and
the adapter's README.md (PEFT writes an empty template there) points to it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch

from finetune.errors import UserError
from finetune.io import atomic_dir, atomic_write_text
from finetune.methods.registry import LM_METHODS
from finetune.models.causal_lm import (
    BaseModelReference,
    LMModelConfig,
    base_model_reference,
    describe_base,
    load_causal_lm,
)
from finetune.models.quantize import compute_dtype_of, quantization_of

# fp32 reload of the same weights is exact up to kernel order; merging folds B@A*scale into W.
TOLERANCE = {"adapter": 1e-4, "model": 1e-4, "merged": 2e-3}
PROBE_TEXT = "The parties agree that this agreement shall be governed by the laws of"


class ExportCheckFailed(RuntimeError):
    """A saved artifact reloaded with different outputs than the model that wrote it."""


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    out = model(input_ids=ids.to(device), use_cache=False).logits
    return out[:, -ids.shape[1] :].float().cpu()


def _check(name: str, reference: torch.Tensor | None, reloaded: torch.Tensor) -> float:
    if reference is None:  # the reference logits are computed whenever verify is on, the only time this runs
        raise RuntimeError(f"{name}: a reload check without reference logits")
    diff = float((reference - reloaded).abs().max())
    if not diff <= TOLERANCE[name]:
        raise ExportCheckFailed(f"{name} reloaded with logits off by {diff:.2e} (> {TOLERANCE[name]:.0e})")
    return diff


def save_lm_artifacts(
    model, tokenizer, out: Path, *, method: str, merged: bool = False, verify: bool = False, base_cfg=None
) -> dict:
    """Write `adapter/` (lora, prompt) or `model/` (full), plus `merged/` if asked.

    Returns {artifact: max |logit difference| after reloading} when `verify` is set. `base_cfg` loads the base
    (the adapter's check; the merge of an adapter trained on a quantized base, which reloads it in full precision).
    """
    out = Path(out)
    ids = torch.tensor([tokenizer(PROBE_TEXT)["input_ids"]])
    reference = _logits(model, ids) if verify else None
    checks: dict[str, float] = {}
    if LM_METHODS[method].export == "adapter":
        with atomic_dir(out / "adapter") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            make_adapter_portable(Path(tmp))
        if verify:
            from peft import PeftModel

            base = _load_base_like(model, base_cfg)  # a quantized base reloads quantized alike: same logits
            checks["adapter"] = _check(
                "adapter", reference, _logits(PeftModel.from_pretrained(base, out / "adapter"), ids)
            )
        if merged:
            unmerged, merge_reference = _full_precision_adapted(
                model, out / "adapter", base_cfg, ids, reference, verify
            )
            full = unmerged.merge_and_unload()
            with atomic_dir(out / "merged") as tmp:
                full.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
            if verify:
                from transformers import AutoModelForCausalLM

                reloaded = AutoModelForCausalLM.from_pretrained(out / "merged", use_safetensors=True)
                checks["merged"] = _check("merged", merge_reference, _logits(reloaded, ids))
    else:
        with atomic_dir(out / "model") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        if verify:
            from transformers import AutoModelForCausalLM

            reloaded = AutoModelForCausalLM.from_pretrained(out / "model", use_safetensors=True)
            checks["model"] = _check("model", reference, _logits(reloaded, ids))
    return checks


def _load_base_like(model, base_cfg: LMModelConfig):
    """The base of `model` loaded afresh from `base_cfg`, quantized and computing as `model`'s base does."""
    dtype = compute_dtype_of(model) if quantization_of(model) != "none" else torch.float32
    return load_causal_lm(base_cfg, compute_dtype=dtype)[0]


def _full_precision_adapted(model, adapter_dir: Path, base_cfg, ids, reference, verify: bool):
    """What to merge, and the logits the merged model must reproduce: the adapter on a full-precision base.

    PEFT can merge into quantized weights, but 4-bit weights round the update away (and int8 ones round it too), so
    an adapter trained on a quantized base goes onto the base reloaded in full precision from its source and is
    merged there (PEFT's guidance for QLoRA). Its reference is then that full-precision base + adapter, not the
    quantized model that trained.
    """
    if quantization_of(model) == "none":
        return copy.deepcopy(model), reference
    from peft import PeftModel

    base = load_causal_lm(dataclasses.replace(base_cfg, quantization="none"))[0]
    adapted = PeftModel.from_pretrained(base, adapter_dir)
    return adapted, _logits(adapted, ids) if verify else None


def make_adapter_portable(adapter_dir: Path) -> BaseModelReference:
    """Record the base's hub id in adapter_config.json and replace PEFT's empty README template with a pointer.

    PEFT records `model.name_or_path`, i.e. where this machine loaded the base from (for the shipped model a
    cache path under ~/.cache/finetune), so `AutoPeftModelForCausalLM` and the card's snippet would fail
    anywhere else. PeftModel.from_pretrained(base, dir) given a base object never reads the field.
    """
    config_path = adapter_dir / "adapter_config.json"
    adapter_cfg = json.loads(config_path.read_text())
    base = base_model_reference(adapter_cfg.get("base_model_name_or_path") or "")
    if base.name_or_path:
        adapter_cfg["base_model_name_or_path"] = base.name_or_path
        config_path.write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True) + "\n")
    front = f"base_model: {base.hub_id}\n" if base.hub_id else ""  # the hub's metadata takes hub ids only
    (adapter_dir / "README.md").write_text(
        f"---\nlibrary_name: peft\n{front}---\n# {adapter_cfg.get('peft_type', 'PEFT')} adapter of "
        f"{base.name_or_path or 'its base model'}\n\nWritten by `finetune`. The model card of the run (base model, "
        "method and hyperparameters, data, measured perplexities, how to load it on any machine) is the README.md "
        "of the run directory that holds this folder, e.g. `outputs/legal_lora/README.md` for "
        "`outputs/legal_lora/adapter`.\n"
    )
    return base


def write_model_card(out: Path, config: dict, summary: dict) -> None:
    """README.md in the output dir, the run's one model card: base model, method, data, figures, how to load it."""
    method = summary["method"]
    base = describe_base(LMModelConfig(**config["model"]))
    title = base.hub_id or Path(base.name_or_path).name
    front = "library_name: transformers" if LM_METHODS[method].export == "model" else "library_name: peft"
    if base.hub_id:
        front += f"\nbase_model: {base.hub_id}"
    text = f"""---
{front}
tags: [finetune, {method}]
---
# {method} fine-tune of {title}

Trained with `finetune` (recipes/train_lm.py) for {summary["steps"]} steps in {summary["train_seconds"]} s
({summary["tokens_per_second"]} tokens/s); {summary["trainable_parameters"]:,} trainable parameters.

## Base model

{_base_section(base)}

## Method

{_method_section(config, summary)}

## Data

{_data_section(config["data"])}

## Results

{_results_section(summary)}

## Load

{_load_section(method, base, merged=bool(config.get("export", {}).get("merged")))}

## Config

```json
{json.dumps(config, indent=2)}
```
"""
    atomic_write_text(Path(out) / "README.md", text)


def _base_section(base: BaseModelReference) -> str:
    if base.hub_id:
        lines = [
            f"- Hugging Face Hub: [`{base.hub_id}`](https://huggingface.co/{base.hub_id}) (the adapter's "
            "`base_model_name_or_path`)"
        ]
    else:
        lines = [
            "- No hub id is known for this base: the artifacts name its local directory, so copy that "
            "directory along with them"
        ]
    if base.local_path:
        lines.append(f"- Trained on this machine's copy: `{base.local_path}`" + (f"; {base.note}" if base.note else ""))
    return "\n".join(lines)


def _method_section(config: dict, summary: dict) -> str:
    method = LM_METHODS[config["method"]]
    what = method.describe(config[method.section])
    t, o, s = config["train"], config["optim"], config["scheduler"]
    return (
        f"- {what}; {summary['trainable_parameters']:,} trainable parameters\n"
        f"- {o['name']}, lr {o['lr']:g}, weight decay {o['weight_decay']:g}; {s['name']} schedule, "
        f"{s['warmup_steps']} warmup steps\n"
        f"- {summary['steps']} optimizer steps of {t['batch_size']} sequences x {t['grad_accum']} accumulation "
        f"(max length {config['data']['max_length']} tokens); gradient clipping at {t['max_grad_norm']:g}"
    )


def _data_section(data: dict) -> str:
    packing = (
        f"documents packed into {data['max_length']}-token blocks"
        if data["format"] == "text" and data["pack"]
        else f"one sequence per record, cut at {data['max_length']} tokens"
    )
    lines = [f"- train: `{data['train_file']}` (format {data['format']}; {packing})"]
    for key, label in (
        ("validation_file", "validation"),
        ("test_file", "test"),
        ("general_validation_file", "general text (forgetting)"),
    ):
        if data.get(key):
            lines.append(f"- {label}: `{data[key]}`")
    if not data.get("validation_file") and data.get("validation_fraction"):
        lines.append(f"- validation: {data['validation_fraction']:.0%} of the train records (seed {data['seed']})")
    return "\n".join(lines)


def _results_section(summary: dict) -> str:
    before, after = summary["perplexity_before"], summary["perplexity_after"]
    rows = "\n".join(
        f"| {split} | {before[split]:.2f} | {value:.2f} | {100 * (value / before[split] - 1):+.1f}% |"
        for split, value in after.items()
        if split in before
    )
    return f"""Perplexity measured by the run (also in summary.json), base model before training and with the fine-tune after:

| split | perplexity before | after | change |
|---|---|---|---|
{rows}

Best step {summary.get("best_step")}; stopped early: {summary.get("stopped_early")}; non-finite steps skipped: \
{summary.get("nonfinite_steps")}. Exported artifacts were reloaded with the stock library and compared with the
trained model (max |logit difference|): {json.dumps(summary.get("export_check") or {})}."""


def _load_section(method: str, base: BaseModelReference, merged: bool) -> str:
    """Snippets that run from this directory: on any machine with the hub, and offline from the local copy."""
    return "Paths are relative to this card's directory.\n\n" + _load_snippets(method, base, merged)


def _load_snippets(method: str, base: BaseModelReference, merged: bool) -> str:
    if LM_METHODS[method].export == "model":
        return (
            "The full model is self-contained (no base model needed):\n\n```python\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            'model = AutoModelForCausalLM.from_pretrained("model")\n'
            'tokenizer = AutoTokenizer.from_pretrained("model")\n```'
        )
    where = "any machine with the Hugging Face Hub" if base.hub_id else "this machine (the base has no hub id)"
    text = (
        f"On {where} (the adapter names its base model `{base.name_or_path}`):\n\n```python\n"
        "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n"
        'model = AutoPeftModelForCausalLM.from_pretrained("adapter")\n'
        'tokenizer = AutoTokenizer.from_pretrained("adapter")\n```'
    )
    if base.hub_id and base.local_path:
        text += (
            "\n\nOffline, from the local copy the run trained on:\n\n```python\n"
            "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"base = AutoModelForCausalLM.from_pretrained({json.dumps(base.local_path)})\n"
            'model = PeftModel.from_pretrained(base, "adapter")\n'
            'tokenizer = AutoTokenizer.from_pretrained("adapter")\n```'
        )
    if merged:
        text += (
            "\n\nThe merged model (base + adapter in one, self-contained): "
            '`AutoModelForCausalLM.from_pretrained("merged")`.'
        )
    return text


# ----------------------------------------------------------------------------------------------------------
# An adapter on the command line: does it belong to the model it is applied to?


def check_adapter_fits(model, adapter_dir: Path, model_name: str) -> None:
    """Refuse an adapter trained on another base before PEFT applies it (it fails with a shape traceback, or
    silently skips layers the model does not have).

    Compared from the adapter's files alone: every LoRA layer must exist in `model` with the in/out sizes its
    A/B matrices have, and a soft prompt must have the model's hidden size.
    """
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError(
            f"adapter '{adapter_dir}' has no adapter_model.safetensors; pass a PEFT adapter directory "
            "saved with safetensors"
        )
    with safe_open(str(weights), framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # header only, nothing loaded
    problem = _first_misfit(model, shapes)
    if problem:
        recorded = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
        trained_on = f"{recorded!r} (its adapter_config.json)" if recorded else "another model"
        raise UserError(
            f"adapter '{adapter_dir}' does not fit --model {model_name} ({problem}); it was trained on "
            f"{trained_on}: pass that model as --model"
        )


def _first_misfit(model, shapes: dict[str, tuple]) -> str:
    modules = dict(model.named_modules())
    hidden = getattr(model.config, "hidden_size", None)
    for key, shape in sorted(shapes.items()):
        if key.endswith("prompt_embeddings") and hidden and shape[-1] != hidden:
            return f"its soft prompt is {shape[-1]} wide, the model's hidden size is {hidden}"
        for part, axis in ((".lora_A.", 1), (".lora_B.", 0)):
            if part not in key:
                continue
            name = key.split(part)[0].removeprefix("base_model.model.")
            layer = modules.get(name)
            if layer is None:
                return f"the model has no layer {name}"
            want = getattr(layer, "in_features" if axis == 1 else "out_features", None)
            if want is not None and shape[axis] != want:
                side = "input" if axis == 1 else "output"
                return f"{name} has {side} size {want} in the model, {shape[axis]} in the adapter"
    return ""


def refuse_quantized_source(model, what: str) -> None:
    """A merge or a quantized export needs full-precision base weights: a quantized --model has lost them."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    kind = quantization_of(inner)
    if kind != "none":
        raise UserError(
            f"{what}: --model is already quantized ({kind}), so merging into it rounds the adapter away; "
            "pass the full-precision model it was made from"
        )
