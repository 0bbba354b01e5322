"""Why textual inversion reaches the subject on one base and not another: its ceiling, and where the bottleneck is.

    OMP_NUM_THREADS=2 python benchmarks/ti_ceiling.py                    # the shipped base, ~6 minutes (2-core CPU)
    git archive 2dd90e7 data/digits_sd | tar -x -C /tmp/old               # the digits-only base it was built from
    python benchmarks/ti_ceiling.py --model data/digits_sd /tmp/old/data/digits_sd   # both, side by side

Textual inversion (and any method that only changes the prompt: more vectors, per-layer tokens, prompt tuning of
the text encoder) leaves the UNet frozen and can only change the conditioning tensor it cross-attends to. The
most such a method can reach is therefore what a FREE conditioning tensor reaches: here every entry of the
77 x 64 `encoder_hidden_states` is a trained parameter, fitted with the recipe's own denoising objective (the
model's prediction type, random timesteps and noise) on the five subject images through the frozen UNet, then
sampled with classifier-free guidance against the empty prompt exactly as `generate` samples a prompt. Beside it,
per base, real textual inversion: recipes/configs/digits_textual_inversion.yaml run as a user would, its token
then sampled the same way. A high ceiling with a low TI rate puts the bottleneck in the text encoder (no input
embedding makes it produce the conditioning the UNet needs); a low ceiling puts it in the UNet.

Two subjects: the hollow triangle of data/subject (scored by the subject detector, scripts/make_subject.py) and,
as the control, five real sevens (a concept the base draws by name; scored by the digits judge).
Writes benchmarks/results/ti_ceiling.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.personalization import TI_PROMPT, Run, train  # noqa: E402
from finetune.io import atomic_write_text  # noqa: E402
from finetune.losses.diffusion import diffusion_loss, diffusion_target  # noqa: E402
from finetune.models.sd import encode_tokens  # noqa: E402
from scripts.build_digits_sd import GUIDANCE, RESOLUTION, SAMPLE_STEPS, generate, load_digits_sd  # noqa: E402
from scripts.make_subject import CLASS_PROMPT, load_subject_detector, load_subject_images  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "ti_ceiling.md"


def encode(pipe, prompt: str) -> torch.Tensor:
    """The frozen text encoder's conditioning for `prompt` (1 x 77 x width)."""
    with torch.no_grad():
        return encode_tokens(pipe.text_encoder, pipe.tokenizer, [prompt], pipe.text_encoder.device)


def fit_free_conditioning(pipe, images: torch.Tensor, steps: int, lr: float, seed: int = 0) -> torch.Tensor:
    """A 1 x 77 x width conditioning tensor, every entry trained, fitted by the denoising loss through the frozen UNet."""
    g = torch.Generator().manual_seed(seed)
    scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config)  # same schedule; training uses add_noise
    prediction_type = scheduler.config.prediction_type
    with torch.no_grad():
        latents = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
    cond = torch.nn.Parameter(encode(pipe, CLASS_PROMPT).clone())  # start where the class prompt is
    opt = torch.optim.Adam([cond], lr=lr)
    pipe.unet.requires_grad_(False)
    for _ in range(steps):
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=g)
        noisy = scheduler.add_noise(latents, noise, t)
        pred = pipe.unet(noisy, t, cond.expand(len(latents), -1, -1)).sample
        loss = diffusion_loss(pred, diffusion_target(scheduler, latents, noise, t, prediction_type))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return cond.detach()


@torch.no_grad()
def sample(pipe, cond: torch.Tensor, n: int, seed: int = 50_000) -> torch.Tensor:
    """n images from `cond` with guidance against the empty prompt, image i from seed + i (like `generate`)."""
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    out = pipe(
        prompt_embeds=cond.expand(n, -1, -1),
        negative_prompt_embeds=encode(pipe, "").expand(n, -1, -1),
        height=RESOLUTION,
        width=RESOLUTION,
        num_inference_steps=SAMPLE_STEPS,
        guidance_scale=GUIDANCE,
        generator=gens,
        output_type="pt",
    ).images
    return out.float() * 2.0 - 1.0


def textual_inversion_rate(model: str, score, n: int, steps: int) -> float:
    """Run the TI recipe config on `model` as the personalization benchmark runs it, load the embedding with stock
    diffusers, score n samples of its template prompt (drawn like `generate` draws every prompt here)."""
    run = Run(
        "textual inversion",
        "digits_textual_inversion",
        "ti",
        [f"model.pretrained={Path(model).resolve()}", f"train.max_steps={steps}"],
    )
    with tempfile.TemporaryDirectory(prefix="ti_") as out:
        train(run, Path(out) / "ti")
        pipe = load_digits_sd(model)
        pipe.load_textual_inversion(Path(out) / "ti" / "learned_embeds.safetensors")
        return score(generate(pipe, [TI_PROMPT] * n, seed=50_000))


