"""Stable Diffusion training data: the image set, latent and prompt caching, training items and their batches.

- `SDDataConfig` and `build_image_dataset`: the DreamBooth instance/class set or a captioned folder (finetune.data.images).
- Caching (`cache_latents`, `PromptEmbeddings`, SDXL's `XLPromptEmbeddings`): the frozen VAE's latent distribution
  of every image (with SDXL's time ids of the crop that made it) and the frozen text encoders' embeddings of every
  prompt, computed once before training. diffusers' examples run both encoders
  on every step; with them frozen that is repeated work, and skipping it is the recipe's main speed-up.
- `TrainItems` + `make_collate`: what the loop iterates, cached latents or live pixels, instance before class examples.
Written by hand: diffusers keeps these steps inline in its example scripts, not in the library.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from finetune.data.images import BucketBatchSampler, CaptionedImageFolder, DreamBoothDataset
from finetune.errors import UserError
from finetune.models.sd import encode_tokens, encode_xl, tokenize_prompts
from finetune.models.sd_denoiser import XLCond, xl_time_ids


@dataclass
class SDDataConfig:
    instance_dir: str = ""  # DreamBooth / textual inversion: folder with the subject's images
    instance_prompt: str = (
        ""  # DreamBooth: prompt with the identifier, e.g. "a photo of sks dog" (unused by textual inversion)
    )
    caption_dir: str = ""  # text-to-image LoRA/full: folder of images with metadata.jsonl or same-name .txt captions
    caption_column: str = "text"  # caption field of metadata.jsonl
    caption_dropout: float = 0.0  # probability of training on the empty prompt (enables classifier-free guidance)
    center_crop: bool = True  # crop the centre (else a random crop) after resizing the shorter side to the resolution
    random_flip: bool = False  # mirror images with probability 1/2 (drawn once per image when latents are cached)
    aspect_buckets: bool = False  # caption folders: batch images by aspect ratio instead of square crops


def validate_data(cfg: SDDataConfig, method: str) -> None:
    if bool(cfg.instance_dir) == bool(cfg.caption_dir):
        raise UserError(
            "set exactly one of data.instance_dir (DreamBooth / textual inversion) and data.caption_dir (captioned folder)"
        )
    if method == "textual_inversion" and not cfg.instance_dir:
        raise UserError(
            "method=textual_inversion trains on data.instance_dir (prompts come from templates); set it instead of data.caption_dir"
        )
    if cfg.instance_dir and method != "textual_inversion" and not cfg.instance_prompt.strip():
        raise UserError(
            'data.instance_prompt is empty; DreamBooth needs an identifier prompt, e.g. "a photo of sks dog"'
        )
    if not 0.0 <= cfg.caption_dropout < 1.0:
        raise UserError(f"data.caption_dropout must be in [0, 1), got {cfg.caption_dropout}")
    if cfg.aspect_buckets and not cfg.caption_dir:
        raise UserError("data.aspect_buckets only applies to data.caption_dir folders")


def build_image_dataset(
    cfg: SDDataConfig,
    resolution: int,
    seed: int,
    class_dir: str = "",
    class_prompt: str = "",
    bucket_multiple: int = 64,
    instance_prompt: str = "",
    class_items=None,
):
    """The raw image dataset (finetune.data.images); bad folders and unreadable images fail here, before training.

    `instance_prompt` overrides data.instance_prompt (textual inversion's fixed validation prompt); `class_items`,
    (image, prompt) pairs, replaces class_dir + class_prompt (several class prompts)."""
    if cfg.caption_dir:
        return CaptionedImageFolder(
            cfg.caption_dir,
            resolution,
            center_crop=cfg.center_crop,
            random_flip=cfg.random_flip,
            seed=seed,
            bucket_multiple=bucket_multiple if cfg.aspect_buckets else None,
            caption_column=cfg.caption_column,
        )
    return DreamBoothDataset(
        cfg.instance_dir,
        instance_prompt or cfg.instance_prompt,
        resolution,
        class_dir=class_dir or None,
        class_prompt=class_prompt or None,
        center_crop=cfg.center_crop,
        random_flip=cfg.random_flip,
        seed=seed,
        class_items=class_items,
    )


def dataset_items(dataset) -> list[dict]:
    """Per-item metadata, without pixels: {"prompt", "class_prompt"?, "bucket"}."""
    if isinstance(dataset, CaptionedImageFolder):
        return [{"prompt": r.caption, "bucket": b} for r, b in zip(dataset.records, dataset.bucket_ids)]
    items = [{"prompt": dataset.instance_prompt, "bucket": 0} for _ in range(len(dataset))]
    if dataset.class_images:
        for i, item in enumerate(items):
            item["class_prompt"] = dataset.class_prompt_of(i)
    return items


def image_sizes(dataset, items: list[dict]) -> list[list[int]]:
    """Distinct (width, height) training sizes: one square, or one per aspect bucket in use."""
    buckets = getattr(dataset, "buckets", None) or [dataset.size]
    return [list(size) for size in sorted({tuple(buckets[it["bucket"]]) for it in items})]


def epoch_batches(bucket_ids: list[int], batch_size: int, seed: int) -> Callable[[int], list[list[int]]]:
    """The loop's batches_fn for aspect buckets: every batch within one bucket, full batches only."""
    sampler = BucketBatchSampler(bucket_ids, batch_size, seed=seed, shuffle=True, drop_last=True)

    def batches(epoch: int) -> list[list[int]]:
        sampler.set_epoch(epoch)
        return list(sampler)

    return batches


def split_validation(n: int, holdout: int, loss_images: int, batch_size: int) -> tuple[list[int], list[int]]:
    """(training indices, validation-loss indices): the `holdout` last items, or the first training items."""
    train_idx = list(range(n - holdout))
    val_idx = list(range(len(train_idx) if holdout else 0, n))[:loss_images]
    if holdout < 0 or len(train_idx) < (batch_size if holdout else 1) or not val_idx:
        raise UserError(
            f"validation.holdout={holdout} / loss_images={loss_images} do not fit {n} images "
            f"with batch_size {batch_size}; lower them"
        )
    return train_idx, val_idx


# ---------------------------------------------------------------------------------------------
# Caching
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def cache_latents(
    vae, dataset, items: list[dict], device, batch_size: int = 8, dataset_indices: list[int] | None = None
) -> None:
    """Encode every item's image(s) once and store the latent distribution (mean, std) in `items`, on the CPU.

    items[k] belongs to dataset[dataset_indices[k]] (default: dataset[k]). Each step then samples
    latents = mean + std * eps, as diffusers' `latent_dist.sample()` would. Random crops and flips are drawn
    once (epoch 0), and their SDXL time ids ("time_ids": original size, crop, target size) are kept beside the
    latents they describe. Items of one bucket are encoded together.
    """
    dataset.set_epoch(0)
    dataset_indices = dataset_indices if dataset_indices is not None else list(range(len(items)))
    keys = [("pixel_values", "latent")] + (
        [("class_pixel_values", "class_latent")] if "class_prompt" in items[0] else []
    )
    order = sorted(range(len(items)), key=lambda i: items[i]["bucket"])
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        chunk_groups: dict[int, list[int]] = {}
        for i in chunk:
            chunk_groups.setdefault(items[i]["bucket"], []).append(i)
        for group in chunk_groups.values():
            examples = [dataset[dataset_indices[i]] for i in group]
            for pixel_key, name in keys:
                pixels = torch.stack([e[pixel_key] for e in examples]).to(device, vae.dtype)
                dist = vae.encode(pixels).latent_dist
                ids_key = pixel_key.replace("pixel_values", "time_ids")
                for i, e, mean, std in zip(group, examples, dist.mean.float().cpu(), dist.std.float().cpu()):
                    items[i][f"{name}_mean"], items[i][f"{name}_std"] = mean.clone(), std.clone()
                    items[i][ids_key] = e[ids_key]


def cache_all_latents(
    vae, dataset, items: list[dict], val_idx: list[int], device, every_item: bool, batch_size: int = 8
) -> list[dict]:
    """Cache every item's latents (`every_item`), or only the validation items' (on copies, so training still
    encodes live); returns the validation items. The recipe passes its training batch size: encoding more images at
    once than a step trains on would make the VAE's activations (GBs for SD at 512 px) the run's memory peak."""
    if every_item:
        cache_latents(vae, dataset, items, device, batch_size=batch_size)
        return [items[i] for i in val_idx]
    val_items = [dict(items[i]) for i in val_idx]
    cache_latents(vae, dataset, val_items, device, batch_size=batch_size, dataset_indices=val_idx)
    return val_items


class PromptEmbeddings:
    """Frozen text-encoder outputs for a fixed set of prompts, computed once (CPU copies, `dtype`)."""

    def __init__(self, text_encoder, tokenizer, prompts: list[str], device, dtype=torch.float32, batch_size: int = 16):
        unique = sorted(set(prompts))
        self.table: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for start in range(0, len(unique), batch_size):
                chunk = unique[start : start + batch_size]
                for prompt, emb in zip(chunk, encode_tokens(text_encoder, tokenizer, chunk, device)):
                    self.table[prompt] = emb.to("cpu", dtype).clone()

    def __call__(self, prompts: list[str], time_ids: torch.Tensor | None = None) -> torch.Tensor:
        return torch.stack([self.table[p] for p in prompts])  # SD1.x/2.x: no time ids


class XLPromptEmbeddings:
    """SDXL's frozen text conditioning for a fixed set of prompts, computed once: both encoders' penultimate hidden
    states side by side and the pooled embedding of the second (`finetune.models.sd.encode_xl`), CPU copies."""

    def __init__(self, text_encoders, tokenizers, prompts: list[str], device, dtype, resolution: int, batch_size=16):
        unique = sorted(set(prompts))
        self.resolution = resolution  # time ids of an uncropped square image, for calls without any
        self.table: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.no_grad():
            for start in range(0, len(unique), batch_size):
                chunk = unique[start : start + batch_size]
                ids = [tokenize_prompts(tok, chunk).to(device) for tok in tokenizers]
                embeds, pooled = encode_xl(text_encoders, ids)
                for prompt, e, p in zip(chunk, embeds, pooled):
                    self.table[prompt] = (e.to("cpu", dtype).clone(), p.to("cpu", dtype).clone())

    def __call__(self, prompts: list[str], time_ids: torch.Tensor | None = None) -> XLCond:
        time_ids = time_ids if time_ids is not None else xl_time_ids(self.resolution, len(prompts))
        embeds = torch.stack([self.table[p][0] for p in prompts])
        return XLCond(time_ids, embeds=embeds, pooled=torch.stack([self.table[p][1] for p in prompts]))


# ---------------------------------------------------------------------------------------------
# Training items and batches
# ---------------------------------------------------------------------------------------------


class TrainItems(torch.utils.data.Dataset):
    """Training items: cached latent statistics when present, else the raw dataset's pixels, plus prompts."""

    def __init__(self, dataset, items: list[dict], indices: list[int]):
        self.dataset, self.items, self.indices = dataset, items, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        item = self.items[self.indices[i]]
        if "latent_mean" in item:
            return item
        return {**item, **self.dataset[self.indices[i]]}


def make_collate(
    tokenizer,
    embeddings: PromptEmbeddings | XLPromptEmbeddings | None,
    prompt_fn: Callable[[str], str] | None = None,
    caption_dropout: float = 0.0,
    tokenizer_2=None,
):
    """Collate training items into one batch: instance examples first, then class examples.

    Batch keys: "latent_mean"/"latent_std" (cached) or "pixel_values"; "embeds" (cached text) or "input_ids";
    "num_instance". SDXL (`tokenizer_2` or XLPromptEmbeddings) adds "time_ids" and "pooled" (cached) or
    "input_ids_2". `prompt_fn` rewrites a prompt per example (textual-inversion templates); caption dropout
    replaces prompts with "". Both draw from Python's `random`, which accelerate's checkpoints restore.
    """

    xl = tokenizer_2 is not None or isinstance(embeddings, XLPromptEmbeddings)

    def prompts_of(examples: list[dict], key: str) -> list[str]:
        prompts = [e[key] for e in examples]
        if prompt_fn is not None:
            prompts = [prompt_fn(p) for p in prompts]
        if caption_dropout > 0:
            prompts = ["" if random.random() < caption_dropout else p for p in prompts]
        return prompts

    def collate(examples: list[dict]) -> dict:
        prior = "class_prompt" in examples[0]
        prompts = prompts_of(examples, "prompt") + (prompts_of(examples, "class_prompt") if prior else [])
        batch: dict = {"num_instance": len(examples)}
        if "latent_mean" in examples[0]:
            for stat in ("mean", "std"):
                batch[f"latent_{stat}"] = torch.stack(
                    [e[f"latent_{stat}"] for e in examples]
                    + ([e[f"class_latent_{stat}"] for e in examples] if prior else [])
                )
        else:
            batch["pixel_values"] = torch.stack(
                [e["pixel_values"] for e in examples] + ([e["class_pixel_values"] for e in examples] if prior else [])
            )
        if xl:
            batch["time_ids"] = torch.stack(
                [e["time_ids"] for e in examples] + ([e["class_time_ids"] for e in examples] if prior else [])
            )
        if isinstance(embeddings, XLPromptEmbeddings):
            cond = embeddings(prompts)
            batch["embeds"], batch["pooled"] = cond.embeds, cond.pooled
        elif embeddings is not None:
            batch["embeds"] = embeddings(prompts)
        else:
            batch["input_ids"] = tokenize_prompts(tokenizer, prompts)
            if tokenizer_2 is not None:
                batch["input_ids_2"] = tokenize_prompts(tokenizer_2, prompts)
        return batch

    return collate


def fixed_validation_batches(items: list[dict], noise_scheduler, seed: int) -> list[dict]:
    """The items' latent means with timesteps spread over the schedule and noise from `seed` (fixed forever),
    as one batch per latent shape (aspect buckets)."""
    g = torch.Generator().manual_seed(seed)
    steps = noise_scheduler.config.num_train_timesteps
    timesteps = torch.linspace(0, steps - 1, len(items) + 2)[1:-1].round().long()
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(tuple(item["latent_mean"].shape), []).append(i)
    batches = []
    for indices in groups.values():
        means = torch.stack([items[i]["latent_mean"] for i in indices])
        batch = {
            "latent_mean": means,
            "noise": torch.randn(means.shape, generator=g),
            "timesteps": timesteps[indices],
            "prompts": [items[i]["prompt"] for i in indices],
        }
        if all("time_ids" in items[i] for i in indices):  # SDXL conditions on them
            batch["time_ids"] = torch.stack([items[i]["time_ids"] for i in indices])
        batches.append(batch)
    return batches
