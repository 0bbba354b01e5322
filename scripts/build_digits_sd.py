"""Rebuild data/digits_sd/, the tiny Stable Diffusion of the offline quality world, end to end through the recipes.

    OMP_NUM_THREADS=1 python scripts/build_digits_sd.py          # about 40 min on a 2-core CPU (see data/README.md)
    python scripts/build_digits_sd.py --vae-dir outputs/digits_sd_build/vae/vae   # reuse a trained VAE
    python scripts/build_digits_sd.py --base-dir DIR   # start at stage 6 from a finished digits-only pipeline

Stages, each a plain run of a project recipe (so the build is also their end-to-end test):
1. recipes/train_autoencoder.py --config recipes/configs/digits_vae.yaml: an AutoencoderKL, 16x16 RGB -> 4x8x8.
2. The training digits as a captioned image folder ("a drawing of the digit seven"), finetune.data.digits.
3. An initial pipeline directory: the trained VAE, a ~3.3M-parameter UNet2DConditionModel and a 2-layer
   CLIPTextModel with random weights, the project's offline CLIPTokenizer and SD's noise schedule.
4. recipes/train_sd.py --config recipes/configs/digits_sd_pretrain.yaml: method=full trains the UNet and the
   text encoder from scratch on the folder, with 10% caption dropout for classifier-free guidance.
5. The digits again plus the stroke symbols of finetune.data.symbols (every combination of one to three strokes
   except the held-out hollow triangle), captioned by their strokes, in one folder.
6. recipes/train_sd.py --config recipes/configs/digits_sd_symbols.yaml continues stage 4's pipeline on that
   folder: the model learns to draw by composition, so the held-out triangle (the personalization subject) is new
   to it yet made of parts it can draw and its text encoder can express, which is what textual inversion needs
   (benchmarks/ti_ceiling.py).
7. Evaluation with the digits judge: images for "a drawing of the digit k", k = 0..9, guidance on, classified
   as k (bar: >= 97%) and their FID against the real test digits; the symbols: how often a pretraining symbol's
   caption draws that symbol, and how often the written-out caption of the never-seen triangle draws it. Written to
   build_info.json beside the weights.
The finished pipeline (safetensors, weights stored in fp16: about 8 MB) is evaluated as shipped and renamed into
--out only when complete.

`load_digits_sd`, `generate` and `evaluate_digits` are what benchmarks and tests use to sample and judge it.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from finetune.data.digits import DIGIT_WORDS, caption, write_digits_imagefolder  # noqa: E402
from finetune.data.symbols import TRIANGLE, nearest_symbol, pretraining_symbols, symbol_caption, symbol_images  # noqa: E402
from finetune.errors import UserError, exit_on_user_error  # noqa: E402
from finetune.io import atomic_dir, atomic_write_bytes, atomic_write_json  # noqa: E402

DIGITS_SD_DIR = ROOT / "data" / "digits_sd"
BUILD_INFO = "build_info.json"
RESOLUTION = 16
GUIDANCE = 4.0  # classifier-free guidance scale of the evaluation (and of the digits world's defaults)
SAMPLE_STEPS = 20  # DDIM steps of the evaluation
TRAIN_PER_CLASS = 139  # every class of the train split has at least 139 images (digit 8 has 139)
SYMBOL_DRAWINGS = 35  # jittered drawings of each pretraining symbol in stage 5 (40 symbols: about as many as digits)

# The denoiser: 3 levels on the 8x8 latents (8 -> 4 -> 2), cross-attention on the first two. ~3.3M parameters.
UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": [48, 96, 96],
    "norm_num_groups": 16,
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
# The text encoder: a 2-layer CLIP transformer, 64 wide, over the tiny tokenizer's vocabulary.
TEXT_ENCODER_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 64,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
}


def _run(cmd: list[str]) -> float:
    """Run a recipe as a user would (its own process); return its wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print("+", " ".join(cmd), flush=True)
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise UserError(f"stage failed with exit code {done.returncode}: {' '.join(cmd)}; see its output above")
    return time.perf_counter() - started