def sevens(n: int = 5) -> torch.Tensor:
    """Five real sevens of the train split (the control subject), N x 3 x 16 x 16 in [-1, 1]."""
    from finetune.data.digits import load_digits_images

    images, labels = load_digits_images(size=RESOLUTION, split="train")
    return images[labels == 7][:n]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps per fit")
    parser.add_argument("--lrs", default="0.01,0.05,0.1", help="Adam learning rates tried; the best is the ceiling")
    parser.add_argument("--samples", type=int, default=100, help="images scored per fit")
    parser.add_argument(
        "--ti-steps", type=int, default=3000, help="steps of the textual-inversion run per base (0: skip)"
    )
    parser.add_argument(
        "--model", nargs="+", default=[str(ROOT / "data" / "digits_sd")], help="base pipeline directories"
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    from finetune.metrics import load_judge

    torch.manual_seed(0)
    judge = load_judge()
    detector = load_subject_detector(judge=judge)
    subjects = {
        "hollow triangle (data/subject), detector": (load_subject_images(), detector.rate),
        "five real sevens (control), judge says 7": (sevens(), lambda x: float((judge.predict(x) == 7).float().mean())),
    }
    started, rows = time.perf_counter(), []
    for model in args.model:
        pipe = load_digits_sd(model)
        for name, (images, score) in subjects.items():
            for lr in [float(x) for x in args.lrs.split(",")]:
                t0 = time.perf_counter()
                cond = fit_free_conditioning(pipe, images, args.steps, lr)
                rate = score(sample(pipe, cond, args.samples))
                rows.append((model, name, lr, rate, time.perf_counter() - t0))
                print(f"{model}: {name}: lr {lr}: rate {rate:.2f} ({rows[-1][4]:.0f} s)", flush=True)
    best = {(m, n): max(r[3] for r in rows if r[:2] == (m, n)) for m in args.model for n in subjects}
    ti = {}
    for model in args.model if args.ti_steps else []:
        ti[model] = textual_inversion_rate(model, detector.rate, args.samples, args.ti_steps)
        print(f"{model}: textual inversion rate {ti[model]:.2f}", flush=True)
    lines = [
        "# Textual inversion's ceiling on the digits SD: a free conditioning tensor",
        "",
        f"`python benchmarks/ti_ceiling.py --model {' '.join(args.model)}` ({time.perf_counter() - started:.0f} s on the "
        f"2-core CPU). Every entry of the 77 x 64 conditioning tensor is trained ({args.steps} Adam steps, batch = the 5 "
        f"subject images, the model's own denoising objective) through the frozen UNet; {args.samples} samples per fit, "
        f"DDIM {SAMPLE_STEPS} steps, guidance {GUIDANCE} against the empty prompt. This bounds every method that changes "
        "only the prompt (textual inversion with any number of vectors, per-layer tokens, a tuned text encoder).",
        "",
        "| base | subject | Adam lr | share of samples recognised as the subject | fit + sample s |",
        "|---|---|---|---|---|",
        *[f"| {m} | {n} | {lr:g} | {rate:.2f} | {sec:.0f} |" for m, n, lr, rate, sec in rows],
        "",
        "Best per base and subject: " + "; ".join(f"{m}, {n}: **{r:.2f}**" for (m, n), r in best.items()) + ".",
        "",
    ]
    if ti:
        triangle = next(iter(subjects))
        lines += [
            f"Textual inversion itself (recipes/configs/digits_textual_inversion.yaml, {args.ti_steps} steps, 3 vectors; "
            f'{args.samples} samples of "a drawing of a <triangle>" scored by the detector) against that ceiling:',
            "",
            "| base | free-conditioning ceiling (triangle) | textual inversion (triangle) |",
            "|---|---|---|",
            *[f"| {m} | {best[(m, triangle)]:.2f} | {ti[m]:.2f} |" for m in args.model],
            "",
        ]
    lines += [
        "data/digits_sd is the shipped base (digits, then stroke symbols); the digits-only base it was built from "
        "is `git archive 2dd90e7 data/digits_sd` (unpacked under /tmp/old in the command above).",
        "",
    ]
    text = "\n".join(lines)
    atomic_write_text(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
