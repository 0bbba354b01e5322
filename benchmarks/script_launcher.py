"""Run a training script unmodified, as `python SCRIPT ARGS...` would, and record when each optimizer step ended.

    python benchmarks/script_launcher.py --record steps.json [--torchvision-standin] SCRIPT [ARGS...]

The same instrument times both sides of benchmarks/sd_dreambooth_lora.py (diffusers' own script and our recipe):
a global `torch.optim` step post-hook (torch.optim.optimizer.register_optimizer_step_post_hook, which fires after
every `Optimizer.step` of any optimizer) appends `time.perf_counter()` and the process's peak RSS so far. Nothing in
either script changes; the timestamps are taken at the same point of both loops (right after the weights moved),
so the interval between two consecutive ones is one whole training step as the user waits for it: data loading,
forward, backward, clipping, optimizer, logging and progress bar.

`--torchvision-standin` first imports transformers and diffusers (so their "is torchvision installed" checks answer
no, as on this machine) and then registers benchmarks/torchvision_standin.py as `torchvision`: diffusers' DreamBooth
scripts import `torchvision.transforms`, which cannot be installed here.

The record (JSON) is written when the script returns (or raises): {"step_ends": [...], "peak_rss_bytes": [...],
"started": <perf_counter when the launcher started>}, peak RSS read with resource.getrusage at each step end.
"""

from __future__ import annotations

import json
import resource
import runpy
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()


def prepare_standin() -> None:
    """Import transformers and diffusers while torchvision is absent, then register the stand-in."""
    import diffusers  # noqa: F401
    import transformers
    import transformers.utils.import_utils as tf_imports

    tf_imports.is_torchvision_available()  # lru_cached: answered now, while torchvision is still absent
    assert not transformers.utils.is_torchvision_available()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torchvision_standin

    torchvision_standin.install()


def record_steps(step_ends: list[float], peaks: list[int]) -> None:
    """After every optimizer step of any optimizer: the time and the peak RSS so far."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def hook(optimizer, args, kwargs) -> None:
        step_ends.append(time.perf_counter())
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    register_optimizer_step_post_hook(hook)


def main(argv: list[str]) -> None:
    record, standin = None, False
    while argv and argv[0].startswith("--"):
        flag = argv.pop(0)
        if flag == "--record":
            record = Path(argv.pop(0))
        elif flag == "--torchvision-standin":
            standin = True
        else:
            raise SystemExit(f"error: unknown launcher flag {flag}; use --record FILE and/or --torchvision-standin")
    if record is None or not argv:
        raise SystemExit("error: usage: script_launcher.py --record FILE [--torchvision-standin] SCRIPT [ARGS...]")
    if standin:
        prepare_standin()
    step_ends: list[float] = []
    peaks: list[int] = []
    record_steps(step_ends, peaks)
    script = Path(argv[0]).resolve()
    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.parent))  # what `python SCRIPT` puts first on the path
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        record.write_text(json.dumps({"started": STARTED, "step_ends": step_ends, "peak_rss_bytes": peaks}))


if __name__ == "__main__":
    main(sys.argv[1:])
