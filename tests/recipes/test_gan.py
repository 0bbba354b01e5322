"""The GAN recipe trains for real on digits: FID falls, losses are logged apart, resume is exact,
and bad configs stop with one line before anything is built."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.models.small_nets import MLPGenerator, image_grid_png
from finetune.train.logging import read_metrics
from recipes.gan import main
from tests.conftest import ROOT, subprocess_env

CONFIGS = ROOT / "recipes" / "configs"
QUIET = ["train.tensorboard=false", "train.eval_at_start=false"]


def run(out: Path, *overrides: str, config: str = "gan_nonsaturating.yaml") -> dict:
    return main(
        [
            "--config",
            str(CONFIGS / config),
            f"train.output_dir={out}",
            "train.save_every=0",
            "train.eval_every=0",
            "train.eval_samples=100",
            *QUIET,
            *overrides,
        ]
    )


def test_gan_training_lowers_fid_and_logs_g_and_d_losses(tmp_path):
    summary = run(
        tmp_path,
        "train.max_steps=60",
        "train.log_every=1",
        "train.eval_samples=200",
        "train.eval_at_start=true",
        "optim_g.lr=1e-3",
        "optim_d.lr=1e-3",
    )
    # the metric the recipe exists for moved: the judge's FID of the generator fell well below the untrained one
    assert summary["fid"] < 0.9 * summary["fid_start"], summary
    records = read_metrics(tmp_path)
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 61))
    for key in ("g_loss", "d_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm"):
        assert all(math.isfinite(r[key]) for r in train), key
    # first losses pinned: D starts near 0.5 everywhere, so BCE(real)+BCE(fake) ~ 2 log 2 and -log D(G(z)) ~ log 2
    assert train[0]["d_loss"] == pytest.approx(2 * math.log(2), abs=0.1)
    assert train[0]["g_loss"] == pytest.approx(math.log(2), abs=0.1)
    assert [r["step"] for r in records if r["split"] == "eval"] == [0, 60]
    # the generator artifact loads strictly into a fresh network; sample grids were written at each eval
    gen = MLPGenerator(latent_dim=16, image_size=8, hidden=128)
    gen.load_state_dict(load_file(tmp_path / "generator.safetensors"), strict=True)
    assert gen(torch.randn(3, 16)).shape == (3, 1, 8, 8)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_000000.png", "step_000060.png"]
    assert (tmp_path / "samples" / "step_000060.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    resolved = (tmp_path / "config.yaml").read_text()
    assert "n_critic: 1" in resolved and "clip_value: 0.0" in resolved  # loss-dependent defaults written resolved


def _tensors(path: Path) -> dict:
    return {f"{f.name}/{k}": v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    # wgan_gp + spectral norm + 2 critic steps: exercises the noise stream, GP interpolation noise,
    # spectral-norm power-iteration buffers, both optimizers and the data position across a resume
    args = ["loss=wgan_gp", "spectral_norm=true", "n_critic=2", "train.batch_size=32", "train.log_every=1"]
    full, split = tmp_path / "full", tmp_path / "split"
    run(full, *args, "train.max_steps=12", "train.save_every=6", config="gan_wgan_gp.yaml")
    run(split, *args, "train.max_steps=6", "train.save_every=6", config="gan_wgan_gp.yaml")
    run(split, *args, "train.max_steps=12", "train.save_every=6", "train.resume=latest", config="gan_wgan_gp.yaml")

    a, b = _tensors(full / "checkpoint-12"), _tensors(split / "checkpoint-12")
    assert len(a) > 10 and a.keys() == b.keys()
    # G, D, both optimizers, the noise stream and the process RNG, all safetensors; no pickle anywhere
    assert sorted(p.name for p in (split / "checkpoint-12").iterdir()) == [
        "model.safetensors",
        "model_1.safetensors",
        "noise_0.safetensors",
        "optimizer.safetensors",
        "optimizer_1.safetensors",
        "rng_0.safetensors",
        "trainer_state.json",
    ]
    assert any("_u" in k for k in a), "spectral-norm buffers should be in the checkpoint"
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ga, gb = load_file(full / "generator.safetensors"), load_file(split / "generator.safetensors")
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
    losses = lambda out: [
        (r["step"], r["d_loss"], r["g_loss"], r["gp"]) for r in read_metrics(out) if r["split"] == "train"
    ]  # noqa: E731
    assert losses(full) == losses(split)  # the resumed run logged steps 7..12 once, with the same values


@pytest.mark.parametrize(
    "overrides, phrase",
    [
        (["loss=wgan", "d_output=sigmoid"], "unbounded critic"),
        (["loss=hinge", "d_output=sigmoid"], "unbounded critic"),
        (["loss=wgan_gp", "label_smoothing=0.9"], "label_smoothing=0.9 has no meaning"),
        (["loss=wgan_gp", "clip_value=0.01"], "two Lipschitz constraints"),
        (["n_critic=0"], "n_critic=0 must be >= 1"),
        (["loss=wgan", "clip_value=0"], "needs a Lipschitz critic"),
        (["loss=nonsaturating", "clip_value=0.01"], "WGAN weight clipping"),
        (["label_smoothing=1.5"], "must be in (0, 1]"),
        (["optim_d.lr=0"], "optim_d: optim.lr=0.0 is out of range: it must be > 0"),
        (["loss=wasserstein"], "must be one of"),
        (["spectral_nrom=true"], "did you mean 'spectral_norm'"),
        (["arch=conv", "image_size=12"], "power of two"),
    ],
)
def test_bad_configs_exit_with_one_error_line(tmp_path, capsys, overrides, phrase):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main([f"train.output_dir={out}", *overrides])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and phrase in err[0], err
    assert not out.exists()  # refused before the run directory was touched


def test_command_line_refusal_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "gan.py"),
            f"train.output_dir={tmp_path / 'x'}",
            "loss=wgan",
            "d_output=sigmoid",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: loss=wgan needs an unbounded critic, but d_output=sigmoid squashes it to (0, 1); set d_output=logit"
    ]


def test_conv_generator_at_16px_with_sigmoid_lsgan_and_smoothing(tmp_path):
    summary = run(
        tmp_path,
        "arch=conv",
        "image_size=16",
        "hidden=8",
        "loss=lsgan",
        "d_output=sigmoid",
        "label_smoothing=0.9",
        "train.max_steps=3",
        "train.batch_size=16",
        "train.eval_samples=20",
    )
    assert summary["step"] == 3 and math.isfinite(summary["fid"])
    weights = load_file(tmp_path / "generator.safetensors")
    assert any(w.dim() == 4 for w in weights.values())  # transposed-conv kernels
    d_real = [r["d_real"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert all(0.0 < v < 1.0 for v in d_real)  # sigmoid D outputs


def test_image_grid_png_tiles_images():
    from io import BytesIO

    from PIL import Image

    img = Image.open(BytesIO(image_grid_png(torch.zeros(10, 1, 8, 8), nrow=4, scale=1)))
    assert img.size == (4 * 9 + 1, 3 * 9 + 1)  # 4 columns, ceil(10/4) = 3 rows, 1-px borders


@pytest.mark.parametrize("precision", ["bf16"])
def test_mixed_precision_run_through_accelerate(tmp_path, precision):
    env = {**subprocess_env(), "ACCELERATE_MIXED_PRECISION": precision}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "gan.py"),
            "--config",
            str(CONFIGS / "gan_hinge_sagan.yaml"),
            f"train.output_dir={tmp_path}",
            "train.max_steps=5",
            "train.eval_samples=20",
            "train.save_every=0",
            "train.eval_every=0",
            *QUIET,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 5 and math.isfinite(summary["d_loss"]) and math.isfinite(summary["g_loss"])
