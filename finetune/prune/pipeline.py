"""Prune a causal LM as a request says, and save it as an ordinary model.

`check_request` refuses a bad request before any model loads; `prune_model` scores and masks (or removes layers)
in place and returns the report; `save_pruned` writes model + tokenizer + prune_report.json atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from finetune.errors import UserError
from finetune.prune.calibration import calibration_blocks, input_channel_norms, layer_change_scores
from finetune.prune.layers import check_drop, decoder_layers, drop_decoder_layers, prunable_linears
from finetune.prune.masks import (
    apply_mask,
    check_n_m_fits,
    check_sparsity,
    magnitude_score,
    n_m_mask,
    parse_n_m,
    unstructured_mask,
    wanda_score,
)

PruneMethod = Literal["magnitude", "wanda", "layers"]
REPORT = "prune_report.json"  # written into every pruned model directory


@dataclass
class PruneRequest:
    method: PruneMethod  # magnitude (|W|), wanda (|W| * input norm, per output row) or layers (remove whole layers)
    sparsity: float | None = None  # magnitude/wanda: fraction of each layer's weights zeroed, in [0, 1)
    n_m: str | None = None  # magnitude/wanda instead of sparsity: "N:M" keeps N of every M inputs (e.g. "2:4")
    drop: int | None = None  # layers: how many decoder layers to remove (those changing their input least)
    calibration: str | None = None  # {"text"} JSONL scored on (wanda, layers): training text, never the test split
    calibration_tokens: int = 8192  # tokens of calibration text used (its first ones), in blocks of block_size
    block_size: int = 256  # tokens per calibration sequence


def check_request(req: PruneRequest) -> None:
    """Refuse what cannot work, before any model loads (the model-dependent checks follow in check_fits)."""
    if req.method not in ("magnitude", "wanda", "layers"):
        raise UserError(f"--method {req.method!r} is unknown; use magnitude, wanda or layers")
    if req.method == "layers":
        if req.drop is None or req.sparsity is not None or req.n_m is not None:
            raise UserError("--method layers takes --drop K (how many decoder layers to remove), not --sparsity/--n-m")
        check_drop(req.drop)  # K >= 1 now; K below the depth in check_fits, once the model is loaded
    else:
        if (req.sparsity is None) == (req.n_m is None) or req.drop is not None:
            raise UserError(f"--method {req.method} takes exactly one of --sparsity S or --n-m N:M (e.g. 2:4)")
        if req.sparsity is not None:
            check_sparsity(req.sparsity)
        else:
            parse_n_m(str(req.n_m))
    if req.method != "magnitude":
        if not req.calibration:
            raise UserError(f"--method {req.method} scores on calibration text; pass --calibration FILE.jsonl")
        if not Path(req.calibration).is_file():
            raise UserError(f"calibration file '{req.calibration}' does not exist; pass a {{\"text\"}} JSONL file")
    if req.calibration_tokens < req.block_size or req.block_size < 1:
        raise UserError(
            f"--calibration-tokens {req.calibration_tokens} is less than one block of {req.block_size} tokens; "
            "pass more (e.g. 8192)"
        )


def check_out(out: Path) -> None:
    """--out must be new or an empty directory: a pruned model never lands on top of other files."""
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not empty; pass a new or empty directory")


def check_fits(req: PruneRequest, model) -> None:
    """The request against the loaded model: N:M groups fit every layer width, K layers leave at least one."""
    if req.method == "layers":
        check_drop(int(req.drop or 0), len(decoder_layers(model)))
    elif req.n_m is not None:
        _, m = parse_n_m(req.n_m)
        for name, linear in prunable_linears(model).items():
            check_n_m_fits(name, linear.in_features, m)


def parameter_counts(model) -> dict[str, int]:
    """Every parameter (a tied head counted once) and how many of them are nonzero."""
    params = list(model.parameters())
    return {"total": sum(p.numel() for p in params), "nonzero": sum(int(p.count_nonzero()) for p in params)}


def prune_model(model, tokenizer, req: PruneRequest) -> dict:
    """Prune `model` in place as `req` says; returns the report (what was asked, scored on, and removed)."""
    check_fits(req, model)
    model.eval()
    before = parameter_counts(model)
    blocks = None
    if req.method != "magnitude":
        blocks = calibration_blocks(req.calibration, tokenizer, req.calibration_tokens, req.block_size)
    report: dict = {"request": asdict(req), "calibration_tokens_used": int(blocks.numel()) if blocks is not None else 0}
    if req.method == "layers":
        assert blocks is not None
        scores = layer_change_scores(model, blocks)
        remove = sorted(sorted(range(len(scores)), key=lambda i: scores[i])[: int(req.drop or 0)])
        kept = drop_decoder_layers(model, remove)
        report.update(
            score="mean over calibration tokens of 1 - cos(layer input, layer output); the lowest removed",
            layer_scores=[round(s, 6) for s in scores],
            removed_layers=remove,
            kept_layers=kept,
        )
    else:
        report["layer_sparsity"] = mask_linears(model, req, blocks)
    report["parameters_before"], report["parameters_after"] = before, parameter_counts(model)
    return report


def mask_linears(model, req: PruneRequest, blocks: torch.Tensor | None) -> dict[str, float]:
    """Score and mask every decoder linear layer; returns each layer's measured fraction of zero weights."""
    linears = prunable_linears(model)
    norms = input_channel_norms(model, blocks) if req.method == "wanda" and blocks is not None else {}
    achieved = {}
    for name, linear in linears.items():
        w = linear.weight
        score = wanda_score(w, norms[name]) if req.method == "wanda" else magnitude_score(w)
        if req.n_m is not None:
            keep = n_m_mask(score, *parse_n_m(req.n_m))
        else:
            keep = unstructured_mask(score, float(req.sparsity or 0.0), per_row=req.method == "wanda")
        apply_mask(linear, keep)
        achieved[name] = round(1 - keep.float().mean().item(), 6)
    return achieved


def save_pruned(model, tokenizer, out: Path, report: dict) -> None:
    """model (safetensors) + tokenizer + prune_report.json in `out`, all or nothing."""
    from finetune.io import atomic_dir

    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