def build_init_pipeline(vae_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """A diffusers pipeline dir: the trained VAE plus a random-weight UNet and text encoder (stage 3)."""
    from diffusers import AutoencoderKL

    from finetune.export.sd import save_sd_pipeline
    from finetune.models.sd import SD_SCHEDULER_CONFIG, build_pipeline, build_sd_from_configs

    vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True, dtype=torch.float32)
    configs = {
        "vae": dict(vae.config),
        "unet": UNET_CONFIG,
        "text_encoder": TEXT_ENCODER_CONFIG,
        "scheduler": dict(SD_SCHEDULER_CONFIG),
    }
    configs["vae"] = {k: v for k, v in configs["vae"].items() if not k.startswith("_")}
    parts = build_sd_from_configs(configs, seed=seed)
    parts.vae = vae  # the random VAE the builder made is replaced by the trained one
    return save_sd_pipeline(out_dir, build_pipeline(parts))


def load_digits_sd(path: str | Path = DIGITS_SD_DIR):
    """The shipped digits pipeline (or another diffusers dir), through the toolkit's own SD loader."""
    from finetune.models.sd import SDModelConfig, build_pipeline, load_sd_components

    return build_pipeline(load_sd_components(SDModelConfig(pretrained=str(path), resolution=RESOLUTION)))


@torch.no_grad()
def generate(
    pipe,
    prompts: list[str],
    seed: int = 0,
    steps: int = SAMPLE_STEPS,
    guidance: float = GUIDANCE,
    batch_size: int = 100,
) -> torch.Tensor:
    """One image per prompt as N x 3 x 16 x 16 in [-1, 1]; image i is drawn from seed + i (batching-independent)."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images = pipe(
            chunk,
            height=RESOLUTION,
            width=RESOLUTION,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
            output_type="pt",
        ).images
        out.append(images.float().cpu() * 2.0 - 1.0)
    return torch.cat(out)


def digit_prompts(n_per_class: int) -> tuple[list[str], torch.Tensor]:
    """n_per_class prompts "a drawing of the digit k" for each k, interleaved (0, 1, ..., 9, 0, 1, ...), and their labels.

    Interleaved because the Inception Score is computed on contiguous chunks: chunks of one class would score ~1.
    """
    labels = torch.arange(10).repeat(n_per_class)
    return [caption(int(k)) for k in labels], labels


def real_digits_fid(judge=None) -> float:
    """FID of the real TRAIN digits against the real test digits: what a perfect generator would score here."""
    from finetune.data.digits import load_digits_images
    from finetune.metrics import fid, load_judge

    judge = judge or load_judge()
    train_images, _ = load_digits_images(RESOLUTION, "train")
    return fid(judge.features(train_images), judge.reference_features("test", size=RESOLUTION))


def evaluate_digits(
    pipe, n_per_class: int = 20, seed: int = 0, steps: int = SAMPLE_STEPS, guidance: float = GUIDANCE, judge=None
) -> dict:
    """Digit accuracy against the prompt, FID / KID / IS against the real test digits (finetune.metrics).

    Returns the judge's numbers plus "images" (N x 3 x 16 x 16, prompt i % 10 is digit i % 10)."""
    from finetune.metrics import judge_images, load_judge

    prompts, labels = digit_prompts(n_per_class)
    images = generate(pipe, prompts, seed, steps, guidance)
    scores = judge_images(judge or load_judge(), images, labels)
    scores["per_class_accuracy"] = {DIGIT_WORDS[k]: v for k, v in scores["per_class_accuracy"].items()}
    return {**scores, "guidance_scale": guidance, "sample_steps": steps, "images": images}


def evaluate_symbols(pipe, n_per_symbol: int = 5, n_triangle: int = 50, seed: int = 0) -> dict:
    """How often a pretraining symbol's caption draws that symbol, and the never-seen triangle's written-out caption
    draws the triangle (finetune.data.symbols.nearest_symbol among all symbols plus the triangle)."""
    combos = pretraining_symbols()
    everything = combos + [TRIANGLE]
    prompts = [symbol_caption(c) for c in combos for _ in range(n_per_symbol)]
    images = torch.cat(
        [generate(pipe, prompts, seed), generate(pipe, [symbol_caption(TRIANGLE)] * n_triangle, seed + 10_000)]
    )
    drawn = nearest_symbol(images, everything)  # one set of reference drawings for both
    seen = float((drawn[: len(prompts)] == torch.arange(len(combos)).repeat_interleave(n_per_symbol)).float().mean())
    return {
        "seen_symbol_accuracy": seen,
        "n_seen": len(prompts),
        "held_out_triangle_rate": float((drawn[len(prompts) :] == len(combos)).float().mean()),
        "n_triangle": n_triangle,
    }


