"""Personalization measured: DreamBooth (full UNet, with and without prior preservation), DreamBooth-LoRA, LoRA and
textual inversion of the project's hollow-triangle subject on the shipped digits Stable Diffusion.

    python benchmarks/personalization.py                 # ~15 min on a 2-core CPU; writes the table below
    python benchmarks/personalization.py --quick         # fewer steps and images: a smoke run

Every run is recipes/train_sd.py with a recipes/configs/digits_*.yaml config, started from data/digits_sd, in its
own process as a user would run it. Each trained model is then loaded with STOCK diffusers (pipeline directory,
`load_lora_weights`, `load_textual_inversion`) and judged:
- subject rate: share of images for the identifier prompt that the subject detector (scripts/make_subject.py)
  calls the subject;
- class-prompt digit accuracy: images for "a drawing of the digit k", k = 0..9, classified as k by the digits judge
  (language drift: does the tuned model still draw the class?), their FID against the real test digits, and the
  share of them that show the subject (leakage);
- train time (the recipe's own optimizer-step time, class-image generation excluded) and artifact size.

Prior preservation is the recipe's `prior.enabled` (loss = instance + 1.0 x prior, every batch half instance, half
class images) in two forms: "10 class prompts" is `prior.class_prompts` (the digits configs' default): 20 base-model
images for each of "a drawing of the digit zero" ... "nine", each trained with its own prompt; "1 class prompt" is
`prior.class_prompt` = "a drawing of the digit" with 200 base-model images. Class images are generated once per
benchmark (cached by prompt in the work folder) and their generation is not counted in train time.

Writes benchmarks/results/personalization.md (and .json beside it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from finetune.data.digits import to_uint8_hwc  # noqa: E402
from finetune.io import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402
from scripts.build_digits_sd import evaluate_digits, generate, load_digits_sd  # noqa: E402
from scripts.make_subject import INSTANCE_PROMPT, load_subject_detector  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "personalization.md"
TI_PROMPT = "a drawing of a <triangle>"  # the TI config's template with the placeholder (diffusers expands its vectors)
OLD_TI = [
    "textual_inversion.num_vectors=1",
    "textual_inversion.templates=[]",
    "textual_inversion.template=object",
    "optim.lr=0.005",
]  # diffusers' example defaults: 1 vector, "a photo of a {}" templates, lr 5e-3


@dataclass
class Run:
    name: str  # row label
    config: str  # recipes/configs/<config>.yaml
    artifact: str  # "pipeline", "lora" or "ti": how the result is loaded
    overrides: list[str] = field(default_factory=list)  # key=value overrides of the config
    prior: str = "none"  # which prior preservation the run has
    subject_prompt: str = INSTANCE_PROMPT  # the prompt that should produce the subject
    subject_digit: int = -1  # >= 0: the "subject" is this digit class, judged by the digits judge, not the detector


def runs(steps: int, ti_steps: int, class_dir: Path, sevens_dir: Path) -> list[Run]:
    """The compared runs: equal optimizer steps (4 instance images each) for every UNet method."""
    unet = [f"train.max_steps={steps}"]
    per_digit = [f"prior.class_dir={class_dir / 'per_digit'}"]  # the configs' ten class prompts, 20 images each
    one_prompt = [
        f"prior.class_dir={class_dir / 'one_prompt'}",
        "prior.class_prompts=[]",
        "prior.class_prompt=a drawing of the digit",
        "prior.num_class_images=200",
    ]
    no_prior = ["prior.enabled=false"]
    return [
        Run("DreamBooth", "digits_dreambooth", "pipeline", unet + per_digit, "10 class prompts"),
        Run("DreamBooth", "digits_dreambooth", "pipeline", unet + one_prompt, "1 class prompt"),
        Run("DreamBooth", "digits_dreambooth", "pipeline", unet + no_prior, "none"),
        Run("DreamBooth-LoRA", "digits_dreambooth_lora", "lora", unet + per_digit, "10 class prompts"),
        Run("DreamBooth-LoRA", "digits_dreambooth_lora", "lora", unet + no_prior, "none"),
        Run("LoRA (captioned folder)", "digits_lora", "lora", unet, "none"),
        Run(
            "Textual inversion (3 vectors, lr 5e-2)",
            "digits_textual_inversion",
            "ti",
            [f"train.max_steps={ti_steps}"],
            "none",
            TI_PROMPT,
        ),
        Run(
            "Textual inversion (1 vector, photo templates, lr 5e-3)",
            "digits_textual_inversion",
            "ti",
            [f"train.max_steps={ti_steps}", *OLD_TI],
            "none",
            "a photo of a <triangle>",
        ),
        Run(
            "Textual inversion, in-repertoire concept (5 real sevens)",
            "digits_textual_inversion",
            "ti",
            [f"train.max_steps={ti_steps}", f"data.instance_dir={sevens_dir}"],
            "none",
            TI_PROMPT,
            subject_digit=7,
        ),
    ]


def write_sevens(out_dir: Path, n: int = 5) -> Path:
    """The first `n` sevens of the digits' train split as PNGs: a concept the base model CAN draw."""
    from finetune.data.digits import load_digits_images

    images, labels = load_digits_images(16, "train")
    with atomic_dir(out_dir) as tmp:
        for i, idx in enumerate((labels == 7).nonzero().flatten()[:n].tolist()):
            buf = io.BytesIO()
            Image.fromarray(to_uint8_hwc(images[idx]), mode="RGB").save(buf, format="PNG")
            atomic_write_bytes(tmp / f"seven_{i}.png", buf.getvalue())
    return out_dir


