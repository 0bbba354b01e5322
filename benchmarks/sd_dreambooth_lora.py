"""DreamBooth-LoRA speed and memory: OUR recipe (recipes/train_sd.py) against diffusers' OWN training script.

    python benchmarks/sd_dreambooth_lora.py --diffusers-examples ~/.cache/finetune/diffusers_examples/58eb52c0803e
    python benchmarks/sd_dreambooth_lora.py --sdxl ...        # SDXL: train_dreambooth_lora_sdxl.py against ours

On this shared 2-core machine run it under the CPU lock: `flock /tmp/cpu.lock env OMP_NUM_THREADS=2 python ...`.

The reference is diffusers' examples/dreambooth/train_dreambooth_lora.py (train_dreambooth_lora_sdxl.py with
--sdxl), UNMODIFIED and not vendored here. Fetch it once, from the git tag of your installed diffusers
(`python -c "import diffusers; print(diffusers.__version__)"`) or a commit, into a folder outside the repo:

    D=~/.cache/finetune/diffusers_examples/v0.42.1 && mkdir -p $D && for f in train_dreambooth_lora.py \\
        train_dreambooth_lora_sdxl.py; do curl -fsSL -o $D/$f \\
        https://raw.githubusercontent.com/huggingface/diffusers/v0.42.1/examples/dreambooth/$f; done
    # or: git clone https://github.com/huggingface/diffusers && git -C diffusers show <tag>:examples/dreambooth/<file>
    # offline, from an existing clone or mirror: git -C <clone> show <commit>:examples/dreambooth/<file> > $D/<file>

and pass that folder as --diffusers-examples. The results name the file's sha256 and the folder (whose name
should say the tag or commit). torchvision, which the scripts import for their image transforms, cannot be
installed on this CPU machine: benchmarks/script_launcher.py registers benchmarks/torchvision_standin.py (the
few transforms the scripts call, on PIL images, as torchvision does them) after transformers and diffusers are
imported. Where torchvision is installed, pass --real-torchvision and the script gets the real one.

Both sides: the same random-weight model directory (the tiny SD, or the tiny SDXL, both with SD's 8x VAE), the same
instance and class images (class images already present, so neither generates any), resolution, batch, LoRA rank
(alpha = rank, the script's), steps, lr 1e-4 constant, AdamW (weight decay 1e-2), prior preservation with weight
1.0, gradient clipping 1.0, centre crop after a Lanczos resize (the script's default interpolation; ours resizes
with Lanczos too), fp32 (mixed precision "no") unless --mixed-precision says otherwise; each run in its own
process, launched the same way (benchmarks/script_launcher.py). Each side keeps its own defaults otherwise: the
script logs its loss every step (tensorboard, tqdm), ours keeps its NaN/divergence guard, its metrics.jsonl /
tensorboard logging every train.log_every=10 steps and its progress bar; the script has no validation prompt, so
ours draws no sample grids either (validation.grids=false; its validation loss runs after the last step).

Measured how: the launcher's global torch.optim step post-hook stamps time.perf_counter() after every optimizer
step, in both processes alike. steps/s = (N - 1) / (time of step N - time of step 1): the steady loop, every step
whole (data, forward, backward, clipping, optimizer, logging), without the one-off start (imports, loading, our
caching, the first step); the median interval between steps is reported beside it, and the process's time from
launch to the last step (everything one-off included). Peak memory: the process's peak RSS (ru_maxrss) read at the
last optimizer step, so neither side's saving afterwards counts. Sides alternate (reference, ours, reference, ...)
--repeats times per input size; each side's MEDIAN run (by steps/s) is reported, every run's figure beside it.
Results: benchmarks/results/sd_dreambooth_lora.md and .json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "sd_dreambooth_lora.md"
LAUNCHER = ROOT / "benchmarks" / "script_launcher.py"
DEFAULT_EXAMPLES = Path.home() / ".cache" / "finetune" / "diffusers_examples"
SCRIPTS = {False: "train_dreambooth_lora.py", True: "train_dreambooth_lora_sdxl.py"}
INSTANCE_PROMPT, CLASS_PROMPT = "a photo of sks dog", "a photo of a dog"


# ---------------------------------------------------------------------------------------------
# Setup shared by both sides
# ---------------------------------------------------------------------------------------------


def make_model_dir(path: Path, sdxl: bool, resolution: int) -> None:
    """Random-weight tiny SD or tiny SDXL, both with SD's 8x VAE downsampling, saved as a diffusers directory."""
    from finetune.models.sd import build_pipeline, build_sd_from_configs, build_tiny_sdxl, tiny_sd_configs

    vae = tiny_sd_configs(sample_size=resolution // 8, vae_scale_factor=8)["vae"]
    if sdxl:
        from diffusers import AutoencoderKL

        pipe = build_tiny_sdxl(seed=0, sample_size=resolution // 8)
        # SDXL's own VAE downsamples 8x, as SD's: the same 8x8 latents at 64 px as the SD1.x rows (the tiny SDXL's
        # default VAE is 2x, which would make the UNet's share of a step 16x larger than in any real SDXL run)
        pipe.register_modules(vae=AutoencoderKL(**vae))
    else:
        configs = tiny_sd_configs(sample_size=resolution // 8, vae_scale_factor=8)
        pipe = build_pipeline(build_sd_from_configs(configs, seed=0))
    pipe.save_pretrained(str(path), safe_serialization=True)


def make_images(folder: Path, n: int, width: int, height: int, seed: int) -> None:
    """Flat-colour images with a square 'subject'; sizes other than the training size make both sides resize."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = np.zeros((height, width, 3), np.uint8)
        a[...] = rng.integers(0, 255, 3)
        a[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(folder / f"img{i}.png")


def find_script(examples: str | None, sdxl: bool) -> Path:
    """diffusers' script in --diffusers-examples (or the one folder under ~/.cache/finetune/diffusers_examples)."""
    name = SCRIPTS[sdxl]
    if examples:
        candidates = [Path(examples).expanduser() / name]
    else:
        candidates = sorted(DEFAULT_EXAMPLES.glob(f"*/{name}"))
    if len(candidates) != 1 or not candidates[0].is_file():
        where = examples or f"{DEFAULT_EXAMPLES}/<tag>/"
        raise SystemExit(
            f"error: diffusers' {name} not found (looked in {where}); fetch it as this file's docstring says "
            "and pass its folder as --diffusers-examples"
        )
    return candidates[0]


# ---------------------------------------------------------------------------------------------
# The two sides' command lines (the same settings, each in its own words)
# ---------------------------------------------------------------------------------------------


def reference_args(a, work: Path, out: Path) -> list[str]:
    """diffusers' script, on its documented flags."""
    return [
        f"--pretrained_model_name_or_path={work / 'model'}",
        f"--instance_data_dir={work / 'instance'}",
        f"--instance_prompt={INSTANCE_PROMPT}",
        "--with_prior_preservation",
        f"--class_data_dir={work / 'class'}",
        f"--class_prompt={CLASS_PROMPT}",
        f"--num_class_images={a.num_images}",
        "--prior_loss_weight=1.0",
        f"--resolution={a.resolution}",
        "--center_crop",
        f"--train_batch_size={a.batch_size}",
        f"--rank={a.rank}",
        f"--max_train_steps={a.steps}",
        "--learning_rate=1e-4",
        "--lr_scheduler=constant",
        "--lr_warmup_steps=0",
        "--adam_weight_decay=1e-2",
        "--max_grad_norm=1.0",
        "--seed=0",
        f"--mixed_precision={a.mixed_precision}",
        f"--output_dir={out}",
    ]


def ours_args(a, work: Path, out: Path) -> list[str]:
    """Our recipe, on its config keys; everything not named here is the recipe's default."""
    return [
        f"model.pretrained={work / 'model'}",
        f"model.resolution={a.resolution}",
        "method=lora",
        f"data.instance_dir={work / 'instance'}",
        f"data.instance_prompt={INSTANCE_PROMPT}",
        "data.center_crop=true",
        "prior.enabled=true",
        f"prior.class_dir={work / 'class'}",
        f"prior.class_prompt={CLASS_PROMPT}",
        f"prior.num_class_images={a.num_images}",
        "prior.loss_weight=1.0",
        f"lora.rank={a.rank}",
        f"lora.alpha={a.rank}",
        f"train.output_dir={out}",
        f"train.max_steps={a.steps}",
        f"train.batch_size={a.batch_size}",
        "train.max_grad_norm=1.0",
        "validation.grids=false",
        "optim.lr=1e-4",
        "optim.weight_decay=1e-2",
        "scheduler.name=constant",
    ]


def run_side(role: str, a, work: Path, script: Path) -> dict:
    """One run of one side through the launcher; its step stamps turned into the figures the table reports."""
    out, record = work / f"out_{role}", work / f"{role}_steps.json"
    shutil.rmtree(out, ignore_errors=True)
    if role == "reference":
        standin = [] if a.real_torchvision else ["--torchvision-standin"]
        cmd = [*standin, str(script), *reference_args(a, work, out)]
    else:
        cmd = [str(ROOT / "recipes" / "train_sd.py"), *ours_args(a, work, out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACCELERATE_MIXED_PRECISION": a.mixed_precision}
    proc = subprocess.run(
        [sys.executable, str(LAUNCHER), "--record", str(record), *cmd],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{role} run failed:\n{proc.stderr[-4000:]}")
    return step_figures(json.loads(record.read_text()), a.steps, role)


def step_figures(record: dict, steps: int, role: str) -> dict:
    """steps/s of the steady loop, the median step, launch-to-last-step seconds and peak RSS at the last step."""
    ends = record["step_ends"]
    if len(ends) != steps:
        raise SystemExit(f"{role}: {len(ends)} optimizer steps recorded, {steps} expected")
    intervals = [b - a for a, b in zip(ends, ends[1:])]
    return {
        "steps_per_second": (len(ends) - 1) / (ends[-1] - ends[0]),
        "median_step_seconds": statistics.median(intervals),
        "launch_to_last_step_seconds": ends[-1] - record["started"],
        "peak_rss_bytes": record["peak_rss_bytes"][-1],
    }


# ---------------------------------------------------------------------------------------------
# Driver and results
# ---------------------------------------------------------------------------------------------


def median_run(runs: list[dict]) -> dict:
    """The run with the median steps/s (the lower middle one for an even count), with every run's figures kept."""
    chosen = dict(sorted(runs, key=lambda r: r["steps_per_second"])[(len(runs) - 1) // 2])
    chosen["all_steps_per_second"] = [round(r["steps_per_second"], 2) for r in runs]
    chosen["all_peak_rss_mib"] = [round(r["peak_rss_bytes"] / 2**20) for r in runs]
    return chosen


def table(rows: list[dict]) -> list[str]:
    mib = lambda b: f"{b / 2**20:,.0f} MiB"  # noqa: E731
    lines = [
        "| instance images | diffusers' script steps/s | ours steps/s | **ours / script** | median step script / ours "
        "| peak RSS script / ours | ours / script memory | launch to last step script / ours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ref, ours = row["reference"], row["ours"]
        lines.append(
            f"| {row['size']} | {ref['steps_per_second']:.2f} | {ours['steps_per_second']:.2f} | "
            f"**{ours['steps_per_second'] / ref['steps_per_second']:.2f}x** | "
            f"{ref['median_step_seconds'] * 1e3:.1f} / {ours['median_step_seconds'] * 1e3:.1f} ms | "
            f"{mib(ref['peak_rss_bytes'])} / {mib(ours['peak_rss_bytes'])} | "
            f"{ours['peak_rss_bytes'] / ref['peak_rss_bytes']:.3f}x | "
            f"{ref['launch_to_last_step_seconds']:.1f} / {ours['launch_to_last_step_seconds']:.1f} s |"
        )
    return lines


def family_section(family: str, run: dict) -> list[str]:
    """One family's table, its settings and the command that measured it."""
    rows, st = run["rows"], run["settings"]
    speed = all(r["ours"]["steps_per_second"] >= 1.5 * r["reference"]["steps_per_second"] for r in rows)
    memory = all(r["ours"]["peak_rss_bytes"] <= r["reference"]["peak_rss_bytes"] for r in rows)
    return [
        f"### {family}: {run['model']}, random weights",
        "",
        f"Reference: diffusers' `examples/dreambooth/{Path(run['script']).name}`, unmodified, from "
        f"`{run['script']}` (sha256 {run['script_sha256'][:16]}), {run['torchvision']}. {st['resolution']} px, batch "
        f"{st['batch_size']} instance + {st['batch_size']} class image(s), LoRA rank {st['rank']}, {st['steps']} steps, "
        f"lr 1e-4 constant, prior weight 1.0, mixed precision {st['mixed_precision']}; {run['device']}; "
        f"{run['repeats']} alternating runs per side and size, each side's median run shown.",
        "",
        *table(rows),
        "",
        "Target, ours >= 1.5x the script's steps/s at every input size: "
        f"{'met' if speed else 'NOT met'}; peak memory no higher at every input size: "
        f"{'met' if memory else 'NOT met'}. Every run's steps/s: "
        + "; ".join(
            f"{r['size']}: script {r['reference']['all_steps_per_second']}, ours {r['ours']['all_steps_per_second']}"
            for r in rows
        )
        + ".",
        "",
        f"Command: `{run['command']}`",
        "",
    ]


NOTES = "## Notes"  # the hand-written part of the results file starts at this heading
HEADER = [
    "# DreamBooth-LoRA: our recipe vs diffusers' own script",
    "",
    "Written by benchmarks/sd_dreambooth_lora.py (its docstring says how each figure is measured). steps/s: "
    "optimizer steps of the steady loop, (N - 1) / (time of step N - time of step 1), stamped by the same "
    "torch.optim post-hook in both processes (benchmarks/script_launcher.py); every step whole (data, forward, "
    "backward, clipping, optimizer, logging). Peak RSS read at the last optimizer step. Launch to last step: "
    "the process's whole time up to its last step (imports, loading, our caching and the first step included).",
    "",
]


def write_results(a, rows: list[dict], script: Path, device: str) -> str:
    """Record this family's run in the json (the other family's run stays) and render the markdown from it."""
    from finetune.io import atomic_write_json, atomic_write_text

    results = Path(a.results)
    data = json.loads(results.with_suffix(".json").read_text()) if results.with_suffix(".json").is_file() else {}
    data = {k: v for k, v in data.items() if k in ("SD1.x", "SDXL")}  # a file of the older format is replaced
    data["SDXL" if a.sdxl else "SD1.x"] = {
        "model": "tiny SDXL (build_tiny_sdxl, its VAE swapped for the 8x one of tiny_sd_configs(vae_scale_factor=8))"
        if a.sdxl
        else "tiny SD (tiny_sd_configs(vae_scale_factor=8))",
        "script": str(script),
        "script_sha256": hashlib.sha256(script.read_bytes()).hexdigest(),
        "torchvision": "the real torchvision" if a.real_torchvision else "with the torchvision stand-in",
        "device": device,
        "repeats": a.repeats,
        "command": " ".join(["python", *sys.argv]),
        "settings": {k: getattr(a, k) for k in ("steps", "batch_size", "rank", "resolution", "mixed_precision")},
        "rows": rows,
    }
    text = "\n".join(
        HEADER
        + [line for family in ("SD1.x", "SDXL") if family in data for line in family_section(family, data[family])]
    )
    old = results.read_text() if results.is_file() else ""
    if NOTES in old:  # hand-written notes below the tables (profiles, findings) survive a re-run
        text += "\n" + old[old.index(NOTES) :]
    atomic_write_json(results.with_suffix(".json"), data)
    atomic_write_text(results, text)
    return text


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        w, _, h = item.partition("x")
        sizes.append((int(w), int(h)))
    return sizes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--diffusers-examples",
        default=None,
        help=f"folder holding diffusers' {SCRIPTS[False]} / {SCRIPTS[True]} (default: the one under {DEFAULT_EXAMPLES})",
    )
    p.add_argument("--sdxl", action="store_true", help="tiny SDXL against train_dreambooth_lora_sdxl.py")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=1, help="instance images per step (plus as many class images)")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank (alpha = rank on both sides)")
    p.add_argument("--resolution", type=int, default=64, help="training image side")
    p.add_argument("--num-images", type=int, default=4, help="instance images, and class images")
    p.add_argument(
        "--instance-sizes",
        default="64x64,1024x1280",
        help="instance image sizes WxH, one table row each (class images are always resolution x resolution)",
    )
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per side and size; the median is kept")
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"], help="for both sides")
    p.add_argument("--real-torchvision", action="store_true", help="torchvision is installed: no stand-in")
    p.add_argument("--results", default=None, help=f"markdown results file (default {RESULTS}; the .json beside it)")
    a = p.parse_args()
    a.results = a.results or str(RESULTS)
    script = find_script(a.diffusers_examples, a.sdxl)
    device = f"CPU ({os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
    rows = []
    with tempfile.TemporaryDirectory(prefix="sd_bench_") as tmp:
        work = Path(tmp)
        make_model_dir(work / "model", a.sdxl, a.resolution)
        make_images(work / "class", a.num_images, a.resolution, a.resolution, seed=2)
        for width, height in parse_sizes(a.instance_sizes):
            shutil.rmtree(work / "instance", ignore_errors=True)
            make_images(work / "instance", a.num_images, width, height, seed=1)
            runs: dict[str, list[dict]] = {"reference": [], "ours": []}
            for _ in range(a.repeats):  # alternate the sides so both meet the same background load
                for role in runs:
                    runs[role].append(run_side(role, a, work, script))
                print(
                    f"{width}x{height}: "
                    + ", ".join(f"{role} {r[-1]['steps_per_second']:.2f} steps/s" for role, r in runs.items()),
                    flush=True,
                )
            rows.append({"size": f"{width}x{height}", **{role: median_run(r) for role, r in runs.items()}})
    print(write_results(a, rows, script, device))


if __name__ == "__main__":
    main()