def _grid_png(images: torch.Tensor, nrow: int) -> bytes:
    from finetune.models.small_nets import image_grid_png

    return image_grid_png(images, nrow=nrow, scale=4)


def save_half(pipeline_dir: Path, out_dir: Path) -> Path:
    """The pipeline with its weights stored in fp16 (half the bytes; loaders upcast to fp32 on load)."""
    from diffusers import StableDiffusionPipeline

    from finetune.export.sd import save_sd_pipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        pipeline_dir, dtype=torch.float16, use_safetensors=True, safety_checker=None, requires_safety_checker=False
    )
    return save_sd_pipeline(out_dir, pipe)


def finish(pipeline_dir: Path, out: Path, info: dict, grid: bytes) -> Path:
    """Copy the trained pipeline plus build_info.json and samples.png into `out`, renamed into place when whole."""
    with atomic_dir(out) as tmp:
        shutil.copytree(pipeline_dir, tmp, dirs_exist_ok=True)
        atomic_write_json(tmp / BUILD_INFO, info)
        atomic_write_bytes(tmp / "samples.png", grid)
    return out


def train_stages(args, work: Path, vae_dir: Path) -> dict[str, float]:
    """Stages 1-4: the VAE recipe (unless --vae-dir), the captioned digits, the initial pipeline, the SD recipe."""
    seconds = {}
    if not args.vae_dir:
        seconds["vae"] = _run(
            [
                sys.executable,
                "recipes/train_autoencoder.py",
                "--config",
                "recipes/configs/digits_vae.yaml",
                f"train.output_dir={work / 'vae'}",
                "train.overwrite_output_dir=true",
                *args.vae_args,
            ]
        )
    captions = write_digits_imagefolder(work / "digits", n_per_class=TRAIN_PER_CLASS, size=RESOLUTION, split="train")
    init = build_init_pipeline(vae_dir, work / "init")
    seconds["sd"] = _run(
        [
            sys.executable,
            "recipes/train_sd.py",
            "--config",
            "recipes/configs/digits_sd_pretrain.yaml",
            f"model.pretrained={init}",
            f"data.caption_dir={captions}",
            f"train.output_dir={work / 'sd'}",
            "train.overwrite_output_dir=true",
            *args.sd_args,
        ]
    )
    return seconds


def symbol_stage(args, work: Path, base: Path) -> dict[str, float]:
    """Stages 5-6: digits + stroke symbols in one captioned folder; the SD recipe continues `base` on it."""
    extra = symbol_images(pretraining_symbols(), SYMBOL_DRAWINGS, seed=0, size=RESOLUTION)
    folder = write_digits_imagefolder(
        work / "digits_symbols", n_per_class=TRAIN_PER_CLASS, size=RESOLUTION, split="train", extra=extra
    )
    return {
        "symbols": _run(
            [
                sys.executable,
                "recipes/train_sd.py",
                "--config",
                "recipes/configs/digits_sd_symbols.yaml",
                f"model.pretrained={base}",
                f"data.caption_dir={folder}",
                f"train.output_dir={work / 'symbols'}",
                "train.overwrite_output_dir=true",
                *args.symbols_args,
            ]
        )
    }


