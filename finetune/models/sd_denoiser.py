"""The Stable Diffusion model as it trains: the denoiser the optimizer sees, its latents, and its validation.

- `SDDenoiser`: the trainable modules in ONE nn.Module (UNet, plus the text encoder(s) when they run during
  training) so accelerate/DDP wrap, sync and accumulate them as one model; its forward takes token ids (text
  encoders run) or cached embeddings; for SDXL an `XLCond` that adds the pooled embedding and the time ids.
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

from finetune.models.sd import encode_xl


@dataclass
class TextEncoderConfig:
    train: bool = False  # also train the text encoder: its LoRA for method=lora, all its weights for method=full
    lr: float | None = None  # its learning rate (None: optim.lr)
    stop_step: int = 0  # freeze it again after this many optimizer steps (0: trains to the end)
    xl_encoders: list[int] = field(
        default_factory=lambda: [1, 2]
    )  # SDXL: which encoders train (1: CLIP-L text_encoder, 2: CLIP-G text_encoder_2)


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
    channels_last: bool | Literal["auto"] = (
        "auto"  # UNet in channels-last layout; auto: on GPUs and with oneDNN, not with the native CPU kernels
    )
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


@dataclass
class XLCond:
    """SDXL's conditioning of a batch: the text (cached embeddings, or token ids of both tokenizers for the encoders
    to run) and the six added time ids of each image: original (h, w), crop top-left (top, left), target (h, w)."""

    time_ids: torch.Tensor  # (B, 6) float
    embeds: torch.Tensor | None = None  # (B, 77, d1 + d2): both encoders' penultimate hidden states side by side
    pooled: torch.Tensor | None = None  # (B, proj): text_encoder_2's projected pooled output
    input_ids: torch.Tensor | None = None  # (B, 77) tokenizer ids, when the encoders run in the step
    input_ids_2: torch.Tensor | None = None  # (B, 77) tokenizer_2 ids

    def to(self, device) -> XLCond:
        move = lambda t: t.to(device) if t is not None else None  # noqa: E731
        return XLCond(
            self.time_ids.to(device), *(move(t) for t in (self.embeds, self.pooled, self.input_ids, self.input_ids_2))
        )


def xl_time_ids(resolution: int, n: int) -> torch.Tensor:
    """Time ids of an uncropped square image at `resolution`: (res, res, 0, 0, res, res) per row."""
    return torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * n, dtype=torch.float32)


def batch_cond(batch: dict):
    """The step's conditioning from a collated batch (finetune.data.sd.make_collate): a tensor for SD1.x/2.x, an
    XLCond for SDXL (its batches carry "time_ids")."""
    if "time_ids" not in batch:
        return batch["embeds"] if "embeds" in batch else batch["input_ids"]
    keys = ("embeds", "pooled", "input_ids", "input_ids_2")
    return XLCond(batch["time_ids"], **{k: batch[k] for k in keys if k in batch})


class SDDenoiser(torch.nn.Module):
    """UNet (+ the text encoder(s), when they run in the step) as one module: `forward(noisy, t, cond)` -> prediction.

    `cond` is token ids (long: the text encoder runs, so it can train), precomputed embeddings (float), or for SDXL
    an `XLCond`.
    """

    def __init__(self, unet, text_encoder=None, text_encoder_2=None):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2

    def forward(self, noisy_latents, timesteps, cond):
        # The first weight's dtype is what `unet.dtype` returns, without diffusers' walk over every module (~2 ms a step).
        dtype = next(p for p in self.unet.parameters() if p.is_floating_point()).dtype
        if isinstance(cond, XLCond):
            return self._forward_xl(noisy_latents, timesteps, cond, dtype)
        if not cond.is_floating_point():
            if self.text_encoder is None:
                raise RuntimeError("token ids given but the text encoder is not part of the trained model")
            cond = self.text_encoder(cond)[0]
        return self.unet(noisy_latents, timesteps, cond.to(dtype)).sample

    def _forward_xl(self, noisy_latents, timesteps, cond: XLCond, dtype):
        embeds, pooled = cond.embeds, cond.pooled
        if embeds is None or pooled is None:
            ids, ids_2 = cond.input_ids, cond.input_ids_2
            if self.text_encoder is None or self.text_encoder_2 is None or ids is None or ids_2 is None:
                raise RuntimeError("SDXL token ids given but the text encoders are not part of the trained model")
            embeds, pooled = encode_xl([self.text_encoder, self.text_encoder_2], [ids, ids_2])
        added = {"text_embeds": pooled.to(dtype), "time_ids": cond.time_ids.to(dtype)}
        return self.unet(noisy_latents, timesteps, embeds.to(dtype), added_cond_kwargs=added).sample


def step_probe(
    core: SDDenoiser,
    params: list[torch.nn.Parameter],
    cond_fn: Callable[..., torch.Tensor | XLCond],
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


def attention_processor(kind: Literal["sdpa", "classic"]):
    """diffusers' attention processor (AttnProcessor2_0 for "sdpa", AttnProcessor for "classic") with its call
    signature attached. diffusers' `Attention.forward` runs `inspect.signature` on its processor's `__call__` at
    every call to filter keyword arguments: 16 attentions a step on the tiny SDXL, 1.5 ms of a 38 ms profiled step.
    A `__signature__` on the function is what `inspect.signature` returns without computing it; the computation is
    the same, done once, and the processor is otherwise diffusers' own."""
    import inspect

    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    base = AttnProcessor2_0 if kind == "sdpa" else AttnProcessor
    plain_call = base.__call__

    def __call__(self, *args, **kwargs):
        return plain_call(self, *args, **kwargs)

    __call__.__signature__ = inspect.signature(plain_call)  # type: ignore[attr-defined]
    return type(base.__name__, (base,), {"__call__": __call__, "__doc__": base.__doc__})()


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
    cond_fn: Callable[..., torch.Tensor | XLCond],
    prediction_type: str,
    device,
) -> float:
    """The diffusion loss on `finetune.data.sd.fixed_validation_batches` (fixed latents, noise, timesteps): comparable
    across steps. `cond_fn(prompts, time_ids)` gives the conditioning (cached embeddings or token ids; SDXL: an
    XLCond with the images' time ids)."""
    from finetune.losses.diffusion import diffusion_loss, diffusion_target

    total, count = 0.0, 0
    for val in batches:
        latents = scale_latents(vae, val["latent_mean"].to(device))
        noise, timesteps = val["noise"].to(device), val["timesteps"].to(device)
        cond = cond_fn(val["prompts"], val.get("time_ids")).to(device)
        pred = core(noise_scheduler.add_noise(latents, noise, timesteps), timesteps, cond)
        target = diffusion_target(noise_scheduler, latents, noise, timesteps, prediction_type)
        total, count = total + float(diffusion_loss(pred, target)) * len(timesteps), count + len(timesteps)
    return total / count
