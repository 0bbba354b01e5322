"""The reconstructions grid the VAE and autoencoder recipes write: rows of originals, each followed by its
reconstructions."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.models.small_nets import reconstructions_png


def tile_means(png: bytes, side: int, pad: int = 1) -> np.ndarray:
    """Mean grey level of each tile of a grid of `side`-pixel images, scale 1 (rows x cols)."""
    a = np.asarray(Image.open(BytesIO(png)).convert("L"), dtype=float)
    step = side + pad
    starts = [range(pad, n - side + 1, step) for n in a.shape[:2]]
    return np.array([[a[y : y + side, x : x + side].mean() for x in starts[1]] for y in starts[0]])


def test_each_row_of_originals_is_followed_by_its_reconstructions_whole_rows_only():
    originals = torch.linspace(-1, 0, 20).view(20, 1, 1, 1).expand(20, 1, 8, 8)  # a different grey per image
    recons = torch.ones(20, 1, 8, 8)  # white
    means = tile_means(reconstructions_png(originals, recons, cols=8, scale=1), side=8)
    assert means.shape == (4, 8)  # 20 images: 2 whole rows of 8, each followed by its reconstructions
    expected = (originals[:16, 0, 0, 0].view(2, 8).numpy() + 1) * 127.5
    assert np.allclose(means[0::2], expected, atol=0.6) and np.allclose(means[1::2], 255.0)


def test_at_most_half_as_many_row_pairs_as_columns_and_too_few_images_refused():
    x = torch.zeros(64, 1, 8, 8)
    assert tile_means(reconstructions_png(x, x, cols=4, scale=1), side=8).shape == (4, 4)  # 2 pairs of rows of 4
    with pytest.raises(ValueError, match="at least 8 images"):
        reconstructions_png(x[:7], x[:7])
