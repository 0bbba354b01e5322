"""Pretrain a diffusers AutoencoderKL (Stable Diffusion's VAE) on scikit-learn's digits, on the shared loop.

    accelerate launch --config_file accelerate_config.yaml recipes/train_autoencoder.py \
        --config recipes/configs/digits_vae.yaml [key=value ...]

The step is the VAE objective with a Gaussian decoder and a small KL weight, as SD's first stage:
    loss = sum of squared pixel errors + kl_weight * KL(q(z|x) || N(0, I))      (per image, mean over batch)
The small KL keeps the latents near a unit Gaussian without blurring the reconstructions away.

Evaluation reconstructs the held-out test digits from the posterior mode and reports the per-pixel MSE
(`val_loss`) and the share the digits judge still classifies as the right digit (`recon_accuracy`).
At the end the recipe sets the VAE's `scaling_factor` to 1 / std of the training latents (what SD's
0.18215 is for its own VAE: unit-variance latents for the diffusion model), then writes <output_dir>/vae/
(AutoencoderKL.save_pretrained, safetensors: loads with AutoencoderKL.from_pretrained), a
reconstructions.png grid (rows of test digits, each followed by its reconstruction) and summary.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from finetune.data.digits import load_digits_images
from finetune.errors import UserError, exit_on_user_error
from finetune.io import atomic_dir, atomic_write_bytes, atomic_write_json
from finetune.losses.vae import elbo
from finetune.metrics import load_judge
from finetune.models.small_nets import reconstructions_png
from finetune.optim.optimizers import OptimConfig, build_optimizer, param_groups
from finetune.optim.schedulers import SchedulerConfig, build_scheduler
from finetune.train import TrainConfig, open_recipe
from finetune.train.loop import validate_train_config

if TYPE_CHECKING:
    from diffusers import AutoencoderKL


@dataclass
class AEModelConfig:
    block_out_channels: list[int] = field(
        default_factory=lambda: [32, 64]
    )  # channels per resolution level; each extra level halves the side
    latent_channels: int = 4  # channels of the latent image (SD: 4)
    layers_per_block: int = 1  # resnet layers per encoder/decoder level
    norm_num_groups: int = 8  # GroupNorm groups; must divide every entry of block_out_channels


@dataclass
class AEDataConfig:
    image_size: int = 16  # side of the digits in pixels (the 8x8 originals are upsampled bilinearly)
    eval_images: int = 0  # test digits reconstructed at each evaluation (0: the whole test split)


# Subclasses only to change defaults: the config loader builds a nested section from its class's own
# defaults whenever any key of it is overridden, so defaults must live on the class.
@dataclass
class AETrainConfig(TrainConfig):
    output_dir: str = "outputs/digits_vae"  # where checkpoints, metrics, config.yaml and vae/ go
    max_steps: int = 3000  # optimizer steps to train for
    batch_size: int = 64  # digits per micro-batch
    log_every: int = 100  # log loss, recon and kl every N steps
    eval_every: int = 1000  # reconstruct the test digits every N steps (0: only at the end)


@dataclass
class AEOptimConfig(OptimConfig):
    lr: float = 1e-3  # learning rate of AdamW


@dataclass
class AESchedulerConfig(SchedulerConfig):
    name: Literal[
        "constant", "linear", "cosine", "cosine_with_restarts", "step", "exponential", "polynomial", "plateau"
    ] = "cosine"  # shape of the lr schedule after warmup
    warmup_steps: int = 100  # optimizer steps of linear warmup


@dataclass
class AutoencoderConfig:
    model: AEModelConfig = field(default_factory=AEModelConfig)  # the AutoencoderKL architecture
    data: AEDataConfig = field(default_factory=AEDataConfig)  # which digits, at what size
    kl_weight: float = 1e-3  # weight of the summed KL against the summed squared error (small: SD-style first stage)
    train: AETrainConfig = field(default_factory=AETrainConfig)  # loop settings (finetune.train.TrainConfig)
    optim: AEOptimConfig = field(default_factory=AEOptimConfig)  # optimizer
    scheduler: AESchedulerConfig = field(default_factory=AESchedulerConfig)  # learning-rate schedule


def validate(cfg: AutoencoderConfig) -> None:
    """Refuse settings that cannot work, before anything is built."""
    validate_train_config(cfg.train)
    m = cfg.model
    levels = len(m.block_out_channels)
    if levels < 1 or any(c < 1 or c % m.norm_num_groups for c in m.block_out_channels):
        raise UserError(
            f"model.block_out_channels={m.block_out_channels} must be non-empty multiples of "
            f"model.norm_num_groups={m.norm_num_groups}"
        )
    if cfg.data.image_size < 8 or cfg.data.image_size % 2 ** (levels - 1):
        raise UserError(
            f"data.image_size={cfg.data.image_size} must be >= 8 and divisible by {2 ** (levels - 1)} "
            f"(the VAE halves it {levels - 1} times)"
        )
    if cfg.kl_weight < 0:
        raise UserError(f"kl_weight={cfg.kl_weight} must be >= 0")


def build_vae(m: AEModelConfig, image_size: int) -> AutoencoderKL:
    """An AutoencoderKL with `len(block_out_channels) - 1` downsamplings, random weights."""
    from diffusers import AutoencoderKL  # after finetune: its import-time library notices meet finetune.quiet's filters

    levels = len(m.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=m.latent_channels,
        layers_per_block=m.layers_per_block,
        block_out_channels=list(m.block_out_channels),
        norm_num_groups=m.norm_num_groups,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        sample_size=image_size,
    )


class PosteriorVAE(torch.nn.Module):
    """forward(x) -> (reconstruction of a posterior sample, posterior mean, posterior logvar).

    AutoencoderKL.forward returns only the reconstruction; the KL needs the posterior too. Going
    through one forward (rather than calling encode/decode on the unwrapped model) keeps DDP's
    gradient synchronisation when the recipe runs on several processes.
    """

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor):
        posterior = self.vae.encode(x).latent_dist
        recon = self.vae.decode(posterior.sample()).sample  # reparameterised: noise from the run's RNG
        return recon, posterior.mean, posterior.logvar


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Decode the posterior mode of each image (deterministic), clamped to [-1, 1]."""
    out = [
        vae.decode(vae.encode(images[i : i + batch_size]).latent_dist.mode()).sample
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).clamp(-1, 1)


