"""Causal-LM artifacts: a PEFT adapter directory, a full or merged model, and a model card.

Every artifact is written atomically and, when asked, verified by reloading it the way a user
would (peft.PeftModel.from_pretrained on a fresh base, or AutoModelForCausalLM.from_pretrained)
and comparing logits with the in-memory model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from finetune.io import atomic_dir, atomic_write_text

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


def _check(name: str, reference: torch.Tensor, reloaded: torch.Tensor) -> float:
    diff = float((reference - reloaded).abs().max())
    if not diff <= TOLERANCE[name]:
        raise ExportCheckFailed(f"{name} reloaded with logits off by {diff:.2e} (> {TOLERANCE[name]:.0e})")
    return diff


def save_lm_artifacts(model, tokenizer, out: Path, *, method: str, merged: bool = False,
                      verify: bool = False, base_cfg=None) -> dict:
    """Write `adapter/` (lora, prompt) or `model/` (full), plus `merged/` if asked.

    Returns {artifact: max |logit difference| after reloading} when `verify` is set.
    """
    out = Path(out)
    ids = torch.tensor([tokenizer(PROBE_TEXT)["input_ids"]])
    reference = _logits(model, ids) if verify else None
    checks: dict[str, float] = {}
    if method in ("lora", "prompt"):
        with atomic_dir(out / "adapter") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        if verify:
            from peft import PeftModel

            from finetune.models.causal_lm import load_causal_lm

            base, _ = load_causal_lm(base_cfg)
            checks["adapter"] = _check("adapter", reference, _logits(PeftModel.from_pretrained(base, out / "adapter"), ids))
        if merged:
            full = copy.deepcopy(model).merge_and_unload()
            with atomic_dir(out / "merged") as tmp:
                full.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
            if verify:
                from transformers import AutoModelForCausalLM

                reloaded = AutoModelForCausalLM.from_pretrained(out / "merged", use_safetensors=True)
                checks["merged"] = _check("merged", reference, _logits(reloaded, ids))
    else:
        with atomic_dir(out / "model") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        if verify:
            from transformers import AutoModelForCausalLM

            reloaded = AutoModelForCausalLM.from_pretrained(out / "model", use_safetensors=True)
            checks["model"] = _check("model", reference, _logits(reloaded, ids))
    return checks


def write_model_card(out: Path, config: dict, summary: dict) -> None:
    """README.md in the output dir: what was trained, how, the before/after figures, how to load it."""
    method = summary["method"]
    base = config["model"]["name_or_path"]
    rows = "\n".join(
        f"| {split} | {summary['perplexity_before'][split]:.2f} | {after:.2f} | {100 * (after / summary['perplexity_before'][split] - 1):+.1f}% |"
        for split, after in summary["perplexity_after"].items()
        if split in summary["perplexity_before"]
    )
    if method == "full":
        load = ("from transformers import AutoModelForCausalLM\n"
                "model = AutoModelForCausalLM.from_pretrained('model')")
        front = "library_name: transformers"
    else:
        load = ("from peft import AutoPeftModelForCausalLM\n"
                "model = AutoPeftModelForCausalLM.from_pretrained('adapter')")
        front = "library_name: peft"
    text = f"""---
{front}
base_model: {base}
tags: [finetune, {method}]
---
# {method} fine-tune of {base}

Trained with `finetune` (recipes/train_lm.py) for {summary['steps']} steps on `{config['data']['train_file']}`
in {summary['train_seconds']} s ({summary['tokens_per_second']} tokens/s); {summary['trainable_parameters']:,} trainable parameters.

| split | perplexity before | after | change |
|---|---|---|---|
{rows}

Exported artifacts were reloaded with the stock library and compared with the trained model
(max |logit difference|): {json.dumps(summary.get('export_check') or {})}.

## Load

```python
{load}
```

## Config

```json
{json.dumps(config, indent=2)}
```
"""
    atomic_write_text(Path(out) / "README.md", text)
