"""A stand-in for the few `torchvision.transforms` names diffusers' DreamBooth scripts use, on PIL images.

torchvision has no CPU build for this machine and its PyPI wheel breaks `import transformers` / `import diffusers`
(see /work/shared/DESIGN.md), yet diffusers' examples/dreambooth/train_dreambooth_lora.py and
train_dreambooth_lora_sdxl.py import it for their image pipeline. These classes do what torchvision 0.2x does for
the calls those scripts make, all on PIL images (the scripts never pass tensors to them), written after
torchvision's own code paths (transforms.py / functional.py / _functional_pil.py):

- `Resize(size: int, interpolation)`: the shorter side becomes `size`, the longer `int(size * long / short)`; an
  image already that size is returned as is; otherwise `PIL.Image.resize` with the mode's PIL filter (antialias
  does not apply to PIL images: PIL's filters always antialias).
- `CenterCrop(size)`: zero-pads an image smaller than `size` (as torchvision does), then crops at
  `top = int(round((h - th) / 2))`, `left = int(round((w - tw) / 2))`.
- `RandomCrop(size)`: `get_params` draws `i` then `j` with `torch.randint(0, h - th + 1, (1,))` (the same draws
  from torch's generator as torchvision), or (0, 0, h, w) when the image is already the crop's size.
- `RandomHorizontalFlip(p)`: flips when `torch.rand(1) < p`.
- `ToTensor()`: HWC uint8 -> CHW float32 in [0, 1]; `Normalize(mean, std)`: `(x - mean) / std` per channel,
  on a copy.
- `Compose`, `InterpolationMode` (the same members and values) and `functional.crop` / `hflip` / `center_crop`
  / `resize`.

`install()` registers it as `torchvision`, `torchvision.transforms` and `torchvision.transforms.functional` in
sys.modules; call it only after transformers and diffusers are imported (benchmarks/script_launcher.py does), so
that their own "is torchvision installed" checks have already answered no.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Sequence
from enum import Enum

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "CenterCrop",
    "Compose",
    "InterpolationMode",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "ToTensor",
    "center_crop",
    "crop",
    "hflip",
    "install",
    "resize",
]


class InterpolationMode(Enum):
    """torchvision's names and values (the scripts list `dir(InterpolationMode)` as their --image_interpolation_mode
    choices and look the member up by upper-case name)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


# torchvision.transforms.functional.pil_modes_mapping: the PIL filter each mode resizes a PIL image with
PIL_FILTERS = {
    InterpolationMode.NEAREST: Image.Resampling.NEAREST,
    InterpolationMode.NEAREST_EXACT: Image.Resampling.NEAREST,
    InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
    InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
    InterpolationMode.BOX: Image.Resampling.BOX,
    InterpolationMode.HAMMING: Image.Resampling.HAMMING,
    InterpolationMode.LANCZOS: Image.Resampling.LANCZOS,
}


def _pil(img) -> Image.Image:
    if not isinstance(img, Image.Image):
        raise TypeError(f"this torchvision stand-in transforms PIL images only, got {type(img).__name__}")
    return img


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int or a 1- or 2-sequence, as torchvision's _setup_size."""
    if isinstance(size, int):
        return size, size
    if len(size) == 1:
        return size[0], size[0]
    return size[0], size[1]


