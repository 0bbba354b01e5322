"""The VAE recipe trains through the shared loop: the ELBO falls, its terms are logged apart, and
summary.json carries the FID of prior samples."""

from __future__ import annotations

import json
import math
from io import BytesIO

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from finetune.metrics import judge_images, load_judge
from finetune.models.small_nets import DigitsVAE
from finetune.train.logging import read_metrics
from recipes.vae import main
from tests.conftest import ROOT

CONFIG = ROOT / "recipes" / "configs" / "vae_digits.yaml"


def untrained_fid(n: int) -> float:
    torch.manual_seed(0)  # the recipe's seed: the same initial weights
    vae = DigitsVAE(image_size=8, latent_dim=8, hidden=256)
    with torch.no_grad():
        samples = torch.sigmoid(vae.decode(torch.randn(n, 8))) * 2 - 1
    return judge_images(load_judge(), samples)["fid"]


def test_vae_elbo_falls_and_summary_has_fid(tmp_path):
    summary = main(
        [
            "--config",
            str(CONFIG),
            f"train.output_dir={tmp_path}",
            "train.max_steps=200",
            "train.eval_every=50",
            "train.log_every=1",
            "train.save_every=0",
            "train.tensorboard=false",
            "train.progress_bar=false",
            "eval_samples=200",
            "beta=0.5",
        ]
    )
    records = read_metrics(tmp_path)
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    # first loss pinned: decoder logits start near 0, so the Bernoulli recon term is ~ 64 pixels * log 2
    assert train[0]["recon"] == pytest.approx(64 * math.log(2), abs=2.0)
    # loss = recon + beta * kl, logged separately
    for r in train:
        assert r["loss"] == pytest.approx(r["recon"] + 0.5 * r["kl"], rel=1e-5)
    assert [e["step"] for e in evals] == [50, 100, 150, 200]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] < train[0]["loss"] - 10  # the held-out negative ELBO fell
    assert evals[-1]["val_kl"] > 0.1  # the latent is used (no posterior collapse)

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == pytest.approx(summary)
    # the metric moved: prior samples score far better than those of the same VAE untrained
    assert on_disk["n_samples"] == 200
    assert 0 < on_disk["fid"] < 0.7 * untrained_fid(n=200), on_disk["fid"]

    vae = DigitsVAE(image_size=8, latent_dim=8, hidden=256)
    vae.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    assert vae.decode(torch.zeros(2, 8)).shape == (2, 1, 8, 8)
    samples = Image.open(BytesIO((tmp_path / "samples.png").read_bytes()))
    recons = Image.open(BytesIO((tmp_path / "reconstructions.png").read_bytes()))
    assert samples.size == recons.size and samples.width > 64


def test_vae_refuses_negative_beta(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([f"train.output_dir={tmp_path / 'run'}", "beta=-1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: beta=-1.0 must be >= 0 (1 is the ELBO, > 1 a beta-VAE)"]
    assert not (tmp_path / "run").exists()
