"""The digits image world: tensors, the stratified split, captions, and the image-folder writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from finetune.data.digits import DIGIT_WORDS, caption, load_digits_images, split_indices, write_digits_imagefolder
from finetune.errors import UserError


def test_images_shape_range_and_labels():
    x, y = load_digits_images(size=16, split="all")
    assert x.shape == (1797, 3, 16, 16) and x.dtype == torch.float32
    assert y.dtype == torch.long and sorted(y.unique().tolist()) == list(range(10))
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey in RGB


def test_8px_images_are_sklearn_pixels_scaled_to_minus1_1():
    bunch = load_digits()
    x, y = load_digits_images(size=8, split="all")
    expected = torch.from_numpy(bunch.images).float() / 8.0 - 1.0  # 0..16 -> -1..1
    assert torch.allclose(x[:, 0], expected, atol=1e-6)
    assert torch.equal(y, torch.from_numpy(bunch.target))


def test_split_is_stratified_disjoint_and_deterministic():
    train, test = split_indices("train"), split_indices("test")
    assert len(train) == 1437 and len(test) == 360
    assert len(np.intersect1d(train, test)) == 0 and len(np.union1d(train, test)) == 1797
    _, y_all = load_digits_images(size=8)
    _, y_test = load_digits_images(size=8, split="test")
    for k in range(10):
        assert abs(int((y_test == k).sum()) - 0.2 * int((y_all == k).sum())) <= 1
    x1, _ = load_digits_images(size=12, split="test", seed=0)
    x2, _ = load_digits_images(size=12, split="test", seed=0)
    x3, _ = load_digits_images(size=12, split="test", seed=1)
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)


def test_captions():
    assert caption(7) == "a drawing of the digit seven"
    assert [caption(k).split()[-1] for k in range(10)] == DIGIT_WORDS
    with pytest.raises(UserError):
        caption(10)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="size"):
        load_digits_images(size=4)
    with pytest.raises(UserError, match="split"):
        load_digits_images(split="validation")


def test_imagefolder_round_trips_through_datasets(tmp_path):
    import datasets

    out = write_digits_imagefolder(tmp_path / "digits", n_per_class=2, size=16, split="test", seed=0)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and all((out / r["file_name"]).is_file() for r in rows)
    assert [r["label"] for r in rows] == [k for k in range(10) for _ in range(2)]

    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 20 and set(ds.column_names) >= {"image", "text"}
    x_test, y_test = load_digits_images(size=16, split="test")
    for row in ds:
        assert row["text"] == caption(row["label"])
        img = torch.from_numpy(np.array(row["image"].convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1
        # each PNG is one of the test digits of its class, up to 8-bit quantisation
        err = (x_test[y_test == row["label"]] - img).abs().flatten(1).max(dim=1).values
        assert float(err.min()) <= 1 / 127.5


def test_imagefolder_refuses_more_images_than_the_split_has(tmp_path):
    with pytest.raises(UserError, match="n_per_class"):
        write_digits_imagefolder(tmp_path / "d", n_per_class=100, split="test")
    assert not (tmp_path / "d").exists()