def resized_size(height: int, width: int, size: int | Sequence[int]) -> tuple[int, int]:
    """(new_h, new_w) as torchvision's _compute_resized_output_size (no max_size): an int resizes the shorter side."""
    if not isinstance(size, int) and len(size) == 2:
        return size[0], size[1]
    requested = size if isinstance(size, int) else size[0]
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = requested, int(requested * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def resize(img, size, interpolation: InterpolationMode = InterpolationMode.BILINEAR) -> Image.Image:
    img = _pil(img)
    new_h, new_w = resized_size(img.height, img.width, size)
    if (new_h, new_w) == (img.height, img.width):
        return img
    return img.resize((new_w, new_h), PIL_FILTERS[InterpolationMode(interpolation)])


def crop(img, top: int, left: int, height: int, width: int) -> Image.Image:
    return _pil(img).crop((left, top, left + width, top + height))


def center_crop(img, output_size) -> Image.Image:
    img = _pil(img)
    crop_h, crop_w = _pair(output_size)
    if crop_w > img.width or crop_h > img.height:  # torchvision pads with zeros first
        pad_w, pad_h = max(crop_w - img.width, 0), max(crop_h - img.height, 0)
        img = ImageOps.expand(img, border=(pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2), fill=0)
        if (crop_w, crop_h) == img.size:
            return img
    top = int(round((img.height - crop_h) / 2.0))
    left = int(round((img.width - crop_w) / 2.0))
    return crop(img, top, left, crop_h, crop_w)


def hflip(img) -> Image.Image:
    return _pil(img).transpose(Image.Transpose.FLIP_LEFT_RIGHT)


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


class Resize:
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True):
        if max_size is not None:
            raise NotImplementedError("the torchvision stand-in has no max_size (diffusers' scripts never set it)")
        self.size, self.interpolation = size, InterpolationMode(interpolation)

    def __call__(self, img):
        return resize(img, self.size, self.interpolation)


class CenterCrop:
    def __init__(self, size):
        self.size = _pair(size)

    def __call__(self, img):
        return center_crop(img, self.size)


class RandomCrop:
    def __init__(self, size):
        self.size = _pair(size)

    @staticmethod
    def get_params(img, output_size) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a random crop, drawn from torch's generator exactly as torchvision does."""
        h, w = _pil(img).height, img.width
        th, tw = output_size
        if h < th or w < tw:
            raise ValueError(f"Required crop size {(th, tw)} is larger than input image size {(h, w)}")
        if w == tw and h == th:
            return 0, 0, h, w
        i = torch.randint(0, h - th + 1, size=(1,)).item()
        j = torch.randint(0, w - tw + 1, size=(1,)).item()
        return int(i), int(j), th, tw

    def __call__(self, img):
        return crop(img, *self.get_params(img, self.size))


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img):
        return hflip(img) if torch.rand(1) < self.p else img


class ToTensor:
    def __call__(self, pic) -> torch.Tensor:
        pic = _pil(pic)
        if pic.mode not in ("RGB", "RGBA", "L"):
            raise TypeError(f"the torchvision stand-in's ToTensor reads 8-bit L/RGB/RGBA images, got mode {pic.mode}")
        array = np.array(pic, np.uint8, copy=True).reshape(pic.height, pic.width, len(pic.getbands()))
        return torch.from_numpy(array).permute(2, 0, 1).contiguous().to(torch.get_default_dtype()).div(255)


class Normalize:
    def __init__(self, mean, std, inplace: bool = False):
        self.mean, self.std, self.inplace = mean, std, inplace

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.inplace:
            tensor = tensor.clone()
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        if (std == 0).any():
            raise ValueError(f"std evaluated to zero after conversion to {tensor.dtype}, leading to division by zero.")
        return tensor.sub_(mean).div_(std)


def install() -> None:
    """Register the stand-in as torchvision, torchvision.transforms and torchvision.transforms.functional."""
    functional = types.ModuleType("torchvision.transforms.functional")
    for name in ("InterpolationMode", "center_crop", "crop", "hflip", "resize"):
        setattr(functional, name, globals()[name])
    transforms = types.ModuleType("torchvision.transforms")
    for name in __all__:
        if name != "install":
            setattr(transforms, name, globals()[name])
    transforms.functional = functional  # type: ignore[attr-defined]
    package = types.ModuleType("torchvision")
    package.transforms = transforms  # type: ignore[attr-defined]
    package.__version__ = "0.0+finetune-standin"  # type: ignore[attr-defined]
    sys.modules.update(
        {"torchvision": package, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}
    )