@exit_on_user_error
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="outputs/digits_sd_build", help="working directory of the stages")
    parser.add_argument("--out", default=str(DIGITS_SD_DIR), help="where the finished pipeline goes")
    parser.add_argument("--vae-dir", default="", help="reuse a trained AutoencoderKL dir instead of stage 1")
    parser.add_argument("--vae-args", nargs="*", default=[], help="extra key=value overrides of the VAE recipe")
    parser.add_argument("--sd-args", nargs="*", default=[], help="extra key=value overrides of the SD recipe (stage 4)")
    parser.add_argument(
        "--symbols-args", nargs="*", default=[], help="extra key=value overrides of the symbols stage (6)"
    )
    parser.add_argument("--base-dir", default="", help="a finished digits-only pipeline (stage 4's): skip stages 1-4")
    parser.add_argument("--eval-per-class", type=int, default=50, help="evaluation images per digit")
    parser.add_argument(
        "--eval-only", action="store_true", help="skip stages 1-6: re-evaluate and re-ship a finished --work dir"
    )
    args = parser.parse_args(argv)
    work = (ROOT / args.work).resolve() if not Path(args.work).is_absolute() else Path(args.work)
    seconds: dict[str, float] = {}
    base_info: dict = {}

    vae_dir = Path(args.vae_dir) if args.vae_dir else work / "vae" / "vae"
    if args.eval_only:
        previous = (
            json.loads((Path(args.out) / BUILD_INFO).read_text()) if (Path(args.out) / BUILD_INFO).is_file() else {}
        )
        seconds.update({k: v for k, v in previous.get("wall_seconds", {}).items() if k != "eval"})
    else:
        if args.base_dir:  # stages 1-4 were done by the build that made base_dir: carry its record over
            earlier = Path(args.base_dir) / BUILD_INFO
            base_info = json.loads(earlier.read_text()) if earlier.is_file() else {}
            seconds.update({k: v for k, v in base_info.get("wall_seconds", {}).items() if k in ("vae", "sd")})
        else:
            seconds.update(train_stages(args, work, vae_dir))
        seconds.update(
            symbol_stage(args, work, Path(args.base_dir).resolve() if args.base_dir else work / "sd" / "pipeline")
        )

    # What ships is what is evaluated: the fp16-stored pipeline, loaded (in fp32) by the toolkit's loader.
    final = save_half(work / "symbols" / "pipeline", work / "final")
    started = time.perf_counter()
    pipe = load_digits_sd(final)
    scores = evaluate_digits(pipe, n_per_class=args.eval_per_class)
    symbols = evaluate_symbols(pipe, n_per_symbol=max(1, args.eval_per_class // 10))
    seconds["eval"] = time.perf_counter() - started
    images = scores.pop("images")
    per_row = torch.cat([images[k::10][:10] for k in range(10)])  # one row per digit
    info = {
        "what": "tiny Stable Diffusion pretrained from scratch on scikit-learn's handwritten digits (train split), "
        "then on the digits plus stroke symbols (the hollow triangle held out)",
        "rebuild": "python scripts/build_digits_sd.py",
        "params": {
            name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("vae", "unet", "text_encoder")
        },
        "vae": json.loads((vae_dir.parent / "summary.json").read_text())
        if (vae_dir.parent / "summary.json").is_file()
        else base_info.get("vae", {}),
        "sd_training": json.loads((work / "sd" / "summary.json").read_text())
        if (work / "sd" / "summary.json").is_file()
        else base_info.get("sd_training", {}),
        "symbols_training": json.loads((work / "symbols" / "summary.json").read_text()),
        "base_dir": str(args.base_dir) if args.base_dir else "",
        "evaluation": {k: v for k, v in scores.items() if k != "reference"},
        "evaluation_symbols": symbols,
        "evaluation_reference": "judge features of the real test digits (finetune.data.digits split 'test') at 16 px",
        "fid_real_train_vs_test": real_digits_fid(),  # the floor: real digits against real digits
        "wall_seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    finish(final, Path(args.out), info, _grid_png(per_row, nrow=10))
    print(
        f"digit accuracy {scores['accuracy']:.3f} (bar 0.97), FID {scores['fid']:.2f}, IS {scores['is']:.2f}; "
        f"symbols drawn as captioned {symbols['seen_symbol_accuracy']:.2f}, held-out triangle from its written "
        f"caption {symbols['held_out_triangle_rate']:.2f}; "
        f"wrote {args.out}; stage seconds {info['wall_seconds']}"
    )
    return info


if __name__ == "__main__":
    main()
