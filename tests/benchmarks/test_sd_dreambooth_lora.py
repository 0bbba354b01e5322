"""The DreamBooth-LoRA benchmark's arithmetic: steps/s of the steady loop from the launcher's step stamps, the
median run of each side, and the two sides' command lines naming the same settings."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("sd_dreambooth_lora", ROOT / "benchmarks" / "sd_dreambooth_lora.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_steps_per_second_counts_the_steady_loop_from_the_first_to_the_last_step():
    record = {"started": 0.0, "step_ends": [10.0, 10.5, 10.7, 11.0], "peak_rss_bytes": [1, 2, 3, 7]}
    figures = bench.step_figures(record, steps=4, role="ours")
    assert figures["steps_per_second"] == pytest.approx(3 / 1.0)  # 3 intervals in 1 s; the 10 s start left out
    assert figures["median_step_seconds"] == pytest.approx(0.3)
    assert figures["launch_to_last_step_seconds"] == pytest.approx(11.0)
    assert figures["peak_rss_bytes"] == 7  # read at the last optimizer step
    with pytest.raises(SystemExit, match="3 optimizer steps recorded, 4 expected"):
        bench.step_figures({**record, "step_ends": record["step_ends"][:3]}, steps=4, role="ours")


def test_median_run_keeps_every_runs_figure():
    runs = [{"steps_per_second": s, "peak_rss_bytes": 2**20 * m} for s, m in ((9.0, 500), (3.0, 510), (6.0, 505))]
    chosen = bench.median_run(runs)
    assert chosen["steps_per_second"] == 6.0 and chosen["all_steps_per_second"] == [9.0, 3.0, 6.0]
    assert chosen["all_peak_rss_mib"] == [500, 510, 505]


def test_both_sides_get_the_same_settings(tmp_path):
    a = argparse.Namespace(num_images=4, resolution=64, batch_size=1, rank=4, steps=60, mixed_precision="no")
    ref = dict(arg.lstrip("-").split("=", 1) for arg in bench.reference_args(a, tmp_path, tmp_path / "r") if "=" in arg)
    ours = dict(arg.split("=", 1) for arg in bench.ours_args(a, tmp_path, tmp_path / "o"))
    pairs = {
        "pretrained_model_name_or_path": "model.pretrained",
        "instance_data_dir": "data.instance_dir",
        "class_data_dir": "prior.class_dir",
        "instance_prompt": "data.instance_prompt",
        "class_prompt": "prior.class_prompt",
        "num_class_images": "prior.num_class_images",
        "prior_loss_weight": "prior.loss_weight",
        "resolution": "model.resolution",
        "train_batch_size": "train.batch_size",
        "rank": "lora.rank",
        "max_train_steps": "train.max_steps",
        "learning_rate": "optim.lr",
        "adam_weight_decay": "optim.weight_decay",
        "max_grad_norm": "train.max_grad_norm",
        "lr_scheduler": "scheduler.name",
    }
    for script_flag, our_key in pairs.items():
        assert str(ref[script_flag]) == str(ours[our_key]) or float(ref[script_flag]) == float(ours[our_key])
    assert ours["lora.alpha"] == ref["rank"]  # the script's alpha is its rank
