"""The torchvision stand-in (benchmarks/torchvision_standin.py) against direct PIL/numpy computations of what
torchvision documents for each call, and the launcher that hands it to diffusers' scripts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tv = _load("torchvision_standin")


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(("width", "height", "expected"), [(1024, 1280, (64, 80)), (1280, 1024, (80, 64))])
def test_resize_sets_the_shorter_side_and_resizes_with_the_modes_pil_filter(width, height, expected):
    img = _photo(width, height)
    out = tv.Resize(64, interpolation=tv.InterpolationMode.LANCZOS)(img)
    assert out.size == expected  # (w, h): shorter side 64, longer int(64 * long / short)
    assert np.array_equal(np.asarray(out), np.asarray(img.resize(expected, Image.Resampling.LANCZOS)))
    bilinear = tv.Resize(64, interpolation=tv.InterpolationMode.BILINEAR)(img)
    assert np.array_equal(np.asarray(bilinear), np.asarray(img.resize(expected, Image.Resampling.BILINEAR)))


def test_resize_truncates_the_longer_side_and_returns_an_image_already_that_size():
    assert tv.Resize(64)(_photo(100, 337)).size == (64, 215)  # int(64 * 337 / 100) = int(215.68): truncated
    img = _photo(64, 80)
    assert tv.Resize(64)(img) is img


def test_center_crop_offsets_round_as_torchvision():
    img = _photo(64, 81)  # (81 - 64) / 2 = 8.5: Python's round gives 8, as torchvision's int(round(...))
    out = tv.CenterCrop(64)(img)
    assert np.array_equal(np.asarray(out), np.asarray(img)[8:72, :, :])
    wide = _photo(90, 64)
    assert np.array_equal(np.asarray(tv.CenterCrop(64)(wide)), np.asarray(wide)[:, 13:77, :])


def test_center_crop_zero_pads_a_small_image():
    img = _photo(60, 64)
    out = np.asarray(tv.CenterCrop(64)(img))
    assert out.shape == (64, 64, 3)
    assert (out[:, :2] == 0).all() and (out[:, 62:] == 0).all()
    assert np.array_equal(out[:, 2:62], np.asarray(img))


def test_random_crop_draws_top_then_left_from_torchs_generator():
    img = _photo(64, 80)
    torch.manual_seed(3)
    out = tv.RandomCrop(64)(img)
    torch.manual_seed(3)
    top = int(torch.randint(0, 80 - 64 + 1, size=(1,)).item())
    left = int(torch.randint(0, 64 - 64 + 1, size=(1,)).item())
    assert np.array_equal(np.asarray(out), np.asarray(img)[top : top + 64, left : left + 64])
    state = torch.get_rng_state()
    assert tv.RandomCrop.get_params(_photo(64, 64), (64, 64)) == (0, 0, 64, 64)
    assert torch.equal(state, torch.get_rng_state())  # an exact fit draws nothing, as torchvision


def test_horizontal_flip_mirrors_with_probability_p():
    img = _photo(8, 6)
    assert np.array_equal(np.asarray(tv.RandomHorizontalFlip(p=1.0)(img)), np.asarray(img)[:, ::-1])
    assert tv.RandomHorizontalFlip(p=0.0)(img) is img


def test_to_tensor_and_normalize_give_chw_in_minus_one_to_one():
    img = _photo(5, 4)
    x = tv.Compose([tv.ToTensor(), tv.Normalize([0.5], [0.5])])(img)
    expected = (np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    assert x.dtype == torch.float32 and x.shape == (3, 4, 5)
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    t = tv.ToTensor()(img)
    assert torch.equal(t, tv.ToTensor()(img)) and tv.Normalize([0.5], [0.5])(t) is not t  # not in place


def test_install_gives_the_names_the_scripts_import(monkeypatch):
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    tv.install()
    from torchvision import transforms
    from torchvision.transforms.functional import crop

    modes = [f.lower() for f in dir(transforms.InterpolationMode) if not f.startswith("__") and not f.endswith("__")]
    assert {"lanczos", "bilinear", "bicubic", "nearest"} <= set(modes)
    assert transforms.InterpolationMode.LANCZOS is tv.InterpolationMode.LANCZOS
    assert crop is tv.crop and transforms.RandomCrop is tv.RandomCrop
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        monkeypatch.delitem(sys.modules, name)


def test_launcher_runs_a_script_as_main_and_stamps_each_optimizer_step(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, torch\n"
        "from torchvision import transforms\n"  # the stand-in, installed after transformers and diffusers
        "import transformers\n"
        "assert not transformers.utils.is_torchvision_available()\n"
        "assert __name__ == '__main__' and sys.argv[1:] == ['--steps', '3']\n"
        "w = torch.nn.Parameter(torch.ones(2))\n"
        "opt = torch.optim.AdamW([w], lr=0.1)\n"
        "for _ in range(int(sys.argv[2])):\n"
        "    w.sum().backward(); opt.step(); opt.zero_grad()\n"
    )
    record = tmp_path / "steps.json"
    launcher = ROOT / "benchmarks" / "script_launcher.py"
    cmd = [sys.executable, str(launcher), "--record", str(record), "--torchvision-standin", str(script)]
    proc = subprocess.run([*cmd, "--steps", "3"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stamps = json.loads(record.read_text())
    assert len(stamps["step_ends"]) == 3 and stamps["step_ends"] == sorted(stamps["step_ends"])
    assert stamps["started"] < stamps["step_ends"][0]
    assert all(b > 0 for b in stamps["peak_rss_bytes"])
