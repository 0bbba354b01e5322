"""scikit-learn's handwritten digits as the toolkit's offline image world.

`load_digits()` ships 1,797 labelled 8x8 grey images inside scikit-learn, so recipes, metrics and tests
can train and judge image models with no network. This module turns them into the tensors the
toolkit uses everywhere (N x 3 x size x size, values in [-1, 1]), gives each digit a caption, and
writes an image folder (PNG files + metadata.jsonl) that `datasets`' "imagefolder" loader reads.
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from finetune.errors import UserError
from finetune.io import atomic_dir, atomic_write_bytes, atomic_write_text

Split = Literal["train", "test", "all"]

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEST_FRACTION = 0.2  # share of each class held out for the "test" split
MIN_SIZE = 8  # the originals are 8x8; we only upsample


def caption(k: int) -> str:
    """The caption of digit class `k`, e.g. caption(7) == "a drawing of the digit seven"."""
    if not 0 <= int(k) <= 9:
        raise UserError(f"digit class must be 0..9, got {k}")
    return f"a drawing of the digit {DIGIT_WORDS[int(k)]}"


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits as (N x 8 x 8 float32 in 0..16, N int64 labels); loaded once per process."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=8)
def split_indices(split: Split, seed: int = 0) -> np.ndarray:
    """Indices of `split` in sklearn's order: a deterministic stratified 80/20 train/test split."""
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise UserError(f"split must be 'train', 'test' or 'all', got {split!r}")
    _, labels = _raw_digits()
    all_idx = np.arange(len(labels))
    if split == "all":
        all_idx.setflags(write=False)
        return all_idx
    train_idx, test_idx = train_test_split(all_idx, test_size=TEST_FRACTION, stratify=labels, random_state=seed)
    idx = np.sort(train_idx if split == "train" else test_idx)
    idx.setflags(write=False)  # cached: callers must not change it
    return idx


def load_digits_images(size: int = 16, split: Split = "all", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits of `split` as (float images N x 3 x size x size in [-1, 1], LongTensor labels).

    The 8x8 originals (ink 0..16) are scaled to [-1, 1] (background -1), upsampled bilinearly to
    `size` and repeated over three channels, since the toolkit's image models are RGB.
    """
    if int(size) < MIN_SIZE:
        raise UserError(f"digits size must be >= {MIN_SIZE} (the originals are 8x8), got {size}")
    idx = split_indices(split, seed)
    images, labels = _raw_digits()
    return ink_to_images(torch.from_numpy(images[idx]) / 16.0, size), torch.from_numpy(labels[idx].copy())


def ink_to_images(ink: torch.Tensor, size: int = 16) -> torch.Tensor:
    """8x8 ink grids (N x 8 x 8, ink in [0, 1]) as the digits world's images: scaled to [-1, 1] (background -1),
    upsampled bilinearly to `size` and repeated over three channels (the toolkit's image models are RGB)."""
    x = torch.as_tensor(ink, dtype=torch.float32).unsqueeze(1) * 2.0 - 1.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(-1.0, 1.0).repeat(1, 3, 1, 1).contiguous()


def storage_grid(images: torch.Tensor) -> torch.Tensor:
    """The 8x8 grey grid images of the digits world are stored on (N x 64): the inverse view of ink_to_images."""
    return F.adaptive_avg_pool2d(images[:, :1].float(), 8).flatten(1)


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """One 3 x H x W image in [-1, 1] as an H x W x 3 uint8 array (for PNG)."""
    x = ((image.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


def _png_bytes(image: torch.Tensor) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8_hwc(image), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _pick_per_class(labels: torch.Tensor, n_per_class: int, seed: int) -> list[int]:
    """`n_per_class` positions of each class, chosen reproducibly from `seed`, sorted by class."""
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for k in range(10):
        pos = np.flatnonzero(labels.numpy() == k)
        if n_per_class > len(pos):
            raise UserError(
                f"n_per_class={n_per_class} but the split has only {len(pos)} images of digit {k}; "
                f"lower n_per_class or use split='all'"
            )
        picked.extend(sorted(rng.choice(pos, size=n_per_class, replace=False).tolist()))
    return picked


def write_digits_imagefolder(
    out_dir: str | Path,
    n_per_class: int = 5,
    size: int = 16,
    split: Split = "train",
    seed: int = 0,
    extra: tuple[torch.Tensor, list[str]] | None = None,
) -> Path:
    """Write `n_per_class` digits of each class as PNGs plus metadata.jsonl; returns `out_dir`.

    Each metadata line is {"file_name": ..., "text": caption, "label": k}, the layout `datasets`'
    "imagefolder" loader reads (`load_dataset("imagefolder", data_dir=out_dir)`). `extra` adds other
    captioned images (N x 3 x H x W in [-1, 1], N captions; label -1), e.g. the stroke symbols of
    finetune.data.symbols. The directory appears atomically and replaces an existing one.
    """
    if n_per_class < 1:
        raise UserError(f"n_per_class must be >= 1, got {n_per_class}")
    images, labels = load_digits_images(size=size, split=split, seed=seed)
    out_dir = Path(out_dir)
    lines = []
    with atomic_dir(out_dir) as tmp:
        for i, pos in enumerate(_pick_per_class(labels, n_per_class, seed)):
            k = int(labels[pos])
            name = f"{i:05d}_{DIGIT_WORDS[k]}.png"
            atomic_write_bytes(tmp / name, _png_bytes(images[pos]))
            lines.append(json.dumps({"file_name": name, "text": caption(k), "label": k}))
        for i, (image, text) in enumerate(zip(*(extra or ((), ())))):
            name = f"extra_{i:05d}.png"
            atomic_write_bytes(tmp / name, _png_bytes(image))
            lines.append(json.dumps({"file_name": name, "text": text, "label": -1}))
        atomic_write_text(tmp / "metadata.jsonl", "\n".join(lines) + "\n")
    return out_dir
