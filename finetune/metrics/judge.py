"""The digits judge: a small CNN that classifies generated digits and embeds them for FID/KID.

Inception-v3 is the usual judge for FID and IS, but it is a hub download and knows nothing of 8x8
handwriting. The offline quality world uses this instead: a ~50k-parameter CNN trained on the train
split of scikit-learn's digits (scripts/train_digits_judge.py) and shipped in data/digits_judge/ as
model.safetensors + config.json. It accepts images the way the toolkit generates them
(N x 3 x H x W in [-1, 1], any H, W >= 8) and resizes them to its own input size inside.

    judge = load_judge()
    judge.predict(images)   # LongTensor of digit classes
    judge.probs(images)     # N x 10 softmax, for the Inception Score
    judge.features(images)  # N x 64 penultimate pre-activations, for FID / KID
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from finetune.errors import UserError
from finetune.io import atomic_dir, atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:  # only the name: the digits themselves load on first use (reference_features)
    from finetune.data.digits import Split

DEFAULT_JUDGE_DIR = Path(__file__).resolve().parents[2] / "data" / "digits_judge"
ARCH_NAME = "digits_cnn"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
RANGE_TOLERANCE = 0.5  # images may overshoot [-1, 1] a little (sampler noise), not by more


@dataclass
class JudgeConfig:
    input_size: int = 16  # side of the square grey image the CNN sees; inputs are resized to it
    channels: list[int] = field(default_factory=lambda: [16, 32])  # conv widths, one 2x-pooled stage each
    feature_dim: int = 64  # width of the penultimate layer, the FID/KID feature space
    num_classes: int = 10  # digit classes 0..9
    dropout: float = 0.2  # dropout before the classifier head, active only in training
    pixel_mean: float = 0.0  # grey value subtracted after resizing (measured on the train split)
    pixel_std: float = 1.0  # grey-value scale divided after subtracting pixel_mean


class DigitsCNN(nn.Module):
    """Conv stages (conv-relu-conv-relu-maxpool), a `feature_dim` hidden layer, a linear head."""

    def __init__(self, cfg: JudgeConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, side = 1, cfg.input_size
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            c_in, side = c, side // 2
        self.stages = nn.Sequential(*layers)
        self.hidden = nn.Linear(c_in * side * side, cfg.feature_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate layer before its ReLU, N x feature_dim.

        Pre-activations, not post-ReLU values: ReLU leaves some units at 0 on every digit, which makes
        the FID covariance singular, and pre-activations are closer to the Gaussian FID assumes.
        """
        return self.hidden(self.stages(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, N x num_classes."""
        return self.head(self.dropout(F.relu(self.features(x))))


def check_images(images: torch.Tensor) -> None:
    """Raise UserError unless `images` is a float N x C x H x W batch (C 1 or 3, H, W >= 8) in [-1, 1]."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise UserError(f"judge expects images as an N x 3 x H x W tensor, got {shape}")
    n, c, h, w = images.shape
    if c not in (1, 3) or h < 8 or w < 8 or n == 0:
        raise UserError(
            f"judge expects N >= 1 images of 1 or 3 channels and H, W >= 8, got shape {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise UserError(f"judge expects float images in [-1, 1], got dtype {images.dtype}; use x / 127.5 - 1 for uint8")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise UserError(f"judge expects images in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]; rescale them first")


class DigitsJudge:
    """A trained DigitsCNN with its preprocessing; outputs are CPU tensors, computed without grad."""

    def __init__(self, model: DigitsCNN, config: JudgeConfig, info: dict | None = None, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.config = config
        self.info = info or {}  # what config.json records beyond the architecture (accuracy, training)
        self.device = torch.device(device)
        self._reference_cache: dict[tuple, torch.Tensor] = {}

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """N x C x H x W in [-1, 1] -> normalised N x 1 x s x s grey input of the CNN."""
        check_images(images)
        x = images.to(self.device, torch.float32).clamp(-1, 1).mean(dim=1, keepdim=True)
        s = self.config.input_size
        if x.shape[-2:] != (s, s):
            # antialias so that downsampling a large render averages its pixels instead of aliasing
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.config.pixel_mean) / self.config.pixel_std

    @torch.no_grad()
    def _batched(self, images: torch.Tensor, fn, batch_size: int) -> torch.Tensor:
        check_images(images)
        starts = range(0, len(images), batch_size)
        return torch.cat([fn(self.prepare(images[i : i + batch_size])).float().cpu() for i in starts])

    def features(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Penultimate-layer features, N x feature_dim (the FID/KID embedding)."""
        return self._batched(images, self.model.features, batch_size)

    def logits(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Class logits, N x 10."""
        return self._batched(images, self.model, batch_size)

    def probs(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Class probabilities (softmax), N x 10."""
        return self.logits(images, batch_size).softmax(dim=-1)

    def predict(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Most likely digit class per image, LongTensor of N."""
        return self.logits(images, batch_size).argmax(dim=-1)

    def reference_features(self, split: Split = "test", size: int | None = None, seed: int = 0) -> torch.Tensor:
        """Features of the real digits of `split` rendered at `size` px (cached on this judge).

        Rendering real digits at the generated images' size puts them through the same resize as the
        generated ones, so a perfect generator scores only sampling noise.
        """
        from finetune.data.digits import load_digits_images

        key = (split, int(size or self.config.input_size), seed)
        if key not in self._reference_cache:
            images, _ = load_digits_images(size=key[1], split=split, seed=seed)
            self._reference_cache[key] = self.features(images)
        return self._reference_cache[key]


def save_judge(out_dir: str | Path, model: DigitsCNN, config: JudgeConfig, info: dict) -> Path:
    """Write model.safetensors + config.json to `out_dir` atomically; `info` holds measurements."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    doc = {"arch": ARCH_NAME, "format_version": FORMAT_VERSION, "config": dataclasses.asdict(config), **info}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        atomic_write_bytes(tmp / WEIGHTS_FILE, save(tensors, metadata={"format": "pt", "arch": ARCH_NAME}))
        atomic_write_json(tmp / CONFIG_FILE, doc)
    return out_dir


def _read_config(path: Path) -> tuple[JudgeConfig, dict]:
    doc = json.loads((path / CONFIG_FILE).read_text())
    if doc.get("arch") != ARCH_NAME or doc.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path / CONFIG_FILE} is not a digits judge (arch {doc.get('arch')!r}); "
            "rebuild it with scripts/train_digits_judge.py"
        )
    known = {f.name for f in dataclasses.fields(JudgeConfig)}
    unknown = set(doc["config"]) - known
    if unknown:
        raise UserError(
            f"{path / CONFIG_FILE} has unknown judge config keys {sorted(unknown)}; "
            "rebuild it with scripts/train_digits_judge.py"
        )
    info = {k: v for k, v in doc.items() if k not in ("arch", "format_version", "config")}
    return JudgeConfig(**doc["config"]), info


def load_judge(path: str | Path | None = None, device: str = "cpu") -> DigitsJudge:
    """Load a judge directory (default: the shipped data/digits_judge) onto `device`."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_JUDGE_DIR
    if not (path / WEIGHTS_FILE).is_file() or not (path / CONFIG_FILE).is_file():
        raise UserError(
            f"no digits judge at {path} (need {WEIGHTS_FILE} and {CONFIG_FILE}); "
            "build one with scripts/train_digits_judge.py"
        )
    config, info = _read_config(path)
    model = DigitsCNN(config)
    model.load_state_dict(load_file(path / WEIGHTS_FILE), strict=True)
    return DigitsJudge(model, config, info, device)
