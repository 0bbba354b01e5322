"""Train the digits judge and ship it as data/digits_judge/{model.safetensors, config.json}.

    OMP_NUM_THREADS=1 python scripts/train_digits_judge.py [--out data/digits_judge] [--epochs 30]

Trains finetune.metrics.judge.DigitsCNN on the train split of scikit-learn's digits and prints its
accuracy on the held-out test split (it must reach 97%). Generated images reach the judge at many
resolutions, so training shows it each digit rendered at 16..64 px and resized back by the judge's
own preprocessing, shifted by up to a pixel and with mild noise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.data.digits import load_digits_images  # noqa: E402
from finetune.errors import UserError, exit_on_user_error  # noqa: E402
from finetune.metrics.judge import DEFAULT_JUDGE_DIR, DigitsCNN, DigitsJudge, JudgeConfig, save_judge  # noqa: E402

RENDER_SIZES = [16, 24, 32, 48, 64]  # px the training digits are rendered at before the judge resizes them
MIN_TEST_ACCURACY = 0.97


def render_views(judge: DigitsJudge, split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split rendered at every RENDER_SIZES entry and prepared by the judge: V x N x 1 x s x s, labels."""
    views = []
    for size in RENDER_SIZES:
        images, labels = load_digits_images(size=size, split=split, seed=seed)
        views.append(judge.prepare(images))
    return torch.stack(views), labels


def augment(views: torch.Tensor, idx: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    """A random rendering of each image in `idx`, shifted by -1..1 px, plus Gaussian noise."""
    which = torch.randint(len(views), (len(idx),), generator=gen)
    x = views[which, idx]
    s = x.shape[-1]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dx, dy = torch.randint(3, (2, len(idx)), generator=gen)
    x = torch.stack([padded[i, :, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(len(idx))])
    return x + noise * torch.randn(x.shape, generator=gen)


@torch.no_grad()
def accuracy(model: DigitsCNN, x: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(-1) == labels).float().mean())


def train(cfg: JudgeConfig, epochs: int, batch_size: int, lr: float, noise: float, seed: int) -> tuple[DigitsCNN, dict]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DigitsCNN(cfg)
    judge = DigitsJudge(model, cfg)  # used only for its preprocessing (resize + normalise)
    views, labels = render_views(judge, "train", seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(labels) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(labels), generator=gen)
        total = 0.0
        for i in range(0, len(labels), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(augment(views, idx, noise, gen)), labels[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if epoch % 5 == 4 or epoch == epochs - 1:
            print(f"epoch {epoch + 1:3d}  train loss {total / len(labels):.4f}", flush=True)
    return model.eval(), {"epochs": epochs, "batch_size": batch_size, "lr": lr, "noise": noise, "seed": seed}


def normalisation(seed: int) -> tuple[float, float]:
    """Mean and std of the grey train pixels at the judge's input size."""
    images, _ = load_digits_images(size=JudgeConfig().input_size, split="train", seed=seed)
    grey = images.mean(dim=1)
    return float(grey.mean()), float(grey.std())


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_JUDGE_DIR, help="judge directory to write")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--noise", type=float, default=0.1, help="std of Gaussian noise added to inputs in training")
    ap.add_argument("--seed", type=int, default=0, help="training seed; the train/test split always uses seed 0")
    args = ap.parse_args(argv)

    mean, std = normalisation(seed=0)
    cfg = JudgeConfig(pixel_mean=mean, pixel_std=std)
    start = time.perf_counter()
    model, hparams = train(cfg, args.epochs, args.batch_size, args.lr, args.noise, args.seed)
    seconds = time.perf_counter() - start

    judge = DigitsJudge(model, cfg)
    by_size = {}
    for size in RENDER_SIZES:
        images, labels = load_digits_images(size=size, split="test", seed=0)
        by_size[str(size)] = float((judge.predict(images) == labels).float().mean())
    test_acc = by_size[str(cfg.input_size)]
    print(f"held-out test accuracy: {test_acc:.4f} at {cfg.input_size}px; by render size {by_size}")
    print(f"training time: {seconds:.1f} s on {torch.get_num_threads()} thread(s)")
    if test_acc < MIN_TEST_ACCURACY:
        raise UserError(
            f"judge reached only {test_acc:.4f} test accuracy (< {MIN_TEST_ACCURACY}); "
            "not saved, train longer (--epochs)"
        )
    info = {
        "test_accuracy": test_acc,
        "test_accuracy_by_render_size": by_size,
        "test_split": "sklearn load_digits, stratified 80/20, seed 0 (finetune.data.digits)",
        "features": "64-d hidden layer before its ReLU (DigitsCNN.features), the FID/KID embedding",
        "normalisation": "grey = mean over RGB of [-1,1] input; bilinear antialiased resize to input_size; "
        "(grey - pixel_mean) / pixel_std",
        "training": {
            **hparams,
            "seconds": round(seconds, 1),
            "threads": torch.get_num_threads(),
            "render_sizes": RENDER_SIZES,
            "params": sum(p.numel() for p in model.parameters()),
        },
    }
    save_judge(args.out, model, cfg, info)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
