"""Stable Diffusion training pieces shared by its methods (LoRA, full, textual inversion, DreamBooth's prior).

What `recipes/train_sd.py` needs besides the methods themselves:

- `SDDataConfig` and `build_image_dataset`: the DreamBooth instance/class set or a captioned folder (finetune.data.images).
- `SDDenoiser`: the trainable modules in ONE nn.Module (UNet, plus the text encoder when it runs during
  training) so accelerate/DDP wrap, sync and accumulate them as one model; its forward takes token ids (text
  encoder runs) or cached embeddings.
- Caching (`cache_latents`, `PromptEmbeddings`): the frozen VAE's latent distribution of every image and the
  frozen text encoder's embedding of every prompt, computed once before training. diffusers' examples run both
  encoders on every step; with them frozen that is repeated work, and skipping it is the recipe's main speed-up.
- Validation: a fixed-noise, fixed-timestep loss on fixed latents (comparable across steps) and image samples
  from fixed seeds.
Written by hand: diffusers keeps these steps inline in its example scripts, not in the library.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import torch

from finetune.data.images import BucketBatchSampler, CaptionedImageFolder, DreamBoothDataset
from finetune.errors import UserError


@dataclass
class SDDataConfig:
    instance_dir: str = ""  # DreamBooth / textual inversion: folder with the subject's images
    instance_prompt: str = ""  # DreamBooth: prompt with the identifier, e.g. "a photo of sks dog" (unused by textual inversion)
    caption_dir: str = ""  # text-to-image LoRA/full: folder of images with metadata.jsonl or same-name .txt captions
    caption_column: str = "text"  # caption field of metadata.jsonl
    caption_dropout: float = 0.0  # probability of training on the empty prompt (enables classifier-free guidance)
    center_crop: bool = True  # crop the centre (else a random crop) after resizing the shorter side to the resolution
    random_flip: bool = False  # mirror images with probability 1/2 (drawn once per image when latents are cached)
    aspect_buckets: bool = False  # caption folders: batch images by aspect ratio instead of square crops


@dataclass
class ValidationConfig:
    prompts: list[str] = field(default_factory=list)  # prompts of the sample grids (at train.eval_every and the end); [] = the instance prompt / first captions
    num_images: int = 1  # images per prompt in each grid
    steps: int = 20  # denoising steps per validation image
    guidance_scale: float = 7.5  # classifier-free guidance of validation images
    seed: int = 1234  # seed of the validation noise (images and loss): the same every time
    loss_images: int = 4  # training (or held-out) images in the fixed-noise validation loss
    holdout: int = 0  # caption folders: keep the last N images out of training and use them for the validation loss
    grids: bool = True  # write sample grids (samples/step-N.png, before_after.png); false: validation loss only


@dataclass
class TextEncoderConfig:
    train: bool = False  # also train the text encoder: its LoRA for method=lora, all its weights for method=full
    lr: Optional[float] = None  # its learning rate (None: optim.lr)
    stop_step: int = 0  # freeze it again after this many optimizer steps (0: trains to the end)


@dataclass
class LossConfig:
    snr_gamma: float = 0.0  # min-SNR-gamma loss weights (5.0 is the paper's choice); 0 disables
    noise_offset: float = 0.0  # offset-noise strength (0.05-0.1 lets the model learn very dark/bright images); 0 disables


@dataclass
class EfficiencyConfig:
    cache_latents: bool = True  # encode every image with the frozen VAE once, before training (augmentations drawn once)
    cache_text: bool = True  # encode every prompt once when the text encoder does not train
    offload_frozen: bool = True  # on GPUs, keep the cached-away VAE / text encoder in CPU memory (moved back to sample)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, slower steps
    attention: Literal["sdpa", "classic"] = "sdpa"  # torch scaled_dot_product_attention, or diffusers' plain attention
    vae_fp32: bool = True  # keep the VAE in fp32 under mixed precision (SD1's VAE overflows in fp16)
    channels_last: bool = True  # UNet weights and activations in channels-last layout (oneDNN's and cuDNN's fast path)
    conv_backend: Literal["auto", "onednn", "native"] = "auto"  # CPU convolution kernels; auto times one step under each
    #                                                             (kept in conv_backend.json, reused on resume)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def validate_data(cfg: SDDataConfig, method: str) -> None:
    if bool(cfg.instance_dir) == bool(cfg.caption_dir):
        raise UserError("set exactly one of data.instance_dir (DreamBooth / textual inversion) and data.caption_dir (captioned folder)")
    if method == "textual_inversion" and not cfg.instance_dir:
        raise UserError("method=textual_inversion trains on data.instance_dir (prompts come from templates); set it instead of data.caption_dir")
    if cfg.instance_dir and method != "textual_inversion" and not cfg.instance_prompt.strip():
        raise UserError('data.instance_prompt is empty; DreamBooth needs an identifier prompt, e.g. "a photo of sks dog"')
    if not 0.0 <= cfg.caption_dropout < 1.0:
        raise UserError(f"data.caption_dropout must be in [0, 1), got {cfg.caption_dropout}")
    if cfg.aspect_buckets and not cfg.caption_dir:
        raise UserError("data.aspect_buckets only applies to data.caption_dir folders")


def build_image_dataset(cfg: SDDataConfig, resolution: int, seed: int, class_dir: str = "", class_prompt: str = "",
                        bucket_multiple: int = 64, instance_prompt: str = "", class_items=None):
    """The raw image dataset (finetune.data.images); bad folders and unreadable images fail here, before training.

    `instance_prompt` overrides data.instance_prompt (textual inversion's fixed validation prompt); `class_items`,
    (image, prompt) pairs, replaces class_dir + class_prompt (several class prompts)."""
    if cfg.caption_dir:
        return CaptionedImageFolder(
            cfg.caption_dir, resolution, center_crop=cfg.center_crop, random_flip=cfg.random_flip, seed=seed,
            bucket_multiple=bucket_multiple if cfg.aspect_buckets else None, caption_column=cfg.caption_column,
        )
    return DreamBoothDataset(
        cfg.instance_dir, instance_prompt or cfg.instance_prompt, resolution,
        class_dir=class_dir or None, class_prompt=class_prompt or None,
        center_crop=cfg.center_crop, random_flip=cfg.random_flip, seed=seed, class_items=class_items,
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


# ---------------------------------------------------------------------------------------------
# The trainable model
# ---------------------------------------------------------------------------------------------


class SDDenoiser(torch.nn.Module):
    """UNet (+ the text encoder, when it runs in the step) as one module: `forward(noisy, t, cond)` -> prediction.

    `cond` is token ids (long: the text encoder runs, so it can train) or precomputed embeddings (float).
    """

    def __init__(self, unet, text_encoder=None):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, noisy_latents, timesteps, cond):
        if not cond.is_floating_point():
            if self.text_encoder is None:
                raise RuntimeError("token ids given but the text encoder is not part of the trained model")
            cond = self.text_encoder(cond)[0]
        # The first weight's dtype is what `unet.dtype` returns, without diffusers' walk over every module (~2 ms a step).
        dtype = next(p for p in self.unet.parameters() if p.is_floating_point()).dtype
        return self.unet(noisy_latents, timesteps, cond.to(dtype)).sample


def step_probe(core: SDDenoiser, params: list[torch.nn.Parameter], cond_fn: Callable[[list[str]], torch.Tensor],
               prompt: str, latent_shape: tuple, device, autocast) -> Callable[[], None]:
    """One forward + backward of `core` on zero latents of the training batch's shape, for timing kernels. It draws
    no random numbers, and the gradients it leaves on `params` are cleared, so training never sees it ran."""
    noisy = torch.zeros(latent_shape, device=device)
    timesteps = torch.full((latent_shape[0],), 500, device=device, dtype=torch.long)
    cond = cond_fn([prompt] * latent_shape[0]).to(device)

    def probe() -> None:
        with autocast():
            loss = core(noisy, timesteps, cond).float().square().mean()
        loss.backward()
        for p in params:
            p.grad = None

    return probe


def cast_frozen(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Store the frozen parameters of `module` in `dtype`; trainable ones keep their (fp32) dtype."""
    for p in module.parameters():
        if not p.requires_grad and p.is_floating_point():
            p.data = p.data.to(dtype)
    return module


def encode_tokens(text_encoder, tokenizer, prompts: list[str], device) -> torch.Tensor:
    """CLIP last hidden states for `prompts`, as SD conditions on them."""
    ids = tokenize(tokenizer, prompts).to(device)
    return text_encoder(ids)[0]


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def scale_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents -> the UNet's latent space (SD1/2: times scaling_factor; shift first where the VAE has one)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


# ---------------------------------------------------------------------------------------------
# Caching
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def cache_latents(vae, dataset, items: list[dict], device, batch_size: int = 8,
                  dataset_indices: Optional[list[int]] = None) -> None:
    """Encode every item's image(s) once and store the latent distribution (mean, std) in `items`, on the CPU.

    items[k] belongs to dataset[dataset_indices[k]] (default: dataset[k]). Each step then samples
    latents = mean + std * eps, as diffusers' `latent_dist.sample()` would. Random crops and flips are drawn
    once (epoch 0). Items of one bucket are encoded together.
    """
    dataset.set_epoch(0)
    dataset_indices = dataset_indices if dataset_indices is not None else list(range(len(items)))
    keys = [("pixel_values", "latent")] + ([("class_pixel_values", "class_latent")] if "class_prompt" in items[0] else [])
    order = sorted(range(len(items)), key=lambda i: items[i]["bucket"])
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        chunk_groups: dict[int, list[int]] = {}
        for i in chunk:
            chunk_groups.setdefault(items[i]["bucket"], []).append(i)
        for group in chunk_groups.values():
            examples = [dataset[dataset_indices[i]] for i in group]
            for pixel_key, name in keys:
                pixels = torch.stack([e[pixel_key] for e in examples]).to(device, vae.dtype)
                dist = vae.encode(pixels).latent_dist
                for i, mean, std in zip(group, dist.mean.float().cpu(), dist.std.float().cpu()):
                    items[i][f"{name}_mean"], items[i][f"{name}_std"] = mean.clone(), std.clone()


def cache_all_latents(vae, dataset, items: list[dict], val_idx: list[int], device, every_item: bool,
                      batch_size: int = 8) -> list[dict]:
    """Cache every item's latents (`every_item`), or only the validation items' (on copies, so training still
    encodes live); returns the validation items. The recipe passes its training batch size: encoding more images at
    once than a step trains on would make the VAE's activations (GBs for SD at 512 px) the run's memory peak."""
    if every_item:
        cache_latents(vae, dataset, items, device, batch_size=batch_size)
        return [items[i] for i in val_idx]
    val_items = [dict(items[i]) for i in val_idx]
    cache_latents(vae, dataset, val_items, device, batch_size=batch_size, dataset_indices=val_idx)
    return val_items


def split_validation(n: int, cfg: "ValidationConfig", batch_size: int) -> tuple[list[int], list[int]]:
    """(training indices, validation-loss indices): held-out last items, or the first training items."""
    train_idx = list(range(n - cfg.holdout))
    val_idx = list(range(len(train_idx) if cfg.holdout else 0, n))[:cfg.loss_images]
    if cfg.holdout < 0 or len(train_idx) < (batch_size if cfg.holdout else 1) or not val_idx:
        raise UserError(f"validation.holdout={cfg.holdout} / loss_images={cfg.loss_images} do not fit {n} images "
                        f"with batch_size {batch_size}; lower them")
    return train_idx, val_idx


class PromptEmbeddings:
    """Frozen text-encoder outputs for a fixed set of prompts, computed once (CPU copies, `dtype`)."""

    def __init__(self, text_encoder, tokenizer, prompts: list[str], device, dtype=torch.float32, batch_size: int = 16):
        unique = sorted(set(prompts))
        self.table: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for start in range(0, len(unique), batch_size):
                chunk = unique[start:start + batch_size]
                for prompt, emb in zip(chunk, encode_tokens(text_encoder, tokenizer, chunk, device)):
                    self.table[prompt] = emb.to("cpu", dtype).clone()

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        return torch.stack([self.table[p] for p in prompts])


def make_collate(tokenizer, embeddings: Optional[PromptEmbeddings], prompt_fn: Optional[Callable[[str], str]] = None,
                 caption_dropout: float = 0.0):
    """Collate training items into one batch: instance examples first, then class examples.

    Batch keys: "latent_mean"/"latent_std" (cached) or "pixel_values"; "embeds" (cached text) or "input_ids";
    "num_instance". `prompt_fn` rewrites a prompt per example (textual-inversion templates); caption dropout
    replaces prompts with "". Both draw from Python's `random`, which accelerate's checkpoints restore.
    """

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
                batch[f"latent_{stat}"] = torch.stack([e[f"latent_{stat}"] for e in examples]
                                                      + ([e[f"class_latent_{stat}"] for e in examples] if prior else []))
        else:
            batch["pixel_values"] = torch.stack([e["pixel_values"] for e in examples]
                                                + ([e["class_pixel_values"] for e in examples] if prior else []))
        if embeddings is not None:
            batch["embeds"] = embeddings(prompts)
        else:
            batch["input_ids"] = tokenize(tokenizer, prompts)
        return batch

    return collate


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


def sample_latents(vae, batch: dict) -> torch.Tensor:
    """Latents for a batch: from the cached distribution, or by running the frozen VAE now."""
    if "latent_mean" in batch:
        mean, std = batch["latent_mean"], batch["latent_std"]
        return scale_latents(vae, mean + std * torch.randn_like(mean))
    with torch.no_grad():
        latents = vae.encode(batch["pixel_values"].to(vae.dtype)).latent_dist.sample()
    return scale_latents(vae, latents.float())


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def on_device(modules, device):
    """Move (offloaded) modules to `device` for a while, then back where they were."""
    homes = [(m, next(m.parameters()).device) for m in modules if m is not None]
    for m, _ in homes:
        m.to(device)
    try:
        yield
    finally:
        for m, home in homes:
            m.to(home)


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
        batches.append({"latent_mean": means, "noise": torch.randn(means.shape, generator=g), "timesteps": timesteps[indices],
                        "prompts": [items[i]["prompt"] for i in indices]})
    return batches


def sample_images(pipeline, prompts: list[str], cfg: ValidationConfig, resolution: int, autocast) -> list:
    """`cfg.num_images` images per prompt, each from its own fixed seed (the same at every validation)."""
    images = []
    for p, prompt in enumerate(prompts):
        generators = [torch.Generator(device=pipeline.device).manual_seed(cfg.seed + 1000 * p + k) for k in range(cfg.num_images)]
        with torch.no_grad(), autocast():
            images += pipeline([prompt] * cfg.num_images, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                               height=resolution, width=resolution, generator=generators).images
    return images


def fixed_noise_loss(core: SDDenoiser, vae, noise_scheduler, batches: list[dict], cond_fn: Callable[[list[str]], torch.Tensor],
                     prediction_type: str, device) -> float:
    """The diffusion loss on `fixed_validation_batches` (fixed latents, noise, timesteps): comparable across steps.
    `cond_fn(prompts)` gives the conditioning (cached embeddings or token ids)."""
    from finetune.losses.diffusion import diffusion_loss, diffusion_target

    total, count = 0.0, 0
    for val in batches:
        latents = scale_latents(vae, val["latent_mean"].to(device))
        noise, timesteps = val["noise"].to(device), val["timesteps"].to(device)
        pred = core(noise_scheduler.add_noise(latents, noise, timesteps), timesteps, cond_fn(val["prompts"]).to(device))
        target = diffusion_target(noise_scheduler, latents, noise, timesteps, prediction_type)
        total, count = total + float(diffusion_loss(pred, target)) * len(timesteps), count + len(timesteps)
    return total / count


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
