"""Training speed and memory: each optimizer step's seconds and the run's peak memory."""

from __future__ import annotations

import statistics
import time

import torch


def peak_memory() -> dict:
    """Peak memory so far: torch.cuda.max_memory_allocated on a GPU, else the process's peak RSS."""
    if torch.cuda.is_available():
        return {"bytes": int(torch.cuda.max_memory_allocated()), "kind": "GPU max_memory_allocated"}
    import resource

    return {"bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "kind": "peak RSS"}


class StepTimer:
    """Training speed from the loop's hooks: each optimizer step is timed from `before_step` to
    `after_optimizer_step` (data, forward, backward, optimizer); evaluations in between are not counted,
    nor is anything before the first or after the last step. Peak memory is read after each step."""

    def __init__(self):
        self.first_step, self.start, self.step_start, self.end = None, 0.0, 0.0, 0.0
        self.steps: list[float] = []
        self.eval_seconds, self.memory = 0.0, None

    def before_step(self, step: int) -> None:
        self.step_start = time.perf_counter()
        if self.first_step is None:
            self.first_step, self.start = step, self.step_start

    def after_step(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # GPU work is asynchronous: count it in the step that launched it
        self.end = time.perf_counter()
        self.steps.append(self.end - self.step_start)
        self.memory = peak_memory()

    def summary(self, last_step: int) -> dict:
        seconds = self.end - self.start - self.eval_seconds if self.steps else 0.0
        return {
            "train_seconds": round(seconds, 3),
            "steps_per_second": round((last_step - self.first_step) / seconds, 3) if seconds > 0 else None,
            "median_step_seconds": statistics.median(self.steps) if self.steps else None,
            "train_peak_memory": self.memory,  # GPU max_memory_allocated, or peak RSS on the CPU
        }
