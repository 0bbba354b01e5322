"""Training speed and memory as the loop measures them: a step's seconds and the run's peak memory."""

from __future__ import annotations

import time

import torch


def synced_clock() -> float:
    """time.perf_counter() once the GPU's queued work is done: GPU work is asynchronous, so a step is only counted
    complete (and timed) when the kernels it launched have finished."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_memory() -> dict:
    """Peak memory so far: torch.cuda.max_memory_allocated on a GPU, else the process's peak RSS."""
    if torch.cuda.is_available():
        return {"bytes": int(torch.cuda.max_memory_allocated()), "kind": "GPU max_memory_allocated"}
    import resource

    return {"bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "kind": "peak RSS"}