def train(run: Run, out: Path) -> dict:
    """Run the recipe in its own process; return its summary.json plus the wall time."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [
        sys.executable,
        "recipes/train_sd.py",
        "--config",
        f"recipes/configs/{run.config}.yaml",
        f"train.output_dir={out}",
        "train.overwrite_output_dir=true",
        "train.progress_bar=false",
        "validation.grids=false",
        *run.overrides,
    ]
    print("+", " ".join(cmd), flush=True)
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{run.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {**json.loads((out / "summary.json").read_text()), "wall_seconds": time.perf_counter() - started}


def load_tuned(run: Run, out: Path):
    """The tuned model through stock diffusers loaders."""
    if run.artifact == "pipeline":
        return load_digits_sd(out / "pipeline"), out / "pipeline"
    pipe = load_digits_sd()
    if run.artifact == "lora":
        pipe.load_lora_weights(out)
        return pipe, out / "pytorch_lora_weights.safetensors"
    pipe.load_textual_inversion(out / "learned_embeds.safetensors")
    return pipe, out / "learned_embeds.safetensors"


def size_bytes(path: Path) -> int:
    """Bytes of an artifact: a file, or every weight file of a pipeline directory."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*.safetensors"))


def measure(
    pipe, judge, detector, subject_prompt: str, n_subject: int, per_class: int, subject_digit: int = -1
) -> dict:
    subject_images = generate(pipe, [subject_prompt] * n_subject, seed=50_000)
    if subject_digit >= 0:
        rate = float((judge.predict(subject_images) == subject_digit).float().mean())
    else:
        rate = detector.rate(subject_images)
    scores = evaluate_digits(pipe, n_per_class=per_class, seed=60_000, judge=judge)
    return {
        "subject_rate": rate,
        "digit_accuracy": scores["accuracy"],
        "fid": scores["fid"],
        "subject_in_class_prompts": detector.rate(scores["images"]),
        "per_class_accuracy": scores["per_class_accuracy"],
    }


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB"


