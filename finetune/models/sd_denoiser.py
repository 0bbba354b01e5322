"""The Stable Diffusion model as it trains: the denoiser the optimizer sees, its latents, and its validation.

- `SDDenoiser`: the trainable modules in ONE nn.Module (UNet, plus the text encoder when it runs during training)
  so accelerate/DDP wrap, sync and accumulate them as one model; its forward takes token ids (text encoder runs)
  or cached embeddings.
- `sample_latents`: a batch's latents from the cached distribution (finetune.data.sd) or the frozen VAE.
- Validation: a fixed-noise, fixed-timestep loss on fixed latents (comparable across steps) and image samples from
  fixed seeds.
Written by hand: diffusers keeps these steps inline in its example scripts, not in the library.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch


@dataclass
class TextEncoderConfig:
    train: bool = False  # also train the text encoder: its LoRA for method=lora, all its weights for method=full
    lr: float | None = None  # its learning rate (None: optim.lr)
    stop_step: int = 0  # freeze it again after this many optimizer steps (0: trains to the end)


@dataclass
class EfficiencyConfig:
    cache_latents: bool = (
        True  # encode every image with the frozen VAE once, before training (augmentations drawn once)
    )
    cache_text: bool = True  # encode every prompt once when the text encoder does not train
    offload_frozen: bool = True  # on GPUs, keep the cached-away VAE / text encoder in CPU memory (moved back to sample)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, slower steps
    attention: Literal["sdpa", "classic"] = "sdpa"  # torch scaled_dot_product_attention, or diffusers' plain attention
    vae_fp32: bool = True  # keep the VAE in fp32 under mixed precision (SD1's VAE overflows in fp16)
    channels_last: bool = True  # UNet weights and activations in channels-last layout (oneDNN's and cuDNN's fast path)
    conv_backend: Literal["auto", "onednn", "native"] = (
        "auto"  # CPU convolution kernels; auto times one step under each
    )
    #                                                             (kept in conv_backend.json, reused on resume)


@dataclass
class ValidationConfig:
    prompts: list[str] = field(
        default_factory=list
    )  # prompts of the sample grids (at train.eval_every and the end); [] = the instance prompt / first captions
    num_images: int = 1  # images per prompt in each grid
    steps: int = 20  # denoising steps per validation image
    guidance_scale: float = 7.5  # classifier-free guidance of validation images
    seed: int = 1234  # seed of the validation noise (images and loss): the same every time
    loss_images: int = 4  # training (or held-out) images in the fixed-noise validation loss
    holdout: int = 0  # caption folders: keep the last N images out of training and use them for the validation loss
    grids: bool = True  # write sample grids (samples/step-N.png, before_after.png); false: validation loss only


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


def step_probe(
    core: SDDenoiser,
    params: list[torch.nn.Parameter],
    cond_fn: Callable[[list[str]], torch.Tensor],
    prompt: str,
    latent_shape: tuple,
    device,
    autocast,
) -> Callable[[], None]:
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


def scale_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents -> the UNet's latent space (SD1/2: times scaling_factor; shift first where the VAE has one)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def sample_latents(vae, batch: dict) -> torch.Tensor:
    """Latents for a batch: from the cached distribution, or by running the frozen VAE now."""
    if "latent_mean" in batch:
        mean, std = batch["latent_mean"], batch["latent_std"]
        return scale_latents(vae, mean + std * torch.randn_like(mean))
    with torch.no_grad():
        latents = vae.encode(batch["pixel_values"].to(vae.dtype)).latent_dist.sample()
    return scale_latents(vae, latents.float())


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


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def sample_images(pipeline, prompts: list[str], cfg: ValidationConfig, resolution: int, autocast) -> list:
    """`cfg.num_images` images per prompt, each from its own fixed seed (the same at every validation)."""
    images = []
    for p, prompt in enumerate(prompts):
        generators = [
            torch.Generator(device=pipeline.device).manual_seed(cfg.seed + 1000 * p + k) for k in range(cfg.num_images)
        ]
        with torch.no_grad(), autocast():
            images += pipeline(
                [prompt] * cfg.num_images,
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance_scale,
                height=resolution,
                width=resolution,
                generator=generators,
            ).images
    return images


def fixed_noise_loss(
    core: SDDenoiser,
    vae,
    noise_scheduler,
    batches: list[dict],
    cond_fn: Callable[[list[str]], torch.Tensor],
    prediction_type: str,
    device,
) -> float:
    """The diffusion loss on `finetune.data.sd.fixed_validation_batches` (fixed latents, noise, timesteps): comparable
    across steps. `cond_fn(prompts)` gives the conditioning (cached embeddings or token ids)."""
    from finetune.losses.diffusion import diffusion_loss, diffusion_target

    total, count = 0.0, 0
    for val in batches:
        latents = scale_latents(vae, val["latent_mean"].to(device))
        noise, timesteps = val["noise"].to(device), val["timesteps"].to(device)
        pred = core(noise_scheduler.add_noise(latents, noise, timesteps), timesteps, cond_fn(val["prompts"]).to(device))
        target = diffusion_target(noise_scheduler, latents, noise, timesteps, prediction_type)
        total, count = total + float(diffusion_loss(pred, target)) * len(timesteps), count + len(timesteps)
    return total / count
