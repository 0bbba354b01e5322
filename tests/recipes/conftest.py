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