@torch.no_grad()
def latent_std(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> float:
    """Std of sampled latents over `images` (seeded), the number SD's scaling_factor divides by."""
    g = torch.Generator(device=images.device).manual_seed(0)
    z = [
        vae.encode(images[i : i + batch_size]).latent_dist.sample(generator=g)
        for i in range(0, len(images), batch_size)
    ]
    return float(torch.cat(z).std())


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    run = open_recipe(AutoencoderConfig, argv, __doc__, validate)
    cfg, accelerator, out = run.cfg, run.accelerator, run.out
    device = accelerator.device

    train_x, _ = load_digits_images(cfg.data.image_size, "train")
    test_x, test_y = load_digits_images(cfg.data.image_size, "test")
    if cfg.data.eval_images:
        test_x, test_y = test_x[: cfg.data.eval_images], test_y[: cfg.data.eval_images]
    judge = load_judge()

    vae = build_vae(cfg.model, cfg.data.image_size)
    optimizer = build_optimizer(param_groups(vae.named_parameters(), cfg.optim.weight_decay), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.train.max_steps)
    model, optimizer = accelerator.prepare(PosteriorVAE(vae), optimizer)
    accelerator.print(f"AutoencoderKL: {sum(p.numel() for p in vae.parameters()):,} parameters")

    def step_fn(batch: torch.Tensor):
        recon, mean, logvar = model(batch)
        loss, recon_term, kl = elbo(recon, batch, mean, logvar, beta=cfg.kl_weight, recon="mse")
        return loss, {"recon": recon_term.detach(), "kl": kl.detach()}

    def eval_fn(step: int) -> dict:
        recon = reconstruct(vae, test_x.to(device)).cpu()
        accuracy = float((judge.predict(recon) == test_y).float().mean())
        return {"val_loss": float(((recon - test_x) ** 2).mean()), "recon_accuracy": accuracy}

    def save_fn(path) -> None:
        # scaling_factor = 1 / latent std, measured on the weights being saved: the diffusion model then
        # sees unit-variance latents (SD's 0.18215 is the same number for its own VAE).
        vae.register_to_config(scaling_factor=1.0 / latent_std(vae, train_x.to(device)))
        with atomic_dir(path / "vae") as tmp:
            vae.save_pretrained(tmp, safe_serialization=True)

    result = run.train(model, optimizer, scheduler, list(train_x), step_fn, eval_fn=eval_fn, save_fn=save_fn)

    summary: dict = {}
    if accelerator.is_main_process:
        vae.eval()
        save_fn(out)
        std = 1.0 / vae.config.scaling_factor
        shown = test_x[: min(4, len(test_x) // 8) * 8]  # up to 4 rows of 8 test digits
        if len(shown):
            png = reconstructions_png(shown, reconstruct(vae, shown.to(device)), scale=4)
            atomic_write_bytes(out / "reconstructions.png", png)
        summary = {
            "step": result.global_step,
            "scaling_factor": 1.0 / std,
            "latent_std": std,
            "params": sum(p.numel() for p in vae.parameters()),
            **result.last_eval,
        }
        atomic_write_json(out / "summary.json", summary)
        print(
            f"done step={result.global_step} recon_accuracy={summary.get('recon_accuracy', float('nan')):.4f} "
            f"val_mse={summary.get('val_loss', float('nan')):.5f} scaling_factor={1.0 / std:.4f}"
        )
    accelerator.wait_for_everyone()
    return summary


if __name__ == "__main__":
    main()
