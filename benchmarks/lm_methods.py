"""LoRA vs full fine-tuning vs gradual unfreezing (vs prompt tuning) on the legal corpus, at one step budget.

    python benchmarks/lm_methods.py                         # all four methods, ~20 minutes on 2 CPU cores
    python benchmarks/lm_methods.py --methods lora,unfreeze # a subset (rows of earlier runs are kept)

Every method runs the recipe exactly as a user does, in its own process:
`accelerate launch --config_file accelerate_config.yaml recipes/train_lm.py --config <config> [overrides]`,
with the step budget, batch and sequence length of the main job (recipes/configs/legal_lora.yaml: 60 steps,
batch 4, 256-token blocks) and bf16 autocast from accelerate_config.yaml. Before/after perplexities on the legal
validation split (domain) and the general-text split (forgetting) are read from each run's summary.json.

- lora:     recipes/configs/legal_lora.yaml unchanged (the main job itself, decoder layers compiled; its wall time
            includes the cold compile, the merged export and the reload checks);
- full:     recipes/configs/legal_unfreeze.yaml with full.unfreeze=none and full.discriminative_factor=1
            (every weight trains from step 0 at one learning rate, 1e-4);
- unfreeze: recipes/configs/legal_unfreeze.yaml unchanged (ULMFiT: top group first, one more every 10 steps,
            lr / 2.6 per group below the top);
- prompt:   recipes/configs/legal_lora.yaml with method=prompt (20 virtual tokens, lr 3e-2, plain 2D mask; compiled
            layers as the main job). full and unfreeze run eager, so compare their times with that in mind.

Results: benchmarks/results/lm_methods.md (and lm_methods.json with the raw summaries).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "lm_methods.md"
CONFIGS = ROOT / "recipes" / "configs"
COMMON = ["train.progress_bar=false", "train.tensorboard=false"]

METHODS = {
    "lora": ("LoRA r=16, all-linear (lr 1e-3; compiled layers)", "legal_lora.yaml", []),
    "full": (
        "full fine-tuning (lr 1e-4)",
        "legal_unfreeze.yaml",
        ["full.unfreeze=none", "full.discriminative_factor=1.0"],
    ),
    "unfreeze": ("gradual unfreezing (ULMFiT, lr 1e-4 / 2.6 per group)", "legal_unfreeze.yaml", []),
    "prompt": (
        "prompt tuning, 20 virtual tokens (lr 3e-2; compiled layers)",
        "legal_lora.yaml",
        [
            "method=prompt",
            "optim.lr=3e-2",
            "data.packed_attention=none",
            "export.merged=false",
            "prompt.init_text=Legal text. Contract clauses, statutes and court decisions.",
        ],
    ),
}


def run_method(name: str, work: Path, steps: int | None) -> dict:
    label, config, overrides = METHODS[name]
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--config_file",
        str(ROOT / "accelerate_config.yaml"),
        str(ROOT / "recipes" / "train_lm.py"),
        "--config",
        str(CONFIGS / config),
        f"train.output_dir={out}",
        *COMMON,
        *overrides,
        *([f"train.max_steps={steps}"] if steps else []),
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("step_seconds", None)
    return {
        "label": label,
        "config": config,
        "overrides": overrides,
        "wall_seconds": round(wall, 1),
        "summary": summary,
    }


def pct(before: float, after: float) -> str:
    return f"{before:.2f} -> {after:.2f} ({100 * (after / before - 1):+.1f}%)"


def table(rows: dict) -> list[str]:
    lines = [
        "| method | trainable params | legal ppl before -> after | general ppl before -> after | train s | job wall s |",
        "|---|---|---|---|---|---|",
    ]
    for name in METHODS:
        if name not in rows:
            continue
        r = rows[name]
        s = r["summary"]
        b, a = s["perplexity_before"], s["perplexity_after"]
        lines.append(
            f"| {r['label']} | {s['trainable_parameters']:,} | {pct(b['validation'], a['validation'])} | "
            f"{pct(b['general_validation'], a['general_validation'])} | {s['train_seconds']:.0f} | {r['wall_seconds']:.0f} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--methods", default="lora,full,unfreeze,prompt", help=f"comma-separated subset of {','.join(METHODS)}"
    )
    p.add_argument("--steps", type=int, default=None, help="override the configs' 60 steps (smoke runs)")
    p.add_argument("--work", default=str(ROOT / "outputs" / "lm_methods"), help="where the runs write their outputs")
    p.add_argument(
        "--results", default=str(RESULTS), help="markdown results file (a .json with raw summaries beside it)"
    )
    a = p.parse_args()
    names = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    from finetune.io import atomic_write_json, atomic_write_text

    raw_path = Path(a.results).with_suffix(".json")
    rows = json.loads(raw_path.read_text()) if raw_path.is_file() else {}
    work = Path(a.work)
    for name in names:
        rows[name] = run_method(name, work, a.steps)
        s = rows[name]["summary"]
        print(
            f"{name}: {s['relative_change']} in {s['train_seconds']} s (job {rows[name]['wall_seconds']} s)", flush=True
        )
        atomic_write_json(raw_path, rows)
    device = f"CPU ({os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
    steps = {r["summary"]["steps"] for r in rows.values()}
    lines = [
        "# Domain gained vs general lost: LoRA, full fine-tuning, gradual unfreezing, prompt tuning",
        "",
        f"SmolLM2-135M-Instruct on the legal corpus; {', '.join(map(str, sorted(steps)))} optimizer steps of batch 4 x "
        f"256-token packed blocks each; bf16 autocast (accelerate_config.yaml); on {device}. Perplexity on the legal "
        "validation split (domain) and on general text (data/general/validation.jsonl, forgetting), before and after "
        "training, from each run's summary.json. Each method in its own `accelerate launch ... recipes/train_lm.py` "
        "process (see benchmarks/lm_methods.py for the exact configs and overrides).",
        "",
        f"Command: `{' '.join(['python'] + sys.argv)}`",
        "",
        *table(rows),
        "",
    ]
    text = "\n".join(lines)
    atomic_write_text(Path(a.results), text)
    print(text)


if __name__ == "__main__":
    main()
