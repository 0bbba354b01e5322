"""Stroke symbols, the digits world's second repertoire: captions, the held-out triangle, rendering, the folder."""

from __future__ import annotations

import json

import numpy as np
import torch

from finetune.data.digits import ink_to_images as render
from finetune.data.digits import write_digits_imagefolder
from finetune.data.symbols import (
    STROKES,
    TRIANGLE,
    nearest_symbol,
    pretraining_symbols,
    symbol_caption,
    symbol_images,
)


def test_the_triangle_is_held_out_and_every_other_combination_is_in():
    combos = pretraining_symbols()
    n = len(STROKES)
    assert len(combos) == n + n * (n - 1) // 2 + n * (n - 1) * (n - 2) // 6 - 1
    assert set(TRIANGLE) not in [set(c) for c in combos]
    assert ("left slant", "right slant") in combos and ("bottom bar",) in combos  # its parts are taught


def test_captions_name_the_strokes():
    assert symbol_caption(("top bar",)) == "a drawing of a symbol with a top bar"
    assert symbol_caption(TRIANGLE) == "a drawing of a symbol with a bottom bar, a left slant and a right slant"


def test_drawings_are_jittered_deterministic_and_rendered_like_the_digits():
    a, caps = symbol_images([TRIANGLE, ("top bar",)], 3, seed=1)
    b, _ = symbol_images([TRIANGLE, ("top bar",)], 3, seed=1)
    assert torch.equal(a, b) and a.shape == (6, 3, 16, 16) and caps[0] == symbol_caption(TRIANGLE)
    assert not torch.equal(a[0], a[1])  # jitter
    assert a.min() >= -1 and a.max() <= 1 and torch.equal(a[:, 0], a[:, 2])
    ink = np.zeros((1, 8, 8), np.float32)
    assert torch.equal(render(ink), torch.full((1, 3, 16, 16), -1.0))  # no ink: the digits' background


def test_symbols_join_the_captioned_digits_folder(tmp_path):
    extra = symbol_images(pretraining_symbols()[:4], 2, seed=0)
    out = write_digits_imagefolder(tmp_path / "mix", n_per_class=1, split="test", extra=extra)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 18 and [r["label"] for r in rows[10:]] == [-1] * 8
    assert rows[10]["text"] == symbol_caption(pretraining_symbols()[0])
    assert all((out / r["file_name"]).is_file() for r in rows)


def test_nearest_symbol_tells_the_triangle_from_its_neighbours():
    combos = pretraining_symbols() + [TRIANGLE]
    images, _ = symbol_images(combos, 3, seed=5)
    assert (
        float((nearest_symbol(images, combos) == torch.arange(len(combos)).repeat_interleave(3)).float().mean()) >= 0.95
    )
    near = [c for c in combos if len(set(c) & set(TRIANGLE)) == 2 and len(c) == 2]  # "^", "/_", "_\\"
    drawn = nearest_symbol(symbol_images(near, 10, seed=6)[0], combos)
    assert not (drawn == combos.index(TRIANGLE)).any()
