"""Image datasets for diffusion fine-tuning: caption folders, DreamBooth instance/class sets, aspect buckets.

No torchvision (it breaks transformers/diffusers here): images go PIL -> numpy -> torch by hand.

Every random choice an item makes (crop offset, flip) comes from a torch.Generator seeded by
(seed, epoch, index), never from the global RNG, so an item is the same whichever worker builds it and a resumed
run sees exactly the data the interrupted one would have seen. Call `set_epoch` on the dataset (and on a
`BucketBatchSampler`) at the start of every epoch; with DataLoader workers use persistent_workers=False so the
workers pick the new epoch up.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from finetune.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_EXIF_ORIENTATION = 0x0112  # orientations 5-8 rotate by 90 degrees, swapping width and height
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


# ---------------------------------------------------------------------------------------------
# Reading and transforming one image
# ---------------------------------------------------------------------------------------------


def open_image(path: str | Path) -> Image.Image:
    """Decode `path` to an 8-bit RGB PIL image, upright (EXIF orientation applied), transparency on white."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {path} does not exist; fix the file name or remove its caption/metadata entry")
    try:
        with Image.open(path) as img:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # in place: a 12 MP photo is 36 MB a copy
            return _to_rgb(img)
    except _READ_ERRORS as e:
        raise UserError(
            f"cannot read image {path} ({type(e).__name__}: {e}); re-export it or remove it from the folder"
        ) from e


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the upright image, from the header only (fast); unreadable files raise UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {path} does not exist; fix the file name or remove its caption/metadata entry")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
            return width, height
    except _READ_ERRORS as e:
        raise UserError(
            f"cannot read image {path} ({type(e).__name__}: {e}); re-export it or remove it from the folder"
        ) from e


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _high_bit_depth_to_l(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit ("I;16*", "I") grayscale -> 8-bit by /257; float ("F") in [0, 1] -> *255. PIL's own convert clips
    instead of scaling, which turns most 16-bit images white."""
    array = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        array = array * 255.0 if array.max(initial=0.0) <= 1.0 else array
    else:
        array = array / 257.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8))  # 2-D uint8 -> mode "L"


def check_resolution(resolution: int, multiple: int = 8) -> None:
    """SD's VAE downsamples by 8, so image sides must be multiples of 8."""
    if resolution <= 0 or resolution % multiple != 0:
        nearest = max(multiple, round(resolution / multiple) * multiple)
        raise UserError(f"resolution={resolution} is not a positive multiple of {multiple}; use e.g. {nearest}")


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator for one item's random choices, a pure function of (seed, epoch, index)."""
    return _keyed_generator(0, seed, epoch, index)


def _keyed_generator(*key: int) -> torch.Generator:
    """A torch.Generator seeded by numpy's SeedSequence hash of `key` (well mixed: nearby keys give unrelated streams)."""
    state = np.random.SeedSequence([int(k) % 2**64 for k in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def fit_and_crop(img: Image.Image, size: tuple[int, int], center_crop: bool, generator: torch.Generator) -> Image.Image:
    """Resize so the image covers `size` (w, h) (for a square size: shorter side = resolution), then crop to it."""
    return fit_and_crop_at(img, size, center_crop, generator)[0]


def fit_and_crop_at(
    img: Image.Image, size: tuple[int, int], center_crop: bool, generator: torch.Generator
) -> tuple[Image.Image, tuple[int, int], int]:
    """fit_and_crop, also returning the crop's (top, left) in the resized image and the resized width."""
    width, height = size
    scale = max(width / img.width, height / img.height)
    new_w, new_h = max(width, round(img.width * scale)), max(height, round(img.height * scale))
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    if center_crop:
        left, top = (new_w - width) // 2, (new_h - height) // 2
    else:
        left = int(torch.randint(0, new_w - width + 1, (1,), generator=generator))
        top = int(torch.randint(0, new_h - height + 1, (1,), generator=generator))
    return img.crop((left, top, left + width, top + height)), (top, left), new_w


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 CHW tensor in [-1, 1]."""
    array = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def transform_image(
    img: Image.Image, size: tuple[int, int], center_crop: bool, random_flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """fit_and_crop, then a horizontal flip with probability 1/2 if `random_flip`, then to [-1, 1]."""
    return transform_image_with_ids(img, size, center_crop, random_flip, generator)[0]


def transform_image_with_ids(
    img: Image.Image, size: tuple[int, int], center_crop: bool, random_flip: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """transform_image, plus SDXL's six added time ids of what was done: the original (h, w), the crop's (top, left)
    in the resized image and the target (h, w). A flip mirrors the crop's left edge, as the image SDXL sees is the
    crop of the mirrored picture (diffusers' SDXL script flips before cropping for the same reason)."""
    original = (img.height, img.width)
    img, (top, left), resized_w = fit_and_crop_at(img, size, center_crop, generator)
    if random_flip and float(torch.rand((1,), generator=generator)) < 0.5:
        img = ImageOps.mirror(img)
        left = resized_w - size[0] - left
    time_ids = torch.tensor([*original, top, left, size[1], size[0]], dtype=torch.float32)
    return image_to_tensor(img), time_ids


# ---------------------------------------------------------------------------------------------
# Finding images and captions
# ---------------------------------------------------------------------------------------------


@dataclass
class ImageRecord:
    path: Path  # the image file
    caption: str  # its caption ("" when it has none)
    size: tuple[int, int]  # (width, height) after EXIF orientation


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _check_folder(root: Path, what: str) -> None:
    if not root.is_dir():
        raise UserError(f"{what} folder {root} does not exist; create it and put the training images in it")


def list_images(root: str | Path, what: str = "image") -> list[Path]:
    """Image files directly in `root`, sorted; other files are skipped with one logged count."""
    root = Path(root)
    _check_folder(root, what)
    images = sorted(p for p in root.iterdir() if _is_image(p))
    _log_skipped(root)
    if not images:
        raise UserError(f"{what} folder {root} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); add some")
    return images


def _log_skipped(root: Path) -> None:
    """One warning counting the files that are neither images nor captions/metadata."""
    skipped = sorted(
        p.name
        for p in root.iterdir()
        if p.is_file() and not _is_image(p) and p.suffix.lower() not in (".txt", ".jsonl")
    )
    if skipped:
        logger.warning("%s: skipped %d non-image file(s), e.g. %s", root, len(skipped), skipped[0])


def scan_caption_folder(
    root: str | Path, caption_column: str = "text", cache_dir: str | None = None
) -> list[ImageRecord]:
    """Images with captions from metadata.jsonl (datasets' "imagefolder" layout) or same-name .txt files.

    A .txt caption without its image is skipped with a logged warning; images without a caption get "".
    """
    root = Path(root)
    _check_folder(root, "image")
    if (root / "metadata.jsonl").is_file():
        pairs = _pairs_from_metadata(root, caption_column, cache_dir)
    else:
        pairs = _pairs_from_txt(root)
    return [ImageRecord(path, caption, image_size(path)) for path, caption in pairs]


def _pairs_from_metadata(root: Path, caption_column: str, cache_dir: str | None) -> list[tuple[Path, str]]:
    import datasets

    try:
        ds = datasets.load_dataset("imagefolder", data_dir=str(root), split="train", cache_dir=cache_dir)
    except (ValueError, OSError, datasets.exceptions.DatasetGenerationError) as e:
        raise UserError(
            f"cannot read {root / 'metadata.jsonl'} ({type(e).__name__}: {e}); each line needs "
            f'{{"file_name": ..., "{caption_column}": ...}}'
        ) from e
    if caption_column not in ds.column_names:
        raise UserError(
            f"{root / 'metadata.jsonl'} has no {caption_column!r} field (fields: {ds.column_names}); "
            "rename it or set caption_column"
        )
    _log_skipped(root)
    ds = ds.cast_column("image", datasets.Image(decode=False))  # we decode ourselves: EXIF, 16-bit, alpha
    pairs = [(Path(row["image"]["path"]), row[caption_column] or "") for row in ds]
    listed = {p.resolve() for p, _ in pairs}
    unlisted = [p for p in root.iterdir() if _is_image(p) and p.resolve() not in listed]
    if unlisted:
        logger.warning(
            "%s: %d image(s) have no metadata.jsonl line and are not used, e.g. %s",
            root,
            len(unlisted),
            unlisted[0].name,
        )
    if not pairs:
        raise UserError(f"{root / 'metadata.jsonl'} lists no images; add lines or remove it to use .txt captions")
    return pairs


def _pairs_from_txt(root: Path) -> list[tuple[Path, str]]:
    images = list_images(root)
    stems = {p.stem for p in images}
    orphans = sorted(p.name for p in root.glob("*.txt") if p.stem not in stems)
    if orphans:
        logger.warning(
            "%s: skipped %d caption file(s) with no image of the same name, e.g. %s", root, len(orphans), orphans[0]
        )
    return [(p, _read_caption(p.with_suffix(".txt"))) for p in images]


def _read_caption(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip() if path.is_file() else ""


# ---------------------------------------------------------------------------------------------
# Aspect-ratio buckets
# ---------------------------------------------------------------------------------------------


def make_buckets(resolution: int, multiple: int = 64, max_aspect: float = 2.0) -> list[tuple[int, int]]:
    """(w, h) sizes, multiples of `multiple`, with area <= resolution^2 and as close to it as the grid allows."""
    area = resolution * resolution
    buckets = set()
    for width in range(multiple, int(resolution * max_aspect) + 1, multiple):
        height = area // width // multiple * multiple
        if height >= multiple and max(width / height, height / width) <= max_aspect:
            buckets.add((width, height))
    if not buckets:
        raise UserError(f"no aspect buckets fit resolution={resolution} with multiple={multiple}; raise the resolution")
    return sorted(buckets)


def assign_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is closest to the image's (in log space)."""
    ratio = math.log(size[0] / size[1])
    return min(range(len(buckets)), key=lambda i: (abs(math.log(buckets[i][0] / buckets[i][1]) - ratio), i))


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of indices that all share one bucket; order deterministic in (seed, epoch)."""

    def __init__(
        self, bucket_ids: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = False
    ):
        if batch_size <= 0:
            raise UserError(f"batch_size={batch_size} must be positive")
        self.bucket_ids, self.batch_size, self.seed = list(bucket_ids), batch_size, seed
        self.shuffle, self.drop_last, self.epoch = shuffle, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        generator = _keyed_generator(1, self.seed, self.epoch)  # tag 1: a stream apart from the items' (tag 0)
        batches = []
        for bucket in sorted(set(self.bucket_ids)):
            members = [i for i, b in enumerate(self.bucket_ids) if b == bucket]
            if self.shuffle:
                members = [members[j] for j in torch.randperm(len(members), generator=generator).tolist()]
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


class CaptionedImageFolder(torch.utils.data.Dataset):
    """Image-caption pairs from a folder, as [-1, 1] tensors at `resolution` (or at each image's bucket size).

    Items: {"pixel_values": (3, h, w) float tensor, "caption": str}. bucket_multiple (64 for SD, 8 for tiny models)
    turns on aspect-ratio buckets: pair the dataset with BucketBatchSampler(dataset.bucket_ids, ...). Caption dropout
    happens per batch (finetune.data.sd.make_collate), not here.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        center_crop: bool = True,
        random_flip: bool = False,
        seed: int = 0,
        bucket_multiple: int | None = None,
        caption_column: str = "text",
        cache_dir: str | None = None,
    ):
        check_resolution(resolution)
        self.records = scan_caption_folder(root, caption_column, cache_dir)
        self.center_crop, self.random_flip = center_crop, random_flip
        self.seed, self.epoch = seed, 0
        if bucket_multiple:
            self.buckets = make_buckets(resolution, bucket_multiple)
            self.bucket_ids = [assign_bucket(r.size, self.buckets) for r in self.records]
        else:
            self.buckets, self.bucket_ids = [(resolution, resolution)], [0] * len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        generator = item_generator(self.seed, self.epoch, index)
        size = self.buckets[self.bucket_ids[index]]
        pixels, time_ids = transform_image_with_ids(
            open_image(record.path), size, self.center_crop, self.random_flip, generator
        )
        return {"pixel_values": pixels, "caption": record.caption, "time_ids": time_ids}


class DreamBoothDataset(torch.utils.data.Dataset):
    """DreamBooth's instance images (with one instance prompt) and, for prior preservation, class images.

    Item i pairs instance image i % n_instance with class image i % n_class; the length is the larger count so
    every image is seen each epoch. Items: {"pixel_values", "prompt"} plus {"class_pixel_values", "class_prompt"}
    when a class folder is given. `class_items` (instead of class_dir + class_prompt) gives class images with a
    prompt each (several class prompts).
    """

    def __init__(
        self,
        instance_dir: str | Path,
        instance_prompt: str,
        resolution: int,
        class_dir: str | Path | None = None,
        class_prompt: str | None = None,
        center_crop: bool = True,
        random_flip: bool = False,
        seed: int = 0,
        class_items: Sequence[tuple[str | Path, str]] | None = None,
    ):
        check_resolution(resolution)
        if not instance_prompt.strip():
            raise UserError('instance_prompt is empty; use a rare identifier plus the class, e.g. "a photo of sks dog"')
        self.instance_images = list_images(instance_dir, "instance image")
        self.instance_prompt = instance_prompt
        self.class_images: list[Path] = []
        self.class_prompts: list[str] = []  # the prompt of each class image
        self.class_prompt = class_prompt
        if class_dir is not None:
            if not class_prompt:
                raise UserError(
                    'class_dir is set but class_prompt is empty; set it to the class alone, e.g. "a photo of a dog"'
                )
            self.class_images = list_images(class_dir, "class image")
            self.class_prompts = [class_prompt] * len(self.class_images)
        if class_items is not None:
            if class_dir is not None or not class_items:
                raise UserError(
                    "give class images either as class_dir + class_prompt or as (image, prompt) class_items, not both or none"
                )
            self.class_images = [Path(path) for path, _ in class_items]
            self.class_prompts = [prompt for _, prompt in class_items]
        for path in self.instance_images + self.class_images:
            image_size(path)  # fail now, not mid-training, on an unreadable file
        self.size = (resolution, resolution)
        self.center_crop, self.random_flip, self.seed, self.epoch = center_crop, random_flip, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(len(self.instance_images), len(self.class_images))

    def _pixels(self, path: Path, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return transform_image_with_ids(open_image(path), self.size, self.center_crop, self.random_flip, generator)

    def __getitem__(self, index: int) -> dict:
        generator = item_generator(self.seed, self.epoch, index)
        pixels, time_ids = self._pixels(self.instance_images[index % len(self.instance_images)], generator)
        item = {"pixel_values": pixels, "prompt": self.instance_prompt, "time_ids": time_ids}
        if self.class_images:
            pixels, time_ids = self._pixels(self.class_images[index % len(self.class_images)], generator)
            item |= {
                "class_pixel_values": pixels,
                "class_time_ids": time_ids,
                "class_prompt": self.class_prompt_of(index),
            }
        return item

    def class_prompt_of(self, index: int) -> str:
        """The class prompt paired with item `index`."""
        return self.class_prompts[index % len(self.class_prompts)]
