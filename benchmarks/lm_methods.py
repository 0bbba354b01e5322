"""Domain gained vs general lost: LoRA, full fine-tuning, gradual unfreezing and prompt tuning, each with no
forgetting guard, with replay of general text, and with a KL-to-base penalty, at one step budget.

    python benchmarks/lm_methods.py                                   # the 12 runs, ~45 minutes on 2 CPU cores
    python benchmarks/lm_methods.py --methods lora,prompt --guards none,kl   # a subset (earlier rows are kept)

Every run is the recipe exactly as a user runs it, in its own process:
`accelerate launch --config_file accelerate_config.yaml recipes/train_lm.py --config <config> [overrides]`, with the
main job's budget (recipes/configs/legal_lora.yaml: 60 steps, batch 4, 256-token blocks) and bf16 autocast from
accelerate_config.yaml. Evaluations run only at the end (train.eval_every=0) and no merged/GGUF export is written,
which changes no trained weight. The figures come from each run's summary.json:

- domain: perplexity on data/legal/test.jsonl, template-disjoint from training (data/README.md), base -> adapted;
- general text: perplexity on data/general/validation.jsonl (topics that share no frame with anything trained);
- KL to base: mean per-token KL(base || adapted) on that general text (a top-k lower bound for full / unfreeze,
  whose base is not kept in memory; exact for LoRA and prompt, whose base is the model with its adapter disabled);
- base samples: perplexity on text the untouched model wrote itself from generic prompts (metrics/forgetting.py).

Methods:
- lora:     recipes/configs/legal_lora.yaml at lr 1e-3 (decoder layers compiled, as the main job; the main job's lr 3e-4
            and guard were chosen afterwards from `--set` rows: benchmarks/results/lm_defaults.md);
- full:     recipes/configs/legal_unfreeze.yaml with full.unfreeze=none and full.discriminative_factor=1
            (every weight trains from step 0 at one learning rate, 1e-4);
- unfreeze: recipes/configs/legal_unfreeze.yaml unchanged (ULMFiT: top group first, one more every 10 steps,
            lr / 2.6 per group below the top);
- prompt:   recipes/configs/legal_lora.yaml with method=prompt (20 virtual tokens, lr 3e-2, plain 2D mask).
Guards (recipes/train_lm.py `guard:`; general rows come from data/general/train.jsonl, which shares no topic with
the general validation text): none; replay (a quarter of each micro-batch is general text, trained as usual);
kl (the same general rows, trained with beta * KL(base || adapted) instead of their cross-entropy, beta 1).

Results: benchmarks/results/lm_methods.md (and lm_methods.json with the raw summaries).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import lm_recipe_command  # noqa: E402  (after the path insert, as a script)

RESULTS = ROOT / "benchmarks" / "results" / "lm_methods.md"
CONFIGS = ROOT / "recipes" / "configs"
COMMON = ["train.progress_bar=false", "train.tensorboard=false"]

COMMON += ["train.eval_every=0", "train.save_every=0", "export.merged=false", "export.gguf=none"]
GENERAL_TRAIN = str(ROOT / "data" / "general" / "train.jsonl")
GUARDS = {
    "none": ["guard.method=none"],  # the main job's config carries the KL guard since it was chosen from this table
    "replay": ["guard.method=replay", f"guard.train_file={GENERAL_TRAIN}"],
    "kl": ["guard.method=kl", f"guard.train_file={GENERAL_TRAIN}", "guard.beta=1.0"],
}
METHODS = {
    "lora": ("LoRA r=16, all-linear (lr 1e-3; compiled layers)", "legal_lora.yaml", ["optim.lr=1e-3"]),
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


def run_method(name: str, guard: str, work: Path, steps: int | None, extra: list[str], tag: str) -> dict:
    label, config, overrides = METHODS[name]
    overrides = overrides + GUARDS[guard] + extra
    if extra:
        label += f" [{', '.join(extra)}]"
    out = work / f"{name}-{guard}{tag}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        *lm_recipe_command(CONFIGS / config),
        f"train.output_dir={out}",
        *COMMON,
        *overrides,
        *([f"train.max_steps={steps}"] if steps else []),
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name} with guard {guard} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("step_seconds", None)
    return {
        "label": label,
        "guard": guard,
        "config": config,
        "overrides": overrides,
        "wall_seconds": round(wall, 1),
        "summary": summary,
    }


def pct(before: float, after: float) -> str:
    return f"{before:.2f} -> {after:.2f} ({100 * (after / before - 1):+.1f}%)"


def kl_cell(summary: dict) -> str:
    (key, value), *_ = summary["forgetting"].items()
    return f"{value:.4f}" + (" (top-k bound)" if key.endswith("lower_bound") else "")


def table(rows: dict) -> list[str]:
    lines = [
        "| method | guard | trainable params | legal test ppl (domain) | general ppl | KL to base (nats/token) "
        "| base-sample ppl | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {f"{m}-{g}": i for i, (m, g) in enumerate((m, g) for m in METHODS for g in GUARDS)}
    for key in sorted(rows, key=lambda k: (order[rows[k].get("base_key", k)], k)):
        r = rows[key]
        s = r["summary"]
        b, a = s["perplexity_before"], s["perplexity_after"]
        lines.append(
            f"| {r['label']} | {r['guard']} | {s['trainable_parameters']:,} | {pct(b['test'], a['test'])} | "
            f"{pct(b['general_validation'], a['general_validation'])} | {kl_cell(s)} | "
            f"{pct(b['base_samples'], a['base_samples'])} | {s['train_seconds']:.0f} |"
        )
    return lines


def command_of(key: str, row: dict) -> str:
    """The command that measured a row (rows stored before commands were recorded ran one method and guard each)."""
    if "command" in row:
        return row["command"]
    method, guard = key.split("-", 1)
    return f"python benchmarks/lm_methods.py --methods {method} --guards {guard} --steps {row['summary']['steps']}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--methods", default="lora,full,unfreeze,prompt", help=f"comma-separated subset of {','.join(METHODS)}"
    )
    p.add_argument("--guards", default="none,replay,kl", help=f"comma-separated subset of {','.join(GUARDS)}")
    p.add_argument("--steps", type=int, default=None, help="override the configs' 60 steps (smoke runs)")
    p.add_argument("--work", default=str(ROOT / "outputs" / "lm_methods"), help="where the runs write their outputs")
    p.add_argument(
        "--results", default=str(RESULTS), help="markdown results file (a .json with raw summaries beside it)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra recipe override for every run (repeatable); such rows are stored under their own key (--tag)",
    )
    p.add_argument(
        "--title",
        default="Domain gained vs general lost: four methods, each without and with a forgetting guard",
        help="the results file's heading",
    )
    p.add_argument("--tag", default="", help="suffix of the stored row keys for runs with --set (e.g. -beta3)")
    a = p.parse_args()
    if a.set and not a.tag:
        raise SystemExit("--set needs --tag, so the row does not replace the plain method's row")
    names = [m.strip() for m in a.methods.split(",") if m.strip()]
    guards = [g.strip() for g in a.guards.split(",") if g.strip()]
    unknown = [m for m in names if m not in METHODS] + [g for g in guards if g not in GUARDS]
    if unknown:
        raise SystemExit(f"unknown {unknown}; methods: {', '.join(METHODS)}; guards: {', '.join(GUARDS)}")
    from finetune.io import atomic_write_json, atomic_write_text

    raw_path = Path(a.results).with_suffix(".json")
    rows = json.loads(raw_path.read_text()) if raw_path.is_file() else {}
    work = Path(a.work)
    for name in names:
        for guard in guards:
            key = f"{name}-{guard}{a.tag}"
            rows[key] = run_method(name, guard, work, a.steps, a.set, a.tag)
            rows[key]["base_key"] = f"{name}-{guard}"
            rows[key]["command"] = shlex.join(["python"] + sys.argv)
            s = rows[key]["summary"]
            print(f"{key}: {s['relative_change']} {s['forgetting']} in {s['train_seconds']} s", flush=True)
            atomic_write_json(raw_path, rows)
    device = f"CPU ({os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
    steps = {r["summary"]["steps"] for r in rows.values()}
    lines = [
        f"# {a.title}",
        "",
        f"SmolLM2-135M-Instruct on the legal corpus; {', '.join(map(str, sorted(steps)))} optimizer steps of batch 4 x "
        f"256-token packed blocks each; bf16 autocast (accelerate_config.yaml); on {device}. Base -> adapted: "
        "perplexity on the template-disjoint legal test split (domain), on general text (data/general/validation.jsonl) "
        "and on the base model's own samples, and the mean KL(base || adapted) per general token; from each run's "
        "summary.json. Each run in its own `accelerate launch ... recipes/train_lm.py` process (see "
        "benchmarks/lm_methods.py for the exact configs and overrides).",
        "",
        "Commands:",
        "",
        *sorted({f"- `{command_of(key, r)}`" for key, r in rows.items()}),
        "",
        *table(rows),
        "",
    ]
    text = "\n".join(lines)
    atomic_write_text(Path(a.results), text)
    print(text)


if __name__ == "__main__":
    main()
