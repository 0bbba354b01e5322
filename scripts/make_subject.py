"""Draw the personalization subject of the digits world, and judge whether an image shows it.

The subject is a hollow triangle, a symbol the digits never contain, drawn the way scikit-learn's
digits are stored: 8x8 grey ink, scaled to [-1, 1] and upsampled bilinearly to 16x16 RGB. Five
variants (position, size, stroke, tilt) are written to data/subject/ as PNGs plus a metadata.jsonl
whose captions use the identifier prompt.

    python scripts/make_subject.py              # writes data/subject/ and prints the detector's checks

"Is this image the subject?" is answered by `SubjectDetector`: a logistic regression on the digits
judge's 64-d features (finetune.metrics.judge) and the image's 8x8 ink, fitted at load time (a few
seconds) on random affine augmentations of the subject images against the real training digits, smooth
noise and the stroke symbols the base model learned (finetune.data.symbols, with extra drawings of those
one stroke off the triangle), plus a distance gate: an image whose features lie farther from the
subject's mean than any of 99% of the augmentations is not the subject, whatever the regression says (a
linear model alone would accept far-away garbage). Written by hand because no library ships a detector
for a symbol the project invented. It is a proxy: it knows 5 drawings and their jitter, so it
under-counts subject images drawn in a new way.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from finetune.errors import UserError, exit_on_user_error  # noqa: E402
from finetune.io import atomic_dir, atomic_write_bytes, atomic_write_text  # noqa: E402

SUBJECT_DIR = ROOT / "data" / "subject"
IDENTIFIER = "sks"  # DreamBooth's rare identifier, a single token of the tiny tokenizer
INSTANCE_PROMPT = "a drawing of the digit sks"  # identifier prompt of DreamBooth / LoRA runs
CLASS_PROMPT = "a drawing of the digit"  # the class the subject is taught as (prior preservation)
SIZE = 16  # pixels a side, like the digits the base model was trained on
SUPERSAMPLE = 64  # the triangle is drawn at 64x64, then box-averaged down to the digits' 8x8 grid

# (apex x, apex y, base left x, base right x, base y, stroke width, tilt degrees) on the 64x64 canvas
VARIANTS = [
    (32, 8, 8, 56, 54, 7, 0.0),
    (30, 6, 10, 54, 56, 8, 4.0),
    (34, 10, 6, 58, 52, 6, -5.0),
    (32, 12, 12, 52, 54, 8, 8.0),
    (31, 6, 6, 56, 50, 7, -8.0),
]


def draw_triangle(ax: int, ay: int, bl: int, br: int, by: int, width: int, tilt: float) -> np.ndarray:
    """One hollow triangle as an 8x8 float array of ink in [0, 1] (the digits' storage grid)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (SUPERSAMPLE, SUPERSAMPLE), 0)
    pts = [(ax, ay), (br, by), (bl, by)]
    ImageDraw.Draw(canvas).line(pts + [pts[0]], fill=255, width=width, joint="curve")
    canvas = canvas.rotate(tilt, resample=Image.BILINEAR, center=(SUPERSAMPLE / 2, SUPERSAMPLE / 2))
    ink = np.asarray(canvas.resize((8, 8), Image.BOX), dtype=np.float32) / 255.0
    return ink / max(float(ink.max()), 1e-6)  # full ink at the darkest cell, as in the digits (0..16)


def subject_images() -> torch.Tensor:
    """The subject variants as N x 3 x 16 x 16 in [-1, 1], rendered exactly like load_digits_images."""
    from finetune.data.digits import ink_to_images

    return ink_to_images(torch.from_numpy(np.stack([draw_triangle(*v) for v in VARIANTS])), SIZE)


def _png(image: torch.Tensor) -> bytes:
    from PIL import Image

    from finetune.data.digits import to_uint8_hwc

    buf = io.BytesIO()
    Image.fromarray(to_uint8_hwc(image), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_subject(out_dir: str | Path = SUBJECT_DIR) -> Path:
    """Write the subject PNGs and metadata.jsonl (identifier-prompt captions) atomically; returns out_dir."""
    out_dir = Path(out_dir)
    lines = []
    with atomic_dir(out_dir) as tmp:
        for i, image in enumerate(subject_images()):
            name = f"subject_{i}.png"
            atomic_write_bytes(tmp / name, _png(image))
            lines.append(json.dumps({"file_name": name, "text": INSTANCE_PROMPT}))
        atomic_write_text(tmp / "metadata.jsonl", "\n".join(lines) + "\n")
    return out_dir


def load_subject_images(subject_dir: str | Path = SUBJECT_DIR) -> torch.Tensor:
    """The subject PNGs of `subject_dir` as N x 3 x H x W in [-1, 1]."""
    from PIL import Image

    files = sorted(Path(subject_dir).glob("*.png"))
    if not files:
        raise UserError(f"no subject images (*.png) in {subject_dir}; run scripts/make_subject.py")
    arrays = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def augment(images: torch.Tensor, n: int, seed: int, max_shift: float = 1.5, max_rot: float = 12.0) -> torch.Tensor:
    """`n` random affine copies (shift in pixels, rotation in degrees, scale 0.85..1.15) of `images`.

    Hand-written with affine_grid/grid_sample: torchvision (which has RandomAffine) is not installable here.
    """
    g = torch.Generator().manual_seed(seed)
    src = images[torch.randint(len(images), (n,), generator=g)]
    side = images.shape[-1]
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(max_rot)
    scale = 0.85 + 0.3 * torch.rand(n, generator=g)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * max_shift * 2 / side  # pixels -> [-1, 1] grid units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(src.shape), align_corners=False)
    # background is -1: shift to 0 so zero padding means "no ink", then back
    out = F.grid_sample(src + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
    return out.clamp(-1.0, 1.0)


def random_blobs(n: int, seed: int, side: int = SIZE) -> torch.Tensor:
    """`n` grey noise images smoothed at random scales (4x4 to side x side noise upsampled), in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        coarse = int(torch.randint(4, side + 1, (1,), generator=g))
        noise = torch.randn(1, 1, coarse, coarse, generator=g)
        out.append(F.interpolate(noise, size=(side, side), mode="bilinear", align_corners=False))
    return torch.cat(out).clamp(-1, 1).repeat(1, 3, 1, 1)


def detector_features(judge, images: torch.Tensor) -> np.ndarray:
    """What the detector looks at: the digits judge's 64-d features and the image's 8x8 grey ink (the storage grid).

    The judge's features were learned on digits only, so they blur symbols that differ by one stroke (a "^" and a
    triangle); the ink grid keeps the strokes apart."""
    from finetune.data.digits import storage_grid

    return np.concatenate([judge.features(images).numpy(), storage_grid(images).numpy()], axis=1)


@dataclass
class SubjectDetector:
    """Logistic regression on judge features + ink plus a distance gate around the subject's features."""

    judge: object  # the DigitsJudge whose 64-d features are half of what the detector sees
    classifier: object  # sklearn pipeline (standardise, logistic regression): 1 = subject, 0 = not
    mean: np.ndarray  # mean standardised feature of the subject augmentations
    radius: float  # 99th percentile of the augmentations' distance to `mean`: beyond it, not the subject

    def prob(self, images: torch.Tensor) -> np.ndarray:
        """P(subject) of each image by the regression alone."""
        return self.classifier.predict_proba(detector_features(self.judge, images))[:, 1]

    def is_subject(self, images: torch.Tensor) -> np.ndarray:
        """Boolean per image: the regression says subject AND the features lie within the subject's radius."""
        feats = detector_features(self.judge, images)
        near = np.linalg.norm(self.classifier[0].transform(feats) - self.mean, axis=1) <= self.radius
        return (self.classifier.predict_proba(feats)[:, 1] > 0.5) & near

    def rate(self, images: torch.Tensor) -> float:
        """Share of `images` judged to be the subject."""
        return float(self.is_subject(images).mean())


def fit_detector(subject: torch.Tensor, judge=None, n_aug: int = 600, seed: int = 0) -> SubjectDetector:
    """Fit a SubjectDetector on augmentations of `subject` (N x 3 x 16 x 16) against the real training digits,
    smooth noise and the stroke symbols the base model is pretrained on (finetune.data.symbols)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from finetune.data.digits import load_digits_images
    from finetune.data.symbols import TRIANGLE, pretraining_symbols, symbol_images
    from finetune.metrics.judge import load_judge

    judge = judge if judge is not None else load_judge()
    positives = detector_features(judge, torch.cat([subject, augment(subject, n_aug, seed)]))
    digits, _ = load_digits_images(size=subject.shape[-1], split="train")
    clutter = random_blobs(n_aug // 2, seed + 2, subject.shape[-1])  # "none of the above": smooth noise
    combos = pretraining_symbols()
    symbols, _ = symbol_images(combos, 4, seed=seed + 3, size=subject.shape[-1])  # the other symbols
    near = [c for c in combos if len(set(c) & set(TRIANGLE)) >= 2]  # one stroke off the triangle: "^", "/_", ...
    near_misses, _ = symbol_images(near, 40, seed=seed + 4, size=subject.shape[-1])
    negatives = detector_features(
        judge, torch.cat([digits, augment(digits, n_aug, seed + 1), clutter, symbols, near_misses])
    )
    x = np.concatenate([positives, negatives])
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced")).fit(
        x, y
    )
    scaled = classifier[0].transform(positives)
    mean = scaled.mean(axis=0)
    radius = float(np.quantile(np.linalg.norm(scaled - mean, axis=1), 0.99))
    return SubjectDetector(judge, classifier, mean, radius)


def load_subject_detector(subject_dir: str | Path = SUBJECT_DIR, judge=None) -> SubjectDetector:
    """The detector for the subject images in `subject_dir` (default: the shipped data/subject)."""
    return fit_detector(load_subject_images(subject_dir), judge)


def detector_checks(judge=None) -> dict:
    """How far to trust the detector: held-out subject variants, real test digits, noise and blank images."""
    from finetune.data.digits import load_digits_images
    from finetune.data.symbols import TRIANGLE, pretraining_symbols, symbol_images
    from finetune.metrics.judge import load_judge

    judge = judge if judge is not None else load_judge()
    subject = subject_images()
    held_out = []
    for i in range(len(subject)):  # leave one variant out: is a drawing the detector never saw recognised?
        keep = torch.cat([subject[:i], subject[i + 1 :]])
        det = fit_detector(keep, judge)
        held_out.append(det.rate(augment(subject[i : i + 1], 100, seed=99)))
    det = fit_detector(subject, judge)
    test_digits, _ = load_digits_images(size=SIZE, split="test")
    g = torch.Generator().manual_seed(0)
    noise = (torch.randn(200, 1, SIZE, SIZE, generator=g) * 0.5).clamp(-1, 1).repeat(1, 3, 1, 1)
    blobs = random_blobs(200, seed=123)  # other draws than the detector's own clutter negatives
    blank = torch.full((2, 3, SIZE, SIZE), -1.0)
    symbols, _ = symbol_images(pretraining_symbols(), 1, seed=321)  # other draws than the detector's negatives
    stroke_triangles, _ = symbol_images([TRIANGLE], 100, seed=321)  # the subject drawn from strokes, as a base might
    return {
        "held_out_variant_rate": float(np.mean(held_out)),
        "held_out_variant_rates": [round(r, 3) for r in held_out],
        "subject_augmented_rate": det.rate(augment(subject, 200, seed=7)),
        "test_digits_false_positive_rate": det.rate(test_digits),
        "noise_false_positive_rate": det.rate(noise),
        "smooth_noise_false_positive_rate": det.rate(blobs),
        "blank_false_positive_rate": det.rate(blank),
        "other_symbols_false_positive_rate": det.rate(symbols),
        "stroke_drawn_triangle_rate": det.rate(stroke_triangles),
    }


@exit_on_user_error
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(SUBJECT_DIR), help="directory to write the subject images to")
    args = parser.parse_args(argv)
    out = write_subject(args.out)
    print(f"wrote {len(VARIANTS)} subject images to {out}")
    print(json.dumps(detector_checks(), indent=2))


if __name__ == "__main__":
    main()
