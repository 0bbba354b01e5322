"""Diffusion training targets compared at equal steps: epsilon vs v-prediction, each with and without min-SNR-5
weighting, on the digits pretraining (issue 5).

    python benchmarks/diffusion_targets.py                # ~35 min on a 2-core CPU
    python benchmarks/diffusion_targets.py --steps 40 --per-class 5 --seeds 0   # smoke run

Every run is the digits pretraining of scripts/build_digits_sd.py at a smaller budget: recipes/train_sd.py with
recipes/configs/digits_sd_pretrain.yaml (method=full: UNet + text encoder from scratch, 10% caption dropout, EMA),
from the SAME initial pipeline (the shipped data/digits_sd's VAE, a fresh random UNet and text encoder), the same
data order and the same number of optimizer steps; only `model.prediction_type` and `loss.snr_gamma` change.
Samples (DDIM 20 steps, guidance 4, the objective's own prediction type) are judged with the digits judge:
accuracy against the prompted digit, FID and IS against the real test digits.

Writes benchmarks/results/diffusion_targets.md (and .json beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from finetune.data.digits import write_digits_imagefolder  # noqa: E402
from finetune.io import atomic_write_json, atomic_write_text  # noqa: E402
from scripts.build_digits_sd import (  # noqa: E402
    DIGITS_SD_DIR,
    RESOLUTION,
    TRAIN_PER_CLASS,
    build_init_pipeline,
    evaluate_digits,
    load_digits_sd,
)

RESULTS = ROOT / "benchmarks" / "results" / "diffusion_targets.md"
VARIANTS = [  # (label, prediction type, min-SNR gamma; 0 = plain MSE)
    ("epsilon", "epsilon", 0.0),
    ("epsilon + min-SNR-5", "epsilon", 5.0),
    ("v-prediction", "v_prediction", 0.0),
    ("v-prediction + min-SNR-5", "v_prediction", 5.0),
]


def train(
    label: str, prediction_type: str, gamma: float, init: Path, captions: Path, out: Path, steps: int, seed: int
) -> dict:
    """One pretraining run in its own process; returns its summary.json."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [
        sys.executable,
        "recipes/train_sd.py",
        "--config",
        "recipes/configs/digits_sd_pretrain.yaml",
        f"model.pretrained={init}",
        f"data.caption_dir={captions}",
        f"train.output_dir={out}",
        "train.overwrite_output_dir=true",
        f"train.max_steps={steps}",
        f"train.seed={seed}",
        "train.eval_every=0",
        "train.progress_bar=false",
        "validation.grids=false",
        f"scheduler.warmup_steps={min(100, steps // 10)}",
        f"model.prediction_type={prediction_type}",
        f"loss.snr_gamma={gamma}",
    ]
    print(f"+ [{label}]", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{label} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())


def markdown(rows: list[dict]) -> str:
    table = "| objective | seeds | digit accuracy | FID | IS | train s |\n|---|---|---|---|---|---|\n"
    for label, _, _ in VARIANTS:
        mine = [r for r in rows if r["label"] == label]

        def stat(key: str, fmt: str, mine=mine) -> str:
            values = [r[key] for r in mine]
            spread = f" ± {statistics.stdev(values):{fmt}}" if len(values) > 1 else ""
            return f"{statistics.mean(values):{fmt}}{spread}"

        table += (
            f"| {label} | {len(mine)} | {stat('accuracy', '.3f')} | {stat('fid', '.1f')} | {stat('is', '.2f')} "
            f"| {stat('train_seconds', '.0f')} |\n"
        )
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--steps", type=int, default=500, help="optimizer steps of every run (the shipped model had 1500)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (data order, init noise)")
    parser.add_argument("--per-class", type=int, default=30, help="judged images per digit per run")
    parser.add_argument("--work", default=str(ROOT / "outputs" / "diffusion_targets"), help="runs' output directories")
    parser.add_argument("--out", default=str(RESULTS), help="results markdown file")
    args = parser.parse_args(argv)
    work = Path(args.work)
    started = time.perf_counter()
    captions = write_digits_imagefolder(work / "digits", n_per_class=TRAIN_PER_CLASS, size=RESOLUTION, split="train")
    from finetune.metrics import load_judge

    judge = load_judge()
    rows = []
    for seed in args.seeds:
        init = build_init_pipeline(DIGITS_SD_DIR / "vae", work / f"init-{seed}", seed=seed)  # same init for all four
        for i, (label, prediction_type, gamma) in enumerate(VARIANTS):
            out = work / f"seed{seed}-run{i}"
            summary = train(label, prediction_type, gamma, init, captions, out, args.steps, seed)
            pipe = load_digits_sd(out / "pipeline")
            assert pipe.scheduler.config.prediction_type == prediction_type  # sampling uses the trained objective
            scores = evaluate_digits(pipe, n_per_class=args.per_class, seed=70_000, judge=judge)
            row = {
                "label": label,
                "seed": seed,
                "prediction_type": prediction_type,
                "snr_gamma": gamma,
                "accuracy": scores["accuracy"],
                "fid": scores["fid"],
                "is": scores["is"],
                "kid": scores["kid"],
                "train_seconds": summary["train_seconds"],
                "steps": summary["steps"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = markdown(rows)
    print(table)
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), {"runs": rows, "args": vars(args)})
    atomic_write_text(
        out, HEADER.format(steps=args.steps, n=10 * args.per_class, seconds=time.perf_counter() - started) + table
    )


HEADER = """# Diffusion targets on the digits pretraining: epsilon vs v-prediction, min-SNR-5 weighting

`python benchmarks/diffusion_targets.py` ({seconds:.0f} s wall on the 2-core CPU). Each run pretrains the UNet
(3.3M) and text encoder of the digits SD from the same random initialisation for {steps} optimizer steps of
batch 64 (the shipped model: 1500), with recipes/train_sd.py and recipes/configs/digits_sd_pretrain.yaml;
only `model.prediction_type` and `loss.snr_gamma` differ. Judged on {n} images (ten class prompts, DDIM 20
steps, guidance 4): accuracy = share classified as the prompted digit by the digits judge; FID and IS on the
judge's features against the real test digits (FID biased upwards at this n; real train vs test digits score 2.2).

"""


if __name__ == "__main__":
    main()
