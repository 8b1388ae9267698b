"""Shared test set-up."""
from __future__ import annotations

import pytest


def fresh_process() -> None:
    """Forget Accelerate's process-wide state, so the next run builds its Accelerator anew
    as a new process would."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state(monkeypatch):
    """A fresh Accelerate state per test, on the CPU even where a GPU is present."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    fresh_process()
    yield
    fresh_process()
