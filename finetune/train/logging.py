"""Run logging: `metrics.jsonl` (one JSON object per event), tensorboard when installed, and a
loss-curve PNG at the end. Only the main process writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

from finetune.io import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf
    return v


class MetricsLogger:
    def __init__(self, output_dir: str | Path, enabled: bool, tensorboard: bool = True):
        self.path = Path(output_dir) / METRICS_FILE
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def truncate_after(self, step: int, redo_eval: bool = False) -> None:
        """On resume: drop events a killed run logged after the checkpoint it resumes from (with `redo_eval`,
        also its evaluation at `step`, which the resumed run repeats)."""
        if not (self.enabled and self.path.is_file()):
            return

        def keep(r: dict) -> bool:
            at = r.get("step", 0)
            return at < step or (at == step and not (redo_eval and r.get("split") == "eval"))

        kept = [line for line in self.path.read_text().splitlines() if line.strip() and keep(json.loads(line))]
        atomic_write_bytes(self.path, "".join(line + "\n" for line in kept).encode())

    def log(self, step: int, split: str, **values) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: _clean(v) for k, v in values.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(output_dir: str | Path, keys: tuple[str, ...] = ("loss",)) -> Path | None:
    """Write `loss_curve.png`: every numeric `keys` series per split, against step."""
    records = read_metrics(output_dir)
    if not records:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    plotted = False
    for split in sorted({r["split"] for r in records}):
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if r["split"] == split and isinstance(r.get(key), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="." if len(pts) < 50 else None, label=f"{split} {key}")
                plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    out = Path(output_dir) / "loss_curve.png"
    atomic_write_bytes(out, buf.getvalue())
    return out
