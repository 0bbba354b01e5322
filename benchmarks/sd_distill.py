"""A smaller digits UNet that keeps quality? BK-SDM-style distillation (method=distill_unet) measured on the digits
world: the shipped digits SD (the teacher), its student trained with distillation, and the same student trained
without it (distill.output_weight=0 distill.feature_weight=0) at the same budget (steps, batch, data, seed, lr).

    flock /tmp/cpu.lock env OMP_NUM_THREADS=2 python benchmarks/sd_distill.py          # ~10 min on a 2-core CPU
    python benchmarks/sd_distill.py --steps 20 --per-class 5                           # a smoke run

Both students are recipes/train_sd.py runs of recipes/configs/digits_sd_distill.yaml (its own process, as a user
runs it) on the training split of the digits, captioned "a drawing of the digit k". Each model is then judged as
scripts/build_digits_sd.py judges the shipped one: images for "a drawing of the digit k", k = 0..9, guidance 4.0,
20 DDIM steps, the same seeds for every model; digit accuracy against the prompt, FID and IS from the digits judge
against the real TEST digits (which no model trained on). Sampling speed: denoising steps per second of the whole
pipeline (text encoder, UNet with guidance, VAE decode) at 1 image and at 100 images a batch, best of 3 repeats.

Writes benchmarks/results/sd_distill.md (and .json beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from finetune.data.digits import write_digits_imagefolder  # noqa: E402
from finetune.errors import UserError, exit_on_user_error  # noqa: E402
from finetune.io import atomic_write_json, atomic_write_text  # noqa: E402
from finetune.models.sd_student import count_parameters  # noqa: E402
from scripts.build_digits_sd import DIGITS_SD_DIR, TRAIN_PER_CLASS, evaluate_digits, generate, load_digits_sd  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "sd_distill.md"
CONFIG = "recipes/configs/digits_sd_distill.yaml"
ABLATION = ["distill.output_weight=0", "distill.feature_weight=0"]  # the same student, no teacher in the loss


def train(out: Path, data: Path, steps: int, overrides: list[str]) -> dict:
    """One recipe run in its own process; returns its summary.json."""
    cmd = [sys.executable, "recipes/train_sd.py", "--config", CONFIG, f"train.output_dir={out}"]
    cmd += [f"data.caption_dir={data}", f"train.max_steps={steps}", "train.progress_bar=false", *overrides]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0:
        raise UserError(f"the run failed: {' '.join(cmd)}; see its output above")
    return json.loads((out / "summary.json").read_text())


def steps_per_second(pipe, batch: int, steps: int = 20, repeats: int = 3) -> float:
    """Denoising steps per second of a whole pipeline call (best of `repeats`, after one warm-up call)."""
    prompts = ["a drawing of the digit seven"] * batch
    generate(pipe, prompts[:1], steps=2)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        generate(pipe, prompts, steps=steps, batch_size=batch)
        best = min(best, time.perf_counter() - started)
    return steps / best


def judge(name: str, path: Path, per_class: int, speed_batch: int, extra: dict) -> dict:
    pipe = load_digits_sd(path)
    scores = evaluate_digits(pipe, n_per_class=per_class)
    scores.pop("images")
    row = {
        "model": name,
        "path": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "unet_parameters": count_parameters(pipe.unet),
        "steps_per_s_batch1": steps_per_second(pipe, 1),
        "steps_per_s_batch": steps_per_second(pipe, speed_batch, repeats=2),
        **{k: scores[k] for k in ("accuracy", "fid", "is", "is_std", "kid", "n")},
        **extra,
    }
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict], speed_batch: int) -> str:
    teacher = rows[0]["unet_parameters"]
    lines = [
        f"| model | UNet parameters | sampling steps/s (1 image) | ({speed_batch} images) | digit accuracy | FID | IS | "
        "train steps/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        share = f"{r['unet_parameters']:,} ({100 * r['unet_parameters'] / teacher:.0f}%)"
        speed = f"{r['train_steps_per_s']:.2f}" if r.get("train_steps_per_s") else "-"
        lines.append(
            f"| {r['model']} | {share} | {r['steps_per_s_batch1']:.1f} | {r['steps_per_s_batch']:.2f} | "
            f"{100 * r['accuracy']:.1f}% | {r['fid']:.1f} | {r['is']:.2f} | {speed} |"
        )
    return "\n".join(lines)


@exit_on_user_error
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--steps", type=int, default=400, help="optimizer steps of each student (batch 64; the config has 400)"
    )
    parser.add_argument("--per-class", type=int, default=50, help="judged images per digit class")
    parser.add_argument("--work", default="outputs/sd_distill_bench", help="where the runs and the data go")
    parser.add_argument("--speed-batch", type=int, default=100, help="images a batch in the second speed column")
    parser.add_argument("--variant", default=None, help="distill.student override (default: the config's)")
    args = parser.parse_args(argv)
    work = ROOT / args.work
    data = write_digits_imagefolder(work / "digits_train", n_per_class=TRAIN_PER_CLASS, size=16, split="train")
    variant = [f"distill.student={args.variant}"] if args.variant else []
    torch.manual_seed(0)
    runs = {
        "student, distilled": train(work / "distilled", data, args.steps, variant),
        "student, no distillation": train(work / "plain", data, args.steps, variant + ABLATION),
    }
    rows = [judge("teacher (data/digits_sd)", DIGITS_SD_DIR, args.per_class, args.speed_batch, {})]
    for (name, summary), folder in zip(runs.items(), ("distilled", "plain")):
        extra = {
            "train_steps": summary["steps"],
            "train_seconds": summary["train_seconds"],
            "train_steps_per_s": summary["steps_per_second"],
            "val_loss_after": summary["val_loss_after"],
        }
        rows.append(judge(name, work / folder / "pipeline", args.per_class, args.speed_batch, extra))
    import yaml

    chosen = args.variant or yaml.safe_load((ROOT / CONFIG).read_text())["distill"]["student"]
    result = {"steps": args.steps, "per_class": args.per_class, "speed_batch": args.speed_batch}
    result |= {"student": chosen, "command": " ".join(["python benchmarks/sd_distill.py", *(argv or sys.argv[1:])])}
    result["rows"] = rows
    atomic_write_json(RESULTS.with_suffix(".json"), result)
    head = (
        f"Student `{chosen}`, {args.steps} steps at batch 64 each; {10 * args.per_class} judged images per model.\n\n"
    )
    atomic_write_text(
        RESULTS,
        f"# UNet distillation on the digits world\n\n`{result['command']}`\n\n{head}"
        + table(rows, args.speed_batch)
        + "\n",
    )
    print(table(rows, args.speed_batch))
    return result


if __name__ == "__main__":
    main()
