import pytest


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process recipe run builds its own Accelerator (precision can differ between tests)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def cpu_fp16(monkeypatch):
    """accelerate's fp16 machinery, which it switches on only for accelerators (fp16 autocast + a GradScaler), switched
    on for the CPU, so the recipes' fp16 path runs here as it does on a GPU. The scale starts high and doubles every 2
    steps, so overflowing (skipped) steps happen within a few steps."""
    import torch
    from accelerate import Accelerator

    import finetune.train.setup as setup

    class CPUFp16Accelerator(Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.native_amp = True  # accelerator.autocast() -> torch.autocast("cpu", torch.float16)
            self.scaler = torch.amp.GradScaler("cpu", init_scale=1e6, growth_interval=2)

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    monkeypatch.setattr(setup, "Accelerator", CPUFp16Accelerator)
