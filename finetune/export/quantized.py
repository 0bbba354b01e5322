"""A merged causal LM saved weight-only quantized, so `AutoModelForCausalLM.from_pretrained(DIR)` reloads it as is.

    finetune export quantized --bits 8|4 --model DIR_OR_ID [--adapter ADAPTER_DIR] --out DIR

- `--bits 8`: torchao int8 weight-only (`TorchAoConfig(Int8WeightOnlyConfig())`), per-channel scales;
- `--bits 4`: bitsandbytes NF4 with double quantization (QLoRA's format), 64-weight blocks.

Both are transformers' own serializations (safetensors plus a `quantization_config` in config.json), so any
machine with transformers and the library (torchao / bitsandbytes) loads the directory with a plain
`from_pretrained(DIR)`: no finetune code, no flags. The embeddings, norms and the output head stay unquantized
(transformers keeps the output embedding of either scheme in full precision) and are stored in `--dtype`.

The quantization itself is transformers' (`from_pretrained(..., quantization_config=...)` on the merged model
written to a staging folder first); the written directory is reloaded and its logits compared before it replaces
anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from finetune.errors import UserError
from finetune.export.lm import PROBE_TEXT, ExportCheckFailed, refuse_quantized_source
from finetune.io import atomic_dir
from finetune.models.quantize import check_quantization, quantization_config

BITS = {8: "int8", 4: "nf4"}  # --bits -> model.quantization kind
DESCRIBE = {8: "int8 weight-only (torchao)", 4: "4-bit NF4 (bitsandbytes)"}
RELOAD_TOLERANCE = 1e-3  # the reload holds the very weights just quantized: only kernel order may differ
STAGING = ".merged-full-precision"  # inside the atomic temporary directory, removed before it is published


def check_bits(bits: int) -> str:
    """The quantization kind of `--bits`, refused in one line when its library or CPU feature is missing."""
    if bits not in BITS:
        raise UserError(f"--bits {bits} is not supported; choose 8 (int8 weight-only) or 4 (NF4)")
    check_quantization(BITS[bits])
    return BITS[bits]


def export_quantized(
    model, tokenizer, out: Path, *, bits: int, dtype: str = "bfloat16", marker: str = "", record: dict | None = None
) -> dict:
    """Merge `model` (a full-precision model or PeftModel), quantize it weight-only and write it atomically to `out`.

    `marker` names a JSON file written beside the weights listing every file written (with `record`), which lets a
    later export replace this directory. Returns {"bytes": size on disk, "check": max |logit difference| of the
    reload}.
    """
    kind = check_bits(bits)
    refuse_quantized_source(model, "export quantized")
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    torch_dtype = getattr(torch, dtype)
    with atomic_dir(out) as tmp:
        staging = tmp / STAGING
        merged.save_pretrained(staging, safe_serialization=True)
        quantized = _quantize(staging, kind, torch_dtype)
        shutil.rmtree(staging)
        quantized.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if marker:
            files = sorted(p.name for p in tmp.iterdir()) + [marker]
            (tmp / marker).write_text(json.dumps({**(record or {}), "bits": bits, "files": files}, indent=2) + "\n")
        diff = _check_reload(quantized, tmp, tokenizer)
    return {"bytes": weights_size(out), "check": diff}


def _quantize(merged_dir: Path, kind: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    config = quantization_config(kind, compute_dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(
        merged_dir, dtype=dtype, quantization_config=config, use_safetensors=True
    ).eval()


@torch.no_grad()
def _check_reload(quantized, directory: Path, tokenizer) -> float:
    """Reload `directory` exactly as a user does and compare its logits with the model that wrote it."""
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(directory).eval()  # no flags: the config says how
    ids = torch.tensor([tokenizer(PROBE_TEXT)["input_ids"]])
    want, got = (m(input_ids=ids, use_cache=False).logits.float() for m in (quantized, reloaded))
    diff = float((want - got).abs().max())
    if not diff <= RELOAD_TOLERANCE:
        raise ExportCheckFailed(
            f"the quantized model reloaded with logits off by {diff:.2e} (> {RELOAD_TOLERANCE:.0e})"
        )
    return diff


def weights_size(directory: Path) -> int:
    """Bytes of the weight files (safetensors) in `directory`: what the quantization shrinks."""
    return sum(p.stat().st_size for p in Path(directory).glob("*.safetensors"))
