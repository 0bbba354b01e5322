"""Train a GAN on scikit-learn's digits and judge it with FID / IS from the digits judge.

    accelerate launch recipes/gan.py --config recipes/configs/gan_nonsaturating.yaml [key=value ...]

Two optimizers do not fit the shared loop, so this recipe has its own short one; it reuses the
toolkit's data order, checkpoints (finetune/train/checkpoint.py: G, D, both optimizers, noise, RNG;
safetensors + JSON), logging and setup, so `train.resume=latest` continues a run bit for bit. Losses:
minimax, nonsaturating, lsgan, wgan (weight clipping), wgan_gp (gradient penalty), hinge; spectral norm
on D, one-sided label smoothing, TTUR (separate optim_g / optim_d learning rates) and n_critic D steps
per G step.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from safetensors.torch import save as safetensors_bytes

from finetune.config import parse_recipe_args
from finetune.data.digits import load_digits_images
from finetune.errors import UserError, exit_on_user_error
from finetune.io import atomic_write_bytes, atomic_write_json
from finetune.losses.gan import GAN_LOSSES, clip_weights_, gradient_penalty
from finetune.metrics import judge_images, load_judge
from finetune.models.small_nets import build_gan_nets, check_image_size, image_grid_png
from finetune.optim.optimizers import GAN_BETAS, OptimConfig, build_ttur, validate_optim_config
from finetune.stabilize import apply_spectral_norm
from finetune.train import build_accelerator, start_run
from finetune.train.batches import iterate_batches, shuffled_batches
from finetune.train.checkpoint import Checkpointed, remove_partial, resume_checkpoint, save_checkpoint
from finetune.train.logging import MetricsLogger, plot_loss_curve, read_metrics
from finetune.train.loop import validate_train_config

WASSERSTEIN = ("wgan", "wgan_gp")
UNBOUNDED = ("wgan", "wgan_gp", "hinge")  # losses whose D output must be a raw, unbounded score


# A subclass only to change defaults: the config loader builds a nested section from its class's
# own defaults whenever any key of it is overridden, so `optim_d.lr=4e-4` must not fall back to AdamW.
@dataclass
class GANOptimConfig(OptimConfig):
    name: Literal["adamw", "adam", "rmsprop", "sgd"] = "adam"  # which torch.optim optimizer to build
    lr: float = 2e-4  # learning rate (DCGAN's)
    betas: list[float] = field(default_factory=lambda: list(GAN_BETAS))  # Adam betas; beta1 = 0.5 as in DCGAN


@dataclass
class GANTrainConfig:
    output_dir: str = "outputs/gan"  # where checkpoints, metrics, samples, config.yaml and the generator go
    seed: int = 0  # seeds init, data order and noise
    max_steps: int = 1000  # generator steps (each follows n_critic discriminator steps)
    batch_size: int = 64  # real images (and as many fakes) per discriminator step
    max_grad_norm: float = 0.0  # clip each network's gradient norm to this; 0 disables
    log_every: int = 50  # log mean losses and D outputs every N generator steps
    eval_every: int = 0  # FID/IS every N generator steps (0: only at the end)
    eval_at_start: bool = True  # also judge the untrained generator (step 0), the baseline FID must beat
    eval_samples: int = 500  # generated images per FID/IS evaluation
    save_every: int = 0  # checkpoint every N generator steps (0: no checkpoints)
    keep_last: int = 2  # complete checkpoints to keep
    resume: str | None = None  # "latest" or a checkpoint-<step> directory to continue from
    overwrite_output_dir: bool = False  # allow replacing a directory that holds another run's checkpoints
    tensorboard: bool = True  # also log to <output_dir>/tensorboard when tensorboard is installed


@dataclass
class GANConfig:
    train: GANTrainConfig = field(
        default_factory=GANTrainConfig
    )  # loop settings (steps, batch, evaluation, checkpoints)
    optim_g: GANOptimConfig = field(default_factory=GANOptimConfig)  # generator optimizer
    optim_d: GANOptimConfig = field(default_factory=GANOptimConfig)  # discriminator optimizer; a higher lr = TTUR
    loss: Literal["minimax", "nonsaturating", "lsgan", "wgan", "wgan_gp", "hinge"] = "nonsaturating"  # GAN objective
    d_output: Literal["logit", "sigmoid"] = "logit"  # D's last activation: raw score, or sigmoid (lsgan only)
    spectral_norm: bool = False  # spectral normalisation on every D layer (Miyato et al. 2018)
    label_smoothing: float = 1.0  # target for real images in D's loss (0.9 = one-sided smoothing; 1.0 = off)
    n_critic: int | None = None  # D steps per G step; null: 5 for wgan/wgan_gp, 1 otherwise
    clip_value: float | None = None  # WGAN weight clipping to [-c, c]; null: 0.01 for wgan, 0 (off) otherwise
    gp_weight: float = 10.0  # lambda of the WGAN-GP gradient penalty (loss=wgan_gp only)
    arch: Literal["mlp", "conv"] = "mlp"  # network family (finetune/models/small_nets.py)
    image_size: int = 8  # side of the generated digits (the originals are 8x8)
    latent_dim: int = 16  # size of the generator's noise vector z
    hidden: int = 128  # width of the nets (mlp: units per layer; conv: base channels, e.g. 32)


def resolve_config(cfg: GANConfig) -> GANConfig:
    """Fill the loss-dependent defaults and refuse combinations that cannot train, one line each."""
    wgan = cfg.loss in WASSERSTEIN
    n_critic = cfg.n_critic if cfg.n_critic is not None else (5 if wgan else 1)
    clip = cfg.clip_value if cfg.clip_value is not None else (0.01 if cfg.loss == "wgan" else 0.0)
    t = cfg.train
    if cfg.d_output == "sigmoid" and cfg.loss in UNBOUNDED:
        raise UserError(
            f"loss={cfg.loss} needs an unbounded critic, but d_output=sigmoid squashes it to (0, 1); set d_output=logit"
        )
    if cfg.d_output == "sigmoid" and cfg.loss in ("minimax", "nonsaturating"):
        raise UserError(f"loss={cfg.loss} applies the sigmoid itself (BCE with logits); set d_output=logit")
    if cfg.label_smoothing != 1.0 and cfg.loss in UNBOUNDED:
        raise UserError(
            f"label_smoothing={cfg.label_smoothing} has no meaning for loss={cfg.loss} (no real/fake labels); set label_smoothing=1.0"
        )
    if not 0.0 < cfg.label_smoothing <= 1.0:
        raise UserError(
            f"label_smoothing={cfg.label_smoothing} must be in (0, 1]; 0.9 is one-sided smoothing, 1.0 is off"
        )
    if n_critic < 1:
        raise UserError(f"n_critic={n_critic} must be >= 1 (discriminator steps per generator step)")
    if clip < 0:
        raise UserError(f"clip_value={clip} must be >= 0 (0.01 in the WGAN paper; 0 disables)")
    if clip > 0 and cfg.loss == "wgan_gp":
        raise UserError(
            "clip_value and the wgan_gp gradient penalty are two Lipschitz constraints; use one: clip_value=0 or loss=wgan"
        )
    if clip > 0 and cfg.loss != "wgan":
        raise UserError(f"clip_value={clip} is WGAN weight clipping; set clip_value=0 for loss={cfg.loss}")
    if cfg.loss == "wgan" and clip == 0 and not cfg.spectral_norm:
        raise UserError(
            "loss=wgan needs a Lipschitz critic: set clip_value=0.01, spectral_norm=true, or use loss=wgan_gp"
        )
    if cfg.loss == "wgan_gp" and not cfg.gp_weight > 0:
        raise UserError(f"gp_weight={cfg.gp_weight} must be > 0 for loss=wgan_gp (10 in the paper)")
    for name in ("optim_g", "optim_d"):
        try:
            validate_optim_config(getattr(cfg, name))
        except UserError as e:
            raise UserError(f"{name}: {e}") from None
    check_image_size(cfg.arch, cfg.image_size)
    if cfg.latent_dim < 1 or cfg.hidden < 1:
        raise UserError(f"latent_dim={cfg.latent_dim} and hidden={cfg.hidden} must be >= 1")
    validate_train_config(t)  # the keys the GAN loop shares with TrainConfig
    if t.eval_samples < 2:
        raise UserError(f"train.eval_samples={t.eval_samples} must be >= 2 (FID needs a covariance; use a few hundred)")
    return dataclasses.replace(cfg, n_critic=n_critic, clip_value=clip)


class NoiseSource:
    """The run's noise stream (z and GP interpolation weights): seeded per process, saved in checkpoints."""

    def __init__(self, seed: int, rank: int, device):
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + rank + 1)

    def z(self, n: int, dim: int) -> torch.Tensor:
        return torch.randn(n, dim, generator=self.generator, device=self.device)

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    cfg = resolve_config(parse_recipe_args(GANConfig, argv, __doc__))
    t = cfg.train
    n_critic, clip_value = cfg.n_critic, cfg.clip_value
    if n_critic is None or clip_value is None:  # resolve_config fills both loss-dependent defaults
        raise AssertionError("resolve_config left n_critic or clip_value unset")
    accelerator = build_accelerator(t.seed)
    out = start_run(accelerator, cfg, t)  # refuses another run's directory, writes config.yaml
    real_images = load_digits_images(cfg.image_size, "train", seed=0)[0][:, :1]  # grey N x 1 x S x S in [-1, 1]
    if len(real_images) < t.batch_size * accelerator.num_processes:
        raise UserError(f"train.batch_size={t.batch_size} exceeds the {len(real_images)} training digits; lower it")

    G, D = build_gan_nets(cfg.arch, cfg.image_size, cfg.latent_dim, cfg.hidden)
    if cfg.spectral_norm:
        apply_spectral_norm(D)  # before the optimizer is built: it re-registers D's weights
    opt_g, opt_d = build_ttur(G.parameters(), D.parameters(), cfg.optim_g, cfg.optim_d)
    G, D, opt_g, opt_d = accelerator.prepare(G, D, opt_g, opt_d)
    noise = NoiseSource(t.seed, accelerator.process_index, accelerator.device)
    # every weight and buffer (spectral norm's too); the noise stream is seeded per process, so saved per process
    saved = Checkpointed([G, D], [opt_g, opt_d], rank_objects={"noise": noise})
    d_fn, g_fn = GAN_LOSSES["wgan" if cfg.loss == "wgan_gp" else cfg.loss]
    d_out = (lambda x: torch.sigmoid(D(x))) if cfg.d_output == "sigmoid" else D
    real_label = {"real_label": cfg.label_smoothing} if cfg.loss in ("minimax", "nonsaturating", "lsgan") else {}
    max_norm = t.max_grad_norm if t.max_grad_norm > 0 else float("inf")

    judge = load_judge() if accelerator.is_main_process else None  # before the resume: building it draws random numbers
    eval_z = torch.randn(t.eval_samples, cfg.latent_dim, generator=torch.Generator().manual_seed(t.seed + 7919))

    step, epoch, position = 0, 0, 0
    logger = MetricsLogger(out, accelerator.is_main_process, t.tensorboard)
    if accelerator.is_main_process:
        remove_partial(out)
    resumed = resume_checkpoint(accelerator, out, t.resume, saved)
    if resumed is not None:
        resume_from, state = resumed
        step, epoch, position = state["global_step"], state["epoch"], state["position"]
        logger.truncate_after(step, redo_eval=step >= t.max_steps)  # the final evaluation below runs again
        accelerator.print(f"resumed from {resume_from} at step {step}")
    data = iterate_batches(
        shuffled_batches(len(real_images), t.batch_size, t.seed),
        accelerator.process_index,
        accelerator.num_processes,
        epoch,
        position,
    )

    def evaluate(step: int) -> dict:
        """FID / IS / KID of samples from fixed noise, plus a sample grid PNG (main process only)."""
        gen = accelerator.unwrap_model(G)
        gen.eval()
        with torch.no_grad():
            fakes = torch.cat([gen(z.to(accelerator.device)).float().cpu() for z in eval_z.split(256)])
        gen.train()
        if not torch.isfinite(fakes).all():
            raise UserError(
                f"the generator produced NaN/Inf at step {step}; lower the learning rates or set train.max_grad_norm"
            )
        scores = judge_images(judge, fakes)
        atomic_write_bytes(out / "samples" / f"step_{step:06d}.png", image_grid_png(fakes[:64]))
        metrics = {"fid": scores["fid"], "is": scores["is"], "kid": scores["kid"]}
        logger.log(step, "eval", **metrics)
        accelerator.print(f"step {step}: fid {metrics['fid']:.2f} is {metrics['is']:.2f}")
        return metrics

    def real_batch() -> torch.Tensor:
        nonlocal epoch, position
        epoch, position, idx = next(data)
        return real_images[idx].to(accelerator.device)

    if t.eval_at_start and step == 0 and accelerator.is_main_process:
        evaluate(step)
    sums: dict[str, float] = {}  # running sums of this log window's values, and their count
    count = 0
    start = time.perf_counter()
    G.train()
    D.train()
    while step < t.max_steps:
        # Discriminator (critic): n_critic steps, each on a fresh real batch and fresh fakes.
        for _ in range(n_critic):
            real = real_batch()
            with torch.no_grad(), accelerator.autocast():
                fake = G(noise.z(len(real), cfg.latent_dim))  # no graph into G: only D learns here
            with accelerator.autocast():
                real_out, fake_out = d_out(real), d_out(fake)
                d_loss = d_fn(real_out, fake_out, **real_label)
                gp = gradient_penalty(D, real, fake, generator=noise.generator) if cfg.loss == "wgan_gp" else None
                total = d_loss + cfg.gp_weight * gp if gp is not None else d_loss
            opt_d.zero_grad(set_to_none=True)
            accelerator.backward(total)
            d_norm = accelerator.clip_grad_norm_(D.parameters(), max_norm)
            opt_d.step()
            if clip_value > 0:
                clip_weights_(accelerator.unwrap_model(D), clip_value)  # after the step: the paper's order
        # Generator: one step through the (now fixed) D; D's grads from this backward are zeroed above.
        with accelerator.autocast():
            fake_out_g = d_out(G(noise.z(t.batch_size, cfg.latent_dim)))
            g_loss = g_fn(fake_out_g)
        opt_g.zero_grad(set_to_none=True)
        accelerator.backward(g_loss)
        g_norm = accelerator.clip_grad_norm_(G.parameters(), max_norm)
        opt_g.step()
        step += 1

        values = {
            "d_loss": d_loss,
            "g_loss": g_loss,
            "d_real": real_out.mean(),
            "d_fake": fake_out.mean(),
            "d_grad_norm": d_norm,
            "g_grad_norm": g_norm,
            **({"gp": gp} if gp is not None else {}),
        }
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        count += 1
        if not (torch.isfinite(d_loss) and torch.isfinite(g_loss)):
            raise UserError(
                f"GAN losses became non-finite at step {step} (d {float(d_loss)}, g {float(g_loss)}); "
                "lower the learning rates, set train.max_grad_norm or spectral_norm=true"
            )
        if step % t.log_every == 0 or step == t.max_steps:
            logger.log(step, "train", **{k: v / count for k, v in sums.items()}, epoch=epoch)
            sums, count = {}, 0
        if accelerator.is_main_process and t.eval_every and step % t.eval_every == 0 and step != t.max_steps:
            evaluate(step)
        if t.save_every and step % t.save_every == 0:
            state = {"global_step": step, "epoch": epoch, "position": position, "world_size": accelerator.num_processes}
            save_checkpoint(accelerator, out, step, state, t.keep_last, saved)
    wall = time.perf_counter() - start

    summary = {}
    if accelerator.is_main_process:
        final = evaluate(step)
        gen = accelerator.unwrap_model(G)
        weights = {k: v.detach().cpu().contiguous() for k, v in gen.state_dict().items()}
        atomic_write_bytes(out / "generator.safetensors", safetensors_bytes(weights, metadata={"format": "pt"}))
        records = read_metrics(out)
        last = ([r for r in records if r["split"] == "train"] or [{}])[-1]
        start_fid = [r["fid"] for r in records if r["split"] == "eval" and r["step"] == 0]
        summary = {
            **final,
            "step": step,
            "train_seconds": round(wall, 2),
            "loss": cfg.loss,
            "fid_start": start_fid[0] if start_fid else None,
            "d_loss": last.get("d_loss"),
            "g_loss": last.get("g_loss"),
        }
        atomic_write_json(out / "summary.json", summary)
        plot_loss_curve(out, keys=("d_loss", "g_loss"))
    logger.close()
    accelerator.wait_for_everyone()
    return summary


if __name__ == "__main__":
    main()
