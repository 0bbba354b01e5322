"""Personalization measured: DreamBooth (full UNet, with and without prior preservation), DreamBooth-LoRA, LoRA,
textual inversion and hypernetworks of the project's hollow-triangle subject on the shipped digits Stable Diffusion.

    python benchmarks/personalization.py                 # ~20 min on a 2-core CPU; writes the table below
    python benchmarks/personalization.py --only lora,hypernetwork   # re-measure some rows, keep the others
    python benchmarks/personalization.py --rewrite       # rebuild the markdown from the .json only
    python benchmarks/personalization.py --quick --out /tmp/p.md    # fewer steps and images: a smoke run

Every run is recipes/train_sd.py with a recipes/configs/digits_*.yaml config, started from data/digits_sd, in its
own process as a user would run it. Each trained model is then loaded the way a user loads it, with STOCK diffusers
(pipeline directory, `load_lora_weights`, `load_textual_inversion`) or, for a hypernetwork, which stock diffusers
cannot load, with the project's `finetune.methods.load_hypernetwork` on the stock pipeline's UNet, and judged:
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

`--only KEY,...` runs only those rows (keys: see `runs`) and merges them into the existing results: the other rows
keep their figures, and every row names the run (command, date, wall time) that measured it. A merge refuses results
measured with other step / image counts, so the table's rows stay comparable.

Writes benchmarks/results/personalization.md (and .json beside it).
"""

from __future__ import annotations

import argparse
import datetime
import difflib
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
from finetune.errors import UserError, exit_on_user_error  # noqa: E402
from finetune.io import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402
from finetune.methods.hypernetwork import SAFETENSORS_FILE, WEBUI_FILE, load_hypernetwork  # noqa: E402
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
TEXT_WIDTH = 64  # the digits SD's text-encoder width: hypernetwork.sizes=[64] leaves the self-attention inputs alone
WEBUI_HYPERNETWORK = [
    "hypernetwork.layer_structure=[1,2,1]",
    "hypernetwork.activation=linear",
    "optim.lr=1e-5",
]  # AUTOMATIC1111's defaults for a new hypernetwork and its Train tab's lr (0.00001, meant for SD1.5 at 512 px)


