"""The shipped digits judge: accuracy on held-out digits at any resolution, artifacts, judge_images."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from finetune.data.digits import load_digits_images
from finetune.errors import UserError
from finetune.metrics.fid import judge_images
from finetune.metrics.judge import DEFAULT_JUDGE_DIR, load_judge, save_judge


@pytest.fixture(scope="module")
def judge():
    return load_judge()


def test_shipped_judge_is_small_and_records_its_accuracy():
    weights = DEFAULT_JUDGE_DIR / "model.safetensors"
    assert weights.stat().st_size < 1_000_000
    config = json.loads((DEFAULT_JUDGE_DIR / "config.json").read_text())
    assert config["test_accuracy"] >= 0.97 and config["config"]["input_size"] == 16
    with safe_open(str(weights), framework="pt") as f:  # the stock library reads it
        assert "head.weight" in f.keys() and f.get_tensor("head.weight").shape == (10, 64)


@pytest.mark.parametrize("size", [16, 64])
def test_judge_is_accurate_on_the_held_out_split_at_any_resolution(judge, size):
    x, y = load_digits_images(size=size, split="test")
    acc = float((judge.predict(x) == y).float().mean())
    assert acc >= 0.97


def test_outputs_shapes_and_probabilities(judge):
    x, _ = load_digits_images(size=24, split="test")
    x = x[:50]
    assert judge.features(x).shape == (50, 64)
    probs = judge.probs(x)
    assert probs.shape == (50, 10) and torch.allclose(probs.sum(-1), torch.ones(50), atol=1e-5)
    assert torch.equal(judge.predict(x[:, :1]), judge.predict(x))  # one grey channel == grey RGB


def test_judge_rejects_images_it_cannot_judge(judge):
    x, _ = load_digits_images(size=16, split="test")
    with pytest.raises(UserError, match=r"\[-1, 1\]"):
        judge.predict((x[:4] + 1) * 127.5)  # 0..255 floats
    with pytest.raises(UserError, match="dtype"):
        judge.predict(((x[:4] + 1) * 127.5).to(torch.uint8))
    with pytest.raises(UserError, match="H, W >= 8"):
        judge.predict(torch.zeros(2, 3, 4, 4))
    with pytest.raises(UserError, match="N x 3 x H x W"):
        judge.predict(x[0])


def test_save_load_round_trip(judge, tmp_path):
    save_judge(tmp_path / "j", judge.model, judge.config, {"test_accuracy": 0.5})
    again = load_judge(tmp_path / "j")
    x, _ = load_digits_images(size=16, split="test")
    assert torch.equal(again.logits(x[:20]), judge.logits(x[:20]))
    assert again.info["test_accuracy"] == 0.5


def test_missing_judge_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="train_digits_judge"):
        load_judge(tmp_path)


def test_judge_images_ranks_real_digits_above_noise(judge):
    real, labels = load_digits_images(size=32, split="train")
    real, labels = real[:300], labels[:300]
    noise = torch.rand(300, 3, 32, 32) * 2 - 1
    good = judge_images(judge, real, prompt_labels=labels)
    bad = judge_images(judge, noise, prompt_labels=labels)
    assert good["accuracy"] >= 0.97 and set(good["per_class_accuracy"]) == set(range(10))
    assert bad["accuracy"] < 0.5
    assert good["fid"] < 20 < 100 < bad["fid"]
    assert bad["kid"] > 10 * max(good["kid"], 1.0)
    assert good["is"] > 5 > 2 > bad["is"]
    # a set scored against itself (the test split is the reference) has FID ~ 0
    test_x, _ = load_digits_images(size=32, split="test")
    assert judge_images(judge, test_x)["fid"] == pytest.approx(0.0, abs=1e-6)
    assert (("test", 32, 0)) in judge._reference_cache


def test_judge_images_wants_one_label_per_image(judge):
    x, y = load_digits_images(size=16, split="test")
    with pytest.raises(UserError, match="prompt_labels"):
        judge_images(judge, x[:10], prompt_labels=y[:9])


@pytest.mark.slow
def test_training_script_reaches_97_percent(tmp_path):
    import importlib.util

    from finetune.metrics.judge import DEFAULT_JUDGE_DIR as root

    script_path = root.parents[1] / "scripts" / "train_digits_judge.py"
    spec = importlib.util.spec_from_file_location("train_digits_judge", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--out", str(tmp_path / "j")])
    trained = load_judge(tmp_path / "j")
    x, y = load_digits_images(size=16, split="test")
    assert float((trained.predict(x) == y).float().mean()) >= 0.97
