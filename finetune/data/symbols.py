"""Stroke symbols: a second repertoire for the digits world, drawn the way scikit-learn's digits are stored.

A symbol is a set of one to three strokes from a small vocabulary (four bars, two slants), captioned by its
strokes: "a drawing of a symbol with a top bar and a left slant". Pretraining the digits Stable Diffusion on these
beside the digits teaches it to draw by composition, the way a large SD model can render things no caption of its
training set named. One combination is held out of pretraining on purpose: the hollow triangle
(`TRIANGLE`: bottom bar + left slant + right slant), the project's personalization subject (data/subject). So the
triangle is new to the base model, yet made of parts it has learned to draw and to name. Textual inversion, which
steers the frozen model only through new input embeddings, then finds a token for it; on the digits-only base it
could not, although that UNet draws the triangle from a free conditioning tensor: its text encoder, taught ten
captions, could not express it (benchmarks/ti_ceiling.py). DreamBooth still has something new to teach.

Each symbol is drawn on a 64x64 canvas, jittered (shift, scale, tilt, stroke width), box-averaged to the digits'
8x8 grid, scaled to full ink at its darkest cell, then upsampled bilinearly to 16x16 RGB in [-1, 1], exactly like
`finetune.data.digits.load_digits_images`. Deterministic for a seed. Written by hand: no library draws these.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from finetune.data.digits import ink_to_images, storage_grid

CANVAS = 64  # drawing canvas side; box-averaged down to the 8x8 storage grid

# stroke name -> line (x0, y0, x1, y1) on the 64x64 canvas
STROKES: dict[str, tuple[int, int, int, int]] = {
    "top bar": (8, 10, 56, 10),
    "bottom bar": (8, 54, 56, 54),
    "left bar": (10, 8, 10, 56),
    "right bar": (54, 8, 54, 56),
    "left slant": (8, 54, 32, 8),
    "right slant": (32, 8, 56, 54),
}
TRIANGLE = ("bottom bar", "left slant", "right slant")  # held out of pretraining: the personalization subject


def symbol_caption(strokes: tuple[str, ...]) -> str:
    """'a drawing of a symbol with a top bar, a left bar and a left slant' (strokes in the given order)."""
    parts = [f"a {s}" for s in strokes]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"a drawing of a symbol with {listed}"


def pretraining_symbols(max_strokes: int = 3) -> list[tuple[str, ...]]:
    """Every combination of 1..max_strokes strokes except the held-out triangle, in a fixed order."""
    names = list(STROKES)
    combos = [c for k in range(1, max_strokes + 1) for c in itertools.combinations(names, k)]
    held_out = set(TRIANGLE)
    return [c for c in combos if set(c) != held_out]


def draw_symbol(strokes: tuple[str, ...], rng: np.random.Generator) -> np.ndarray:
    """One jittered drawing as an 8x8 float array of ink in [0, 1]."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(canvas)
    width = int(rng.integers(6, 9))
    scale, (dx, dy) = rng.uniform(0.88, 1.08), rng.uniform(-3, 3, size=2)
    c = CANVAS / 2

    def at(x: float, y: float) -> tuple[float, float]:
        return (c + (x - c) * scale + dx, c + (y - c) * scale + dy)

    for name in strokes:
        x0, y0, x1, y1 = STROKES[name]
        draw.line([at(x0, y0), at(x1, y1)], fill=255, width=width)
    canvas = canvas.rotate(float(rng.uniform(-6, 6)), resample=Image.Resampling.BILINEAR, center=(c, c))
    ink = np.asarray(canvas.resize((8, 8), Image.Resampling.BOX), dtype=np.float32) / 255.0
    return ink / max(float(ink.max()), 1e-6)


def symbol_images(
    combos: list[tuple[str, ...]], per_symbol: int, seed: int = 0, size: int = 16
) -> tuple[torch.Tensor, list[str]]:
    """`per_symbol` jittered drawings of each combination, and their captions (combination-major order)."""
    rng = np.random.default_rng(seed)
    inks, captions = [], []
    for combo in combos:
        for _ in range(per_symbol):
            inks.append(draw_symbol(combo, rng))
            captions.append(symbol_caption(combo))
    return ink_to_images(torch.from_numpy(np.stack(inks)), size), captions


def nearest_symbol(
    images: torch.Tensor, combos: list[tuple[str, ...]], per_symbol: int = 20, seed: int = 99
) -> torch.Tensor:
    """Index into `combos` of the symbol each image (N x 3 x H x W) looks most like: the nearest mean 8x8 ink of
    `per_symbol` fresh drawings of each. A check of what a generator drew, not a judge of quality: it tells
    neighbours apart (98% of fresh drawings of the pretraining symbols plus the triangle land on their own)."""
    reference, _ = symbol_images(combos, per_symbol, seed=seed, size=images.shape[-1])
    centroids = storage_grid(reference).view(len(combos), per_symbol, -1).mean(dim=1)
    return torch.cdist(storage_grid(images), centroids).argmin(dim=1)
