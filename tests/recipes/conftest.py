from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def shipped_precision() -> str:
    """The mixed precision the shipped accelerate_config.yaml sets (what `make demo` and users run under)."""
    return yaml.safe_load((ROOT / "accelerate_config.yaml").read_text())["mixed_precision"]


@pytest.fixture
def shipped_mixed_precision(monkeypatch):
    """Run a recipe in-process under the shipped config's precision, as `accelerate launch` would."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", shipped_precision())
    return shipped_precision()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process recipe run builds its own Accelerator (precision can differ between tests)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(params=["cpu", "cuda"])
def fp16(request, monkeypatch):
    """A recipe run under fp16 with a loss scale that starts high (1e6) and doubles every 2 steps, so overflowing
    (skipped) steps happen within a few steps. "cpu": accelerate's fp16 machinery, which it switches on only for
    accelerators (fp16 autocast + a GradScaler), switched on for the CPU, so the fp16 path runs here as on a GPU.
    "cuda": accelerate's own fp16 on a GPU (skipped without one; run it where a GPU is lent)."""
    import torch
    from accelerate import Accelerator

    import finetune.train.setup as setup

    device = request.param
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")

    class Fp16Accelerator(Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.native_amp = (
                True  # already so on a GPU; on the CPU: accelerator.autocast() -> torch.autocast("cpu", fp16)
            )
            self.scaler = torch.amp.GradScaler(device, init_scale=1e6, growth_interval=2)

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    monkeypatch.setattr(setup, "Accelerator", Fp16Accelerator)
    return device