def markdown(rows: list[dict], args, base_row: dict) -> str:
    head = (
        "| method | prior preservation | subject rate (identifier prompt) | class-prompt digit accuracy | FID (class prompts) "
        "| subject in class prompts | trained params | train s | artifact |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    line = "| {name} | {prior} | {subject_rate:.2f} | {digit_accuracy:.3f} | {fid:.1f} | {subject_in_class_prompts:.2f} | {params} | {secs} | {size} |\n"
    body = line.format(name="base (data/digits_sd)", prior="-", params="-", secs="-", size="-", **base_row)
    for r in rows:
        body += line.format(
            params=f"{r['trained_parameters']:,}", secs=f"{r['train_seconds']:.0f}", size=_mb(r["artifact_bytes"]), **r
        )
    return head + body


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps of every DreamBooth / LoRA run")
    parser.add_argument("--ti-steps", type=int, default=3000, help="optimizer steps of textual inversion")
    parser.add_argument("--subject-images", type=int, default=100, help="images for the identifier prompt per model")
    parser.add_argument("--per-class", type=int, default=30, help="images per class prompt per model")
    parser.add_argument("--work", default=str(ROOT / "outputs" / "personalization"), help="runs' output directories")
    parser.add_argument("--out", default=str(RESULTS), help="results markdown file")
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 steps, 20 subject images, 5 per class")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.ti_steps, args.subject_images, args.per_class = 60, 200, 20, 5
    work = Path(args.work)
    from finetune.metrics import load_judge

    judge = load_judge()
    detector = load_subject_detector(judge=judge)
    base = load_digits_sd()
    started = time.perf_counter()
    base_row = measure(base, judge, detector, INSTANCE_PROMPT, args.subject_images, args.per_class)
    sevens = write_sevens(work / "sevens")
    base_sevens = float(
        (judge.predict(generate(base, ["a drawing of a digit"] * args.subject_images, seed=50_000)) == 7).float().mean()
    )  # the TI token starts as "digit": how often that alone draws a seven
    rows = []
    for i, run in enumerate(runs(args.steps, args.ti_steps, work / "class_images", sevens)):
        out = work / f"run{i}"
        summary = train(run, out)
        pipe, artifact = load_tuned(run, out)
        row = {
            "name": run.name,
            "prior": run.prior,
            "subject_prompt": run.subject_prompt,
            "overrides": run.overrides,
            "train_seconds": summary["train_seconds"],
            "wall_seconds": round(summary["wall_seconds"], 1),
            "trained_parameters": summary["trained_parameters"],
            "steps": summary["steps"],
            "class_images_generated": summary.get("class_images_generated", 0),
            "artifact_bytes": size_bytes(artifact),
            **measure(
                pipe, judge, detector, run.subject_prompt, args.subject_images, args.per_class, run.subject_digit
            ),
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "per_class_accuracy"}), flush=True)
    table = markdown(rows, args, base_row)
    print(table)
    out = Path(args.out)
    atomic_write_json(
        out.with_suffix(".json"),
        {
            "base": base_row,
            "base_sevens_for_ti_init": base_sevens,
            "runs": rows,
            "args": vars(args),
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    atomic_write_text(
        out,
        HEADER.format(
            steps=args.steps,
            ti_steps=args.ti_steps,
            n=args.subject_images,
            m=10 * args.per_class,
            seconds=time.perf_counter() - started,
        )
        + table
        + FOOTER.format(base_sevens=base_sevens),
    )


HEADER = """# Personalization on the digits world

`python benchmarks/personalization.py` ({seconds:.0f} s wall on the 2-core CPU, one process at a time). Base: the
shipped `data/digits_sd` (digits, then stroke symbols with the triangle held out: it never drew a triangle).
Subject: the hollow triangle of `data/subject` (5 images), identifier prompt "a drawing of the digit sks"
(textual inversion: "a drawing of a <triangle>", its config's template). Every DreamBooth / LoRA run: {steps}
optimizer steps of 4 instance images (+ 4 class images with a prior). Textual inversion: {ti_steps} steps.
Per model: {n} images for the identifier prompt, {m} for the ten class prompts "a drawing of the digit k"; DDIM 20
steps, guidance 4. FID is against the real test digits on the judge's features at n = {m} (biased upwards at this
n: compare rows, not with the 500-image number in data/digits_sd/build_info.json). Train seconds are the recipe's
optimizer-step time (class-image generation excluded); artifact = the pipeline's weight files, the LoRA file or
the embedding file.

"""

FOOTER = """
The last row is textual inversion of a concept the base model CAN draw by name (5 real sevens from the train
split): its "subject rate" is the share the digits judge classifies as seven ("a drawing of a digit" draws a seven
{base_sevens:.2f} of the time).

DreamBooth-LoRA without a prior and LoRA on the captioned folder train on the same five images with the same
caption and seed: the same training reached through two configs.

Textual inversion leaves the UNet and the text encoder frozen: it steers the base only through what the frozen
text encoder makes of new input embeddings. `benchmarks/ti_ceiling.py` compares it with the bound of any prompt-only
method (a free 77 x 64 conditioning tensor fitted through the frozen UNet) on this base and on the digits-only base
it was built from: there the UNet can draw the triangle from a free conditioning, but no learned token gets the
text encoder to produce one. The two TI rows here differ in the config alone: three vectors, the world's own
caption template and lr 5e-2 against diffusers' example defaults.

How to read it: the subject detector (`scripts/make_subject.py`) is a logistic regression on the digits judge's
features and the 8x8 ink, with a distance gate; it recognises held-out drawings of the subject ~93% of the time,
calls 0.3% of the real test digits and none of the other stroke symbols the subject, so subject rates are slight
under-counts.
"""

if __name__ == "__main__":
    main()
