"""Run setup: the CPU convolution backend is chosen by timing, applied only inside its block."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from finetune.errors import UserError
from finetune.train.setup import conv_backend, cpu_conv_backend

CPU = SimpleNamespace(device=torch.device("cpu"), num_processes=1, print=lambda *a: None)


@pytest.mark.parametrize("slow", ["onednn", "native"])
def test_auto_keeps_the_faster_backend(slow):
    seen = []

    def probe():  # slower under `slow`'s kernels
        onednn = torch.backends.mkldnn.enabled
        seen.append(onednn)
        time.sleep(0.02 if (onednn == (slow == "onednn")) else 0.001)

    assert cpu_conv_backend("auto", probe, CPU) == ("native" if slow == "onednn" else "onednn")
    assert seen.count(True) == seen.count(False) == 3  # a warm-up and two timed runs under each
    assert torch.backends.mkldnn.enabled  # probing left the global switch as it was


def test_explicit_choices_are_taken_without_probing_and_gpus_are_left_alone():
    never = lambda: pytest.fail("probed")  # noqa: E731
    assert cpu_conv_backend("native", never, CPU) == "native"
    assert cpu_conv_backend("auto", never, SimpleNamespace(device=torch.device("cuda"), num_processes=1)) == "cudnn"
    with pytest.raises(UserError, match="auto, onednn, native"):
        cpu_conv_backend("mkl", never, CPU)


def test_conv_backend_block_switches_onednn_and_restores_it():
    assert torch.backends.mkldnn.enabled
    with conv_backend("native"):
        assert not torch.backends.mkldnn.enabled
        with conv_backend("onednn"):
            assert torch.backends.mkldnn.enabled
        assert not torch.backends.mkldnn.enabled
    assert torch.backends.mkldnn.enabled
