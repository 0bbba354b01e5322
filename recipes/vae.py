"""Train a small VAE on scikit-learn's digits with the shared training loop; judge its samples with FID.

    accelerate launch recipes/vae.py --config recipes/configs/vae_digits.yaml [key=value ...]

The step is the negative ELBO (Kingma & Welling 2014) with Bernoulli pixels:
    loss = recon + beta * KL(q(z|x) || N(0, I))
logged as `loss`, `recon` and `kl`. Evaluation reports the same terms on the held-out test digits;
at the end the recipe writes samples.png (decoded prior samples), reconstructions.png (test digits,
each row followed by its reconstruction), model.safetensors and summary.json with the samples' FID
against the real test digits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from safetensors.torch import save as safetensors_bytes

from finetune.data.digits import load_digits_images
from finetune.errors import UserError, exit_on_user_error
from finetune.io import atomic_write_bytes, atomic_write_json
from finetune.losses.vae import elbo
from finetune.metrics import judge_images, load_judge
from finetune.models.small_nets import DigitsVAE, image_grid_png, reconstructions_png
from finetune.optim.optimizers import OptimConfig, build_optimizer
from finetune.optim.schedulers import SchedulerConfig, build_scheduler
from finetune.train import TrainConfig, open_recipe
from finetune.train.loop import validate_train_config


# Subclasses only to change defaults: the config loader builds a nested section from its class's
# own defaults whenever any key of it is overridden, so defaults must live on the class.
@dataclass
class VAETrainConfig(TrainConfig):
    output_dir: str = "outputs/vae"  # where checkpoints, metrics, samples, config.yaml and the model go
    max_steps: int = 2000  # optimizer steps to train for
    batch_size: int = 64  # digits per micro-batch
    max_grad_norm: float = 50.0  # clip the gradient norm (the ELBO is summed over pixels, so norms are ~10)
    log_every: int = 50  # log loss, recon and kl every N steps
    eval_every: int = 500  # test-set ELBO every N steps (0: only at the end)


@dataclass
class VAEOptimConfig(OptimConfig):
    name: Literal["adamw", "adam", "rmsprop", "sgd"] = "adam"  # which torch.optim optimizer to build
    lr: float = 1e-3  # learning rate


@dataclass
class VAEConfig:
    train: VAETrainConfig = field(default_factory=VAETrainConfig)  # loop settings (finetune.train.TrainConfig)
    optim: VAEOptimConfig = field(default_factory=VAEOptimConfig)  # optimizer of the VAE
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)  # learning-rate schedule
    beta: float = 1.0  # weight of the KL term (1: the ELBO; > 1: beta-VAE)
    image_size: int = 8  # side of the digits the VAE models (the originals are 8x8)
    latent_dim: int = 8  # size of the latent code z
    hidden: int = 256  # units per hidden layer of encoder and decoder
    eval_samples: int = 500  # prior samples decoded for the final FID / IS


def validate(cfg: VAEConfig) -> None:
    """Refuse settings that cannot train, before anything is built."""
    validate_train_config(cfg.train)
    if cfg.beta < 0:
        raise UserError(f"beta={cfg.beta} must be >= 0 (1 is the ELBO, > 1 a beta-VAE)")
    if cfg.image_size < 8:
        raise UserError(f"image_size={cfg.image_size} must be >= 8 (the digits are 8x8 originals)")
    if cfg.latent_dim < 1 or cfg.hidden < 1:
        raise UserError(f"latent_dim={cfg.latent_dim} and hidden={cfg.hidden} must be >= 1")
    if cfg.eval_samples < 2:
        raise UserError(f"eval_samples={cfg.eval_samples} must be >= 2 (FID needs a covariance; use a few hundred)")


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] grey images -> [0, 1] pixel intensities, the Bernoulli means the ELBO models."""
    return ((images[:, :1] + 1.0) / 2.0).clamp(0.0, 1.0)


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    run = open_recipe(VAEConfig, argv, __doc__, validate)
    cfg, accelerator, out = run.cfg, run.accelerator, run.out

    train_x = to_unit(load_digits_images(cfg.image_size, "train")[0])
    test_x = to_unit(load_digits_images(cfg.image_size, "test")[0])
    dataset = list(train_x)  # dataset[i] -> 1 x S x S tensor
    model = DigitsVAE(cfg.image_size, cfg.latent_dim, cfg.hidden)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.train.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device

    def step_fn(batch: torch.Tensor):
        logits, mu, logvar = model(batch)  # z = mu + sigma * eps: eps from the run's (checkpointed) RNG
        loss, recon, kl = elbo(logits, batch, mu, logvar, beta=cfg.beta, recon="bce")
        return loss, {"recon": recon.detach(), "kl": kl.detach()}

    def eval_fn(step: int) -> dict:
        """Negative ELBO and its terms on the test digits, with fixed noise so evaluations compare."""
        x = test_x.to(device)
        logits, mu, logvar = model(x, generator=torch.Generator(device=device).manual_seed(0))
        loss, recon, kl = elbo(logits, x, mu, logvar, beta=cfg.beta, recon="bce")
        return {"val_loss": float(loss), "val_recon": float(recon), "val_kl": float(kl)}

    def save_fn(path) -> None:
        weights = {k: v.detach().cpu().contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        atomic_write_bytes(path / "model.safetensors", safetensors_bytes(weights, metadata={"format": "pt"}))

    result = run.train(model, optimizer, scheduler, dataset, step_fn, eval_fn=eval_fn, save_fn=save_fn)

    summary: dict = {}
    if accelerator.is_main_process:
        vae = accelerator.unwrap_model(model).eval()
        with torch.no_grad():
            z = torch.randn(
                cfg.eval_samples, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.train.seed + 7919)
            )
            samples = torch.sigmoid(vae.decode(z.to(device))).float().cpu() * 2.0 - 1.0  # Bernoulli means, in [-1, 1]
            shown = test_x[:32].to(device)
            recons = torch.sigmoid(vae(shown, generator=torch.Generator(device=device).manual_seed(0))[0])
        atomic_write_bytes(out / "samples.png", image_grid_png(samples[:64]))
        atomic_write_bytes(out / "reconstructions.png", reconstructions_png(shown * 2.0 - 1.0, recons * 2.0 - 1.0))
        save_fn(out)
        scores = judge_images(load_judge(), samples)
        summary = {
            "fid": scores["fid"],
            "is": scores["is"],
            "kid": scores["kid"],
            "n_samples": scores["n"],
            "step": result.global_step,
            "beta": cfg.beta,
            **{k: v for k, v in result.last_eval.items()},
        }
        atomic_write_json(out / "summary.json", summary)
        print(
            f"done step={result.global_step} fid={summary['fid']:.2f} is={summary['is']:.2f} "
            f"val_loss={summary.get('val_loss', float('nan')):.2f}"
        )
    accelerator.wait_for_everyone()
    return summary


if __name__ == "__main__":
    main()
