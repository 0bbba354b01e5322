"""Run setup: the CPU convolution backend is chosen by timing, applied only inside its block."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from finetune.errors import UserError
from finetune.train.setup import conv_backend, cpu_conv_backend, uses_channels_last

CPU = SimpleNamespace(device=torch.device("cpu"), num_processes=1, is_main_process=True, print=lambda *a: None)


@pytest.mark.parametrize("slow", ["onednn", "native"])
def test_auto_keeps_the_faster_backend_and_records_it(slow, tmp_path):
    seen = []

    def probe():  # slower under `slow`'s kernels
        onednn = torch.backends.mkldnn.enabled
        seen.append(onednn)
        time.sleep(0.02 if (onednn == (slow == "onednn")) else 0.001)

    fast = "native" if slow == "onednn" else "onednn"
    assert cpu_conv_backend("auto", probe, CPU, tmp_path / "c.json") == fast
    assert seen.count(True) == seen.count(False) == 3  # a warm-up and two timed runs under each
    assert torch.backends.mkldnn.enabled  # probing left the global switch as it was
    # a resumed run takes the recorded choice without probing; a fresh one measures again
    never = lambda: pytest.fail("probed")  # noqa: E731
    assert cpu_conv_backend("auto", never, CPU, tmp_path / "c.json", reuse=True) == fast
    assert cpu_conv_backend("auto", probe, CPU, tmp_path / "c.json") == fast and len(seen) == 12


def test_explicit_choices_are_taken_without_probing_and_gpus_are_left_alone(tmp_path):
    never = lambda: pytest.fail("probed")  # noqa: E731
    record = tmp_path / "c.json"
    assert cpu_conv_backend("native", never, CPU, record) == "native" and not record.exists()
    cuda = SimpleNamespace(device=torch.device("cuda"), num_processes=1, is_main_process=True)
    assert cpu_conv_backend("auto", never, cuda, record) == "cudnn"
    with pytest.raises(UserError, match="auto, onednn, native"):
        cpu_conv_backend("mkl", never, CPU, record)


def test_conv_backend_block_switches_onednn_and_restores_it():
    assert torch.backends.mkldnn.enabled
    with conv_backend("native"):
        assert not torch.backends.mkldnn.enabled
        with conv_backend("onednn"):
            assert torch.backends.mkldnn.enabled
        assert not torch.backends.mkldnn.enabled
    assert torch.backends.mkldnn.enabled


def test_channels_last_follows_the_kernels_unless_fixed():
    # auto: the layout is oneDNN's and cuDNN's fast path; the native CPU kernels get the checkpoint's own layout
    assert [uses_channels_last("auto", conv) for conv in ("onednn", "native", "cudnn", "mps")] == [
        True,
        False,
        True,
        True,
    ]
    assert uses_channels_last(True, "native") and not uses_channels_last(False, "onednn")