@dataclass
class Run:
    key: str  # short id of the row, for --only and for merging re-measured rows into the results
    name: str  # row label
    config: str  # recipes/configs/<config>.yaml
    artifact: str  # "pipeline", "lora", "ti" or "hypernetwork": how the result is loaded
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
    ti = [f"train.max_steps={ti_steps}"]
    return [
        Run("dreambooth-prior10", "DreamBooth", "digits_dreambooth", "pipeline", unet + per_digit, "10 class prompts"),
        Run("dreambooth-prior1", "DreamBooth", "digits_dreambooth", "pipeline", unet + one_prompt, "1 class prompt"),
        Run("dreambooth", "DreamBooth", "digits_dreambooth", "pipeline", unet + no_prior, "none"),
        Run(
            "dreambooth-lora-prior10",
            "DreamBooth-LoRA",
            "digits_dreambooth_lora",
            "lora",
            unet + per_digit,
            "10 class prompts",
        ),
        Run("dreambooth-lora", "DreamBooth-LoRA", "digits_dreambooth_lora", "lora", unet + no_prior, "none"),
        Run("lora", "LoRA (captioned folder)", "digits_lora", "lora", unet, "none"),
        Run("ti", "Textual inversion (3 vectors, lr 5e-2)", "digits_textual_inversion", "ti", ti, "none", TI_PROMPT),
        Run(
            "ti-diffusers",
            "Textual inversion (1 vector, photo templates, lr 5e-3)",
            "digits_textual_inversion",
            "ti",
            ti + OLD_TI,
            "none",
            "a photo of a <triangle>",
        ),
        Run(
            "ti-sevens",
            "Textual inversion, in-repertoire concept (5 real sevens)",
            "digits_textual_inversion",
            "ti",
            ti + [f"data.instance_dir={sevens_dir}"],
            "none",
            TI_PROMPT,
            subject_digit=7,
        ),
        # hypernetworks train on the captioned folder like the LoRA row above (the method has no prior preservation)
        Run("hypernetwork", "Hypernetwork (1, 2, 1, relu, lr 5e-4)", "digits_hypernetwork", "hypernetwork", unet),
        Run(
            "hypernetwork-webui",
            "Hypernetwork, web UI defaults (1, 2, 1, linear, lr 1e-5)",
            "digits_hypernetwork",
            "hypernetwork",
            unet + WEBUI_HYPERNETWORK,
        ),
        Run(
            "hypernetwork-linear",
            "Hypernetwork (1, 2, 1, linear, lr 5e-4)",
            "digits_hypernetwork",
            "hypernetwork",
            unet + ["hypernetwork.activation=linear"],
        ),
        Run(
            "hypernetwork-lr1e-4",
            "Hypernetwork (1, 2, 1, relu, lr 1e-4)",
            "digits_hypernetwork",
            "hypernetwork",
            unet + ["optim.lr=1e-4"],
        ),
        Run(
            "hypernetwork-text",
            "Hypernetwork on the text context only (1, 2, 1, relu, lr 5e-4)",
            "digits_hypernetwork",
            "hypernetwork",
            unet + [f"hypernetwork.sizes=[{TEXT_WIDTH}]"],
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
    """The tuned model loaded as a user loads it: stock diffusers, or for a hypernetwork (which stock diffusers has
    no loader for) the project's load_hypernetwork hooking the safetensors file into the stock pipeline's UNet."""
    if run.artifact == "pipeline":
        return load_digits_sd(out / "pipeline"), out / "pipeline"
    pipe = load_digits_sd()
    if run.artifact == "lora":
        pipe.load_lora_weights(out)
        return pipe, out / "pytorch_lora_weights.safetensors"
    if run.artifact == "hypernetwork":
        load_hypernetwork(out / SAFETENSORS_FILE, pipe.unet)
        return pipe, out / SAFETENSORS_FILE
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


def markdown(rows: list[dict], base_row: dict) -> str:
    head = (
        "| method | prior preservation | subject rate (identifier prompt) | class-prompt digit accuracy | FID (class prompts) "
        "| subject in class prompts | trained params | train s | artifact | run |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    line = (
        "| {name} | {prior} | {subject_rate:.2f} | {digit_accuracy:.3f} | {fid:.1f} | {subject_in_class_prompts:.2f} "
        "| {params} | {secs} | {size} | {source} |\n"
    )
    body = line.format(name="base (data/digits_sd)", prior="-", params="-", secs="-", size="-", **base_row)
    for r in rows:
        body += line.format(
            params=f"{r['trained_parameters']:,}", secs=f"{r['train_seconds']:.0f}", size=_mb(r["artifact_bytes"]), **r
        )
    return head + body


def sources_text(sources: dict) -> str:
    return "".join(
        f"- run {k}: `{s['command']}` ({s['date']}, {s['seconds']:.0f} s wall on the 2-core CPU)\n"
        for k, s in sorted(sources.items())
    )


def _versus(row: dict, lora: dict) -> str:
    return (
        f"subject {row['subject_rate']:.2f} vs {lora['subject_rate']:.2f}, class-prompt accuracy "
        f"{row['digit_accuracy']:.3f} vs {lora['digit_accuracy']:.3f}, FID {row['fid']:.1f} vs {lora['fid']:.1f}"
    )


TIE = {"subject_rate": 0.05, "digit_accuracy": 0.03}  # differences below these are noise at n = 100 / 300 images


def hypernetwork_reading(rows: list[dict]) -> str:
    """Where the hypernetwork rows stand against LoRA on the same captioned images and steps, from the figures: the
    least drift among those that draw the subject as often as LoRA, the most subject among those that drift no more
    than LoRA, then size and step time."""
    lora = next((r for r in rows if r["key"] == "lora"), None)
    hyper = [r for r in rows if r["artifact"] == "hypernetwork"]
    if lora is None or not hyper:
        return ""
    as_often = [r for r in hyper if r["subject_rate"] >= lora["subject_rate"] - TIE["subject_rate"]]
    as_little = [r for r in hyper if r["digit_accuracy"] >= lora["digit_accuracy"] - TIE["digit_accuracy"]]
    text = "\nHypernetworks against LoRA (the same five captioned images, steps and seed; LoRA's figures second):"
    if as_often:
        r = max(as_often, key=lambda r: r["digit_accuracy"])
        text += f' where a hypernetwork draws the subject about as often as LoRA, the least drift is "{r["name"]}": '
        text += _versus(r, lora) + ";"
    else:
        text += " no hypernetwork row draws the subject as often as LoRA;"
    if as_little:
        r = max(as_little, key=lambda r: r["subject_rate"])
        text += f' where one drifts no more than LoRA, the most subject is "{r["name"]}": ' + _versus(r, lora) + "."
    else:
        text += " every hypernetwork row drifts more than LoRA."
    matches = [r for r in as_often if r in as_little]
    text += (
        f' "{matches[0]["name"]}" matches LoRA on both.'
        if matches
        else " No setting tried matches LoRA on both at once: on this world LoRA is the better choice."
    )
    sizes = sorted({_mb(r["artifact_bytes"]) for r in hyper})
    text += (
        f" Files: {' / '.join(sizes)} against LoRA's {_mb(lora['artifact_bytes'])} (the web UI's `{WEBUI_FILE}` "
        f"beside each is about as large)."
    )
    timed = [r for r in hyper if r.get("median_step_seconds") and r["source"] == lora["source"]]
    if timed and lora.get("median_step_seconds"):
        steps = sorted(1000 * r["median_step_seconds"] for r in timed)
        text += (
            f" Median optimizer step in the same run: {steps[0]:.0f}-{steps[-1]:.0f} ms against LoRA's "
            f"{1000 * lora['median_step_seconds']:.0f} ms (train s is the total, which a stall of the shared machine "
            "inflates)."
        )
    return (
        text
        + " A hypernetwork is loaded with the project's `finetune.methods.load_hypernetwork` on the stock pipeline's "
        "UNet: stock diffusers has no hypernetwork loader.\n"
    )


def write_results(results: dict, out: Path) -> None:
    args, rows = results["args"], results["runs"]
    table = markdown(rows, results["base"])
    print(table)
    atomic_write_json(out.with_suffix(".json"), results)
    header = HEADER.format(
        steps=args["steps"], ti_steps=args["ti_steps"], n=args["subject_images"], m=10 * args["per_class"]
    )
    footer = FOOTER.format(base_sevens=results["base_sevens_for_ti_init"]) + hypernetwork_reading(rows)
    atomic_write_text(out, header + sources_text(results["sources"]) + "\n" + table + footer)


COMPARABLE = ("steps", "ti_steps", "subject_images", "per_class")  # what rows merged into one table must share


def previous_results(out: Path, args, keys: list[str]) -> dict | None:
    """The results --only merges into (None without --only); refuses unknown keys and results measured otherwise."""
    if not args.only:
        return None
    if unknown := [k for k in args.only if k not in keys]:
        near = difflib.get_close_matches(unknown[0], keys, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise UserError(f"--only: unknown row {unknown[0]!r}{hint}; the rows are {', '.join(keys)}")
    path = out.with_suffix(".json")
    if not path.is_file():
        return None  # nothing to merge into: the subset is the whole table
    old = json.loads(path.read_text())
    stored = old["args"]
    if differ := [k for k in COMPARABLE if stored[k] != vars(args)[k]]:
        values = ", ".join(f"{k}={stored[k]}" for k in differ)
        raise UserError(f"--only merges into {path}, measured with {values}; use the same values or another --out")
    return old


def merge(old: dict | None, base: dict, rows: list[dict], order: list[str], source: dict) -> tuple[list[dict], dict]:
    """Re-measured rows replace their old selves; the others (and a kept base row) keep their figures and run letter."""
    kept = [r for r in (old or {}).get("runs", []) if r["key"] not in {r["key"] for r in rows}]
    sources = dict((old or {}).get("sources", {}))
    letter = next(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in sources)
    sources[letter] = source
    for r in rows:
        r["source"] = letter
    base.setdefault("source", letter)
    merged = sorted(kept + rows, key=lambda r: order.index(r["key"]))
    used = {r["source"] for r in [base, *merged]}
    return merged, {k: v for k, v in sources.items() if k in used}


def measure_run(run: Run, out: Path, judge, detector, args) -> dict:
    summary = train(run, out)
    pipe, artifact = load_tuned(run, out)
    row = {
        "key": run.key,
        "name": run.name,
        "prior": run.prior,
        "artifact": run.artifact,
        "subject_prompt": run.subject_prompt,
        "overrides": run.overrides,
        "train_seconds": summary["train_seconds"],
        "median_step_seconds": summary["median_step_seconds"],  # robust to a stall of the shared machine
        "wall_seconds": round(summary["wall_seconds"], 1),
        "trained_parameters": summary["trained_parameters"],
        "steps": summary["steps"],
        "class_images_generated": summary.get("class_images_generated", 0),
        "artifact_bytes": size_bytes(artifact),
        **measure(pipe, judge, detector, run.subject_prompt, args.subject_images, args.per_class, run.subject_digit),
    }
    if run.artifact == "hypernetwork":
        row["webui_pt_bytes"] = size_bytes(out / WEBUI_FILE)
    print(json.dumps({k: v for k, v in row.items() if k != "per_class_accuracy"}), flush=True)
    return row


@exit_on_user_error
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps of every DreamBooth / LoRA run")
    parser.add_argument("--ti-steps", type=int, default=3000, help="optimizer steps of textual inversion")
    parser.add_argument("--subject-images", type=int, default=100, help="images for the identifier prompt per model")
    parser.add_argument("--per-class", type=int, default=30, help="images per class prompt per model")
    parser.add_argument("--work", default=str(ROOT / "outputs" / "personalization"), help="runs' output directories")
    parser.add_argument("--out", default=str(RESULTS), help="results markdown file")
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 steps, 20 subject images, 5 per class")
    parser.add_argument(
        "--only",
        type=lambda s: [k.strip() for k in s.split(",") if k.strip()],
        default=[],
        help="comma-separated row keys",
    )
    parser.add_argument("--rewrite", action="store_true", help="only rebuild the markdown from the results' .json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.rewrite:
        write_results(json.loads(out.with_suffix(".json").read_text()), out)
        return
    if args.quick:
        args.steps, args.ti_steps, args.subject_images, args.per_class = 60, 200, 20, 5
    work = Path(args.work)
    all_runs = runs(args.steps, args.ti_steps, work / "class_images", work / "sevens")
    old = previous_results(out, args, [r.key for r in all_runs])
    from finetune.metrics import load_judge

    judge = load_judge()
    detector = load_subject_detector(judge=judge)
    started = time.perf_counter()
    write_sevens(work / "sevens")
    if old is None:
        base = load_digits_sd()
        base_row = measure(base, judge, detector, INSTANCE_PROMPT, args.subject_images, args.per_class)
        base_sevens = float(
            (judge.predict(generate(base, ["a drawing of a digit"] * args.subject_images, seed=50_000)) == 7)
            .float()
            .mean()
        )  # the TI token starts as "digit": how often that alone draws a seven
    else:  # the base model, seeds and counts are those of the stored results: its row stands
        base_row, base_sevens = old["base"], old["base_sevens_for_ti_init"]
    chosen = [r for r in all_runs if not args.only or r.key in args.only]
    rows = [measure_run(run, work / run.key, judge, detector, args) for run in chosen]
    source = {
        "command": " ".join(["python", "benchmarks/personalization.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    merged, sources = merge(old, base_row, rows, [r.key for r in all_runs], source)
    comparable = {k: vars(args)[k] for k in COMPARABLE}
    results = {"base": base_row, "base_sevens_for_ti_init": base_sevens, "runs": merged, "sources": sources}
    write_results({**results, "args": comparable}, out)


HEADER = """# Personalization on the digits world

`python benchmarks/personalization.py`, one process at a time (which run measured which row: the last column and
the list below). Base: the shipped `data/digits_sd` (digits, then stroke symbols with the triangle held out: it never
drew a triangle).
Subject: the hollow triangle of `data/subject` (5 images), identifier prompt "a drawing of the digit sks"
(textual inversion: "a drawing of a <triangle>", its config's template). Every DreamBooth / LoRA / hypernetwork
run: {steps} optimizer steps of 4 instance images (+ 4 class images with a prior). Textual inversion: {ti_steps} steps.
Per model: {n} images for the identifier prompt, {m} for the ten class prompts "a drawing of the digit k"; DDIM 20
steps, guidance 4. FID is against the real test digits on the judge's features at n = {m} (biased upwards at this
n: compare rows, not with the 500-image number in data/digits_sd/build_info.json). Train seconds are the recipe's
optimizer-step time (class-image generation excluded); artifact = the pipeline's weight files, the LoRA file, the
embedding file or hypernetwork.safetensors.

"""

FOOTER = """
The last row is textual inversion of a concept the base model CAN draw by name (5 real sevens from the train
split): its "subject rate" is the share the digits judge classifies as seven ("a drawing of a digit" draws a seven
{base_sevens:.2f} of the time).

DreamBooth-LoRA without a prior and LoRA on the captioned folder train on the same five images with the same
caption and seed: the same training reached through two configs. The hypernetwork rows train on that captioned
folder too (recipes/configs/digits_hypernetwork.yaml, no prior preservation: the web UI trains hypernetworks on
captioned images): residual MLPs on the inputs of every attention's to_k / to_v, a pair per context width (the
UNet's self-attention widths and the text encoder's), the base frozen. "web UI defaults" is AUTOMATIC1111's setting
for a new hypernetwork (layer structure 1, 2, 1, linear activation) with its Train tab's default lr 1e-5 (meant for
SD1.5 at 512 px; guides often use 5e-6); the others use the digits config's lr 5e-4 (relu or linear) or 1e-4. "on the
text context only" is `hypernetwork.sizes=[64]`: one pair, on the cross attentions' text input, none on the
self-attention inputs (the web UI's default takes every width, as the other rows do).

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
