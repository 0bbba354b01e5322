"""DreamBooth's prior preservation (Ruiz et al. 2023): class images and the weighted class-prior loss.

DreamBooth itself is not a separate training method here: it is LoRA or full fine-tuning on instance images
with an instance prompt ("a photo of sks dog"), plus, when `prior.enabled`, a second half of every batch of
class images ("a photo of a dog") whose loss, weighted by `prior.loss_weight`, keeps the model's idea of the
class from drifting (`finetune.losses.diffusion.prior_preservation_loss`). This module owns that config and
`ensure_class_images`, which tops the class folder up with images from the base pipeline when it holds fewer
than `num_class_images` (each image written atomically, so an interrupted run leaves only whole files and the
next run reuses them).

A class may need several prompts (a class of digits: "a drawing of the digit zero" ... "nine"): with
`prior.class_prompts` every prompt gets `num_class_images` base-model images of its own, cached in class_dir under
names that carry a hash of their prompt (`class-<sha1[:8]>-<k>.png`), and each class image trains with the prompt
that made it (`class_image_prompts`). Changing the list reuses the images of the prompts that stay.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from finetune.data.images import IMAGE_EXTENSIONS
from finetune.errors import UserError
from finetune.io import atomic_write_bytes

logger = logging.getLogger(__name__)


@dataclass
class PriorConfig:
    enabled: bool = False  # DreamBooth prior preservation: also train on class images with the class prompt
    class_dir: str = ""  # folder of class images; topped up with base-model samples when short (kept for reuse)
    class_prompt: str = ""  # the class alone, without the identifier, e.g. "a photo of a dog"
    class_prompts: list[str] = field(
        default_factory=list
    )  # instead of class_prompt: several class prompts, num_class_images EACH, every image trained with its own prompt
    num_class_images: int = (
        100  # class images wanted in class_dir, per prompt (the paper uses 200-300 per instance set)
    )
    loss_weight: float = 1.0  # lambda in loss = instance loss + lambda * prior loss
    sample_steps: int = 25  # denoising steps when generating class images
    guidance_scale: float = 7.5  # classifier-free guidance when generating class images
    sample_batch_size: int = 4  # class images generated per pipeline call


def validate_prior(cfg: PriorConfig) -> None:
    if not cfg.enabled:
        return
    if not cfg.class_dir:
        raise UserError(
            "prior.enabled=true needs prior.class_dir (a folder for class images; it is created and filled if empty)"
        )
    if cfg.class_prompt.strip() and cfg.class_prompts:
        raise UserError("set prior.class_prompt (one class prompt) or prior.class_prompts (several), not both")
    if cfg.class_prompts:
        if any(not str(p).strip() for p in cfg.class_prompts):
            raise UserError(f"prior.class_prompts has an empty prompt: {cfg.class_prompts}")
        if len(set(cfg.class_prompts)) != len(cfg.class_prompts):
            raise UserError(f"prior.class_prompts lists a prompt twice: {cfg.class_prompts}")
    elif not cfg.class_prompt.strip():
        raise UserError(
            'prior.enabled=true needs prior.class_prompt, the class without the identifier, e.g. "a photo of a dog" '
            "(or prior.class_prompts, a list of several)"
        )
    if cfg.num_class_images < 1:
        raise UserError(f"prior.num_class_images must be >= 1, got {cfg.num_class_images}")
    if cfg.loss_weight < 0:
        raise UserError(f"prior.loss_weight must be >= 0, got {cfg.loss_weight}")
    if cfg.sample_steps < 1 or cfg.sample_batch_size < 1:
        raise UserError("prior.sample_steps and prior.sample_batch_size must be >= 1")


def count_class_images(class_dir: str | Path) -> int:
    root = Path(class_dir)
    if not root.is_dir():
        return 0
    return sum(
        1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def prompt_tag(prompt: str) -> str:
    """The prompt's mark in its class images' file names (first 8 hex digits of its SHA-1)."""
    return hashlib.sha1(prompt.encode()).hexdigest()[:8]


def _images_of_prompt(class_dir: str | Path, prompt: str) -> list[Path]:
    """The images generated for `prompt` in class_dir (named class-<tag>-<k>.png, or x-prefixed ones: _free_name)."""
    root, prefix = Path(class_dir), f"class-{prompt_tag(prompt)}-"
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.name.lstrip("x").startswith(prefix)
    )


def ensure_class_images(pipeline, cfg: PriorConfig, resolution: int, seed: int, autocast=None) -> int:
    """Generate class images with `pipeline` (the base model) until class_dir holds num_class_images (per prompt,
    with class_prompts); returns how many were made. Image k of a prompt is sampled from seed + k, so a topped-up
    folder equals a freshly made one, whatever the order of the prompts."""
    if not cfg.class_prompts:
        return _top_up(pipeline, cfg, cfg.class_prompt, count_class_images(cfg.class_dir), resolution, seed, autocast)
    return sum(
        _top_up(pipeline, cfg, prompt, len(_images_of_prompt(cfg.class_dir, prompt)), resolution, seed, autocast)
        for prompt in cfg.class_prompts
    )


def class_image_prompts(cfg: PriorConfig) -> list[tuple[Path, str]]:
    """(class image, its prompt) for training: with class_prompts, the first num_class_images images of each prompt
    (images of prompts no longer listed are left out, with a warning); else every image in class_dir, with
    class_prompt."""
    if not cfg.class_prompts:
        from finetune.data.images import list_images

        return [(path, cfg.class_prompt) for path in list_images(cfg.class_dir, "class image")]
    pairs = [
        (path, prompt)
        for prompt in cfg.class_prompts
        for path in _images_of_prompt(cfg.class_dir, prompt)[: cfg.num_class_images]
    ]
    ignored = count_class_images(cfg.class_dir) - sum(
        len(_images_of_prompt(cfg.class_dir, p)) for p in cfg.class_prompts
    )
    if ignored:
        logger.warning(
            "prior preservation: %d image(s) in %s belong to none of prior.class_prompts; not used",
            ignored,
            cfg.class_dir,
        )
    return pairs


def _top_up(pipeline, cfg: PriorConfig, prompt: str, have: int, resolution: int, seed: int, autocast) -> int:
    missing = cfg.num_class_images - have
    if missing <= 0:
        return 0
    root = Path(cfg.class_dir)
    root.mkdir(parents=True, exist_ok=True)
    tag = prompt_tag(prompt)
    logger.warning("prior preservation: generating %d class image(s) for %r into %s", missing, prompt, root)
    made = 0
    device = pipeline.device
    for start in range(have, cfg.num_class_images, cfg.sample_batch_size):
        indices = list(range(start, min(start + cfg.sample_batch_size, cfg.num_class_images)))
        generators = [torch.Generator(device=device).manual_seed(seed + k) for k in indices]
        with torch.no_grad(), autocast() if autocast else _nullcontext():
            images = pipeline(
                [prompt] * len(indices),
                num_inference_steps=cfg.sample_steps,
                guidance_scale=cfg.guidance_scale,
                height=resolution,
                width=resolution,
                generator=generators,
            ).images
        for k, image in zip(indices, images):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            atomic_write_bytes(_free_name(root, f"class-{tag}-{k:05d}.png"), buf.getvalue())
            made += 1
    return made


def _free_name(root: Path, name: str) -> Path:
    path = root / name
    while path.exists():  # never overwrite a user's own class image
        path = path.with_name("x" + path.name)
    return path


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()
