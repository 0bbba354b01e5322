"""Fine-tune Stable Diffusion (SD1.x/2.x or SDXL, read from the model): DreamBooth (LoRA or full, with prior
preservation), textual inversion, LoRA on captioned images or full text-to-image training. One recipe; `method`,
`data` and `prior` pick. SDXL conditions on both text encoders, the pooled text and each image's time ids.

    accelerate launch --config_file accelerate_config.yaml recipes/train_sd.py \
        --config recipes/configs/sd_dreambooth_lora.yaml [key=value ...]

Writes the artifact (pytorch_lora_weights.safetensors [+ lora_kohya.safetensors], learned_embeds.safetensors,
or pipeline/), sample grids (samples/step-N.png, before_after.png), metrics.jsonl and summary.json.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed

from finetune.config import parse_recipe_args
from finetune.data.images import check_resolution
from finetune.data.sd import (
    PromptEmbeddings,
    SDDataConfig,
    TrainItems,
    XLPromptEmbeddings,
    build_image_dataset,
    cache_all_latents,
    dataset_items,
    epoch_batches,
    fixed_validation_batches,
    image_sizes,
    make_collate,
    split_validation,
    validate_data,
)
from finetune.errors import UserError, exit_on_user_error
from finetune.export.sd import save_image_grid
from finetune.io import atomic_write_json
from finetune.losses.diffusion import (
    DiffusionLossConfig,
    diffusion_loss,
    diffusion_target,
    offset_noise,
    prior_preservation_loss,
    snr_weights,
    split_prior_batch,
)
from finetune.methods.dreambooth import PriorConfig, class_image_prompts, ensure_class_images, validate_prior
from finetune.methods.hypernetwork import HypernetworkConfig
from finetune.methods.sd_distill import DistillConfig
from finetune.methods.sd_lora import SDLoraConfig
from finetune.methods.sd_registry import SD_METHODS, SDMethodName
from finetune.methods.textual_inversion import RowRestorer, TextualInversionConfig, check_placeholder
from finetune.models.sd import SDModelConfig, build_pipeline, load_sd_components, tokenize_prompts
from finetune.models.sd_denoiser import (
    EfficiencyConfig,
    SDDenoiser,
    TextEncoderConfig,
    ValidationConfig,
    XLCond,
    attention_processor,
    batch_cond,
    fixed_noise_loss,
    on_device,
    sample_images,
    sample_latents,
    step_probe,
    xl_time_ids,
)
from finetune.optim.optimizers import OptimConfig, build_optimizer, param_groups, validate_optim_config
from finetune.optim.schedulers import SchedulerConfig, build_scheduler
from finetune.train import Hooks, TrainConfig, build_accelerator, start_run, train, weight_dtype
from finetune.train.checkpoint import check_output_dir
from finetune.train.ema import EMAConfig, build_ema, ema_weights
from finetune.train.loop import validate_train_config
from finetune.train.precision import cast_frozen
from finetune.train.setup import conv_backend, cpu_conv_backend, finished_run, uses_channels_last


@dataclass
class SDRecipeConfig:
    method: SDMethodName = "lora"  # what trains: UNet LoRA, all UNet weights, new token embeddings, a distilled UNet
    model: SDModelConfig = field(default_factory=SDModelConfig)  # which Stable Diffusion, its resolution and objective
    data: SDDataConfig = field(default_factory=SDDataConfig)  # instance images + prompt, or a captioned folder
    prior: PriorConfig = field(default_factory=PriorConfig)  # DreamBooth prior preservation (class images)
    lora: SDLoraConfig = field(default_factory=SDLoraConfig)  # method=lora: rank, alpha, target modules
    textual_inversion: TextualInversionConfig = field(
        default_factory=TextualInversionConfig
    )  # method=textual_inversion
    distill: DistillConfig = field(default_factory=DistillConfig)  # method=distill_unet: student variant, loss weights
    hypernetwork: HypernetworkConfig = field(default_factory=HypernetworkConfig)  # method=hypernetwork: MLP layout
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)  # optional text-encoder training
    loss: DiffusionLossConfig = field(default_factory=DiffusionLossConfig)  # loss weighting and noise options
    ema: EMAConfig = field(default_factory=EMAConfig)  # EMA of the trained weights
    efficiency: EfficiencyConfig = field(default_factory=EfficiencyConfig)  # caching, memory and attention
    validation: ValidationConfig = field(default_factory=ValidationConfig)  # sample grids and fixed-noise loss
    kohya: bool = False  # method=lora: also write lora_kohya.safetensors (A1111 / ComfyUI / kohya)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(save_best=False)
    )  # loop settings; no best/ copies of big artifacts by default
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=1e-2, fused=True)
    )  # AdamW, one fused kernel
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)  # lr schedule


def check_combination(cfg: SDRecipeConfig) -> None:
    """Refuse settings that cannot work together, before any image or model loads."""
    validate_train_config(cfg.train)
    validate_optim_config(cfg.optim)
    check_resolution(cfg.model.resolution)
    validate_data(cfg.data, cfg.method)
    validate_prior(cfg.prior)
    method = SD_METHODS[cfg.method]
    method.check(cfg)  # its own refusals (finetune/methods/sd_registry.py)
    if cfg.prior.enabled and (not method.prior_preservation or cfg.data.caption_dir):
        with_prior = " or ".join(f"method={name}" for name, m in SD_METHODS.items() if m.prior_preservation)
        raise UserError(f"prior.enabled is DreamBooth's: it needs data.instance_dir with {with_prior}")
    if cfg.kohya and cfg.method != "lora":
        raise UserError("kohya=true exports a LoRA; it needs method=lora")
    if cfg.validation.holdout and not cfg.data.caption_dir:
        raise UserError("validation.holdout applies to data.caption_dir folders; unset it for instance images")


@exit_on_user_error
def main(argv=None):
    cfg = parse_recipe_args(SDRecipeConfig, argv, description=__doc__)
    check_combination(cfg)
    with contextlib.ExitStack() as scope:  # what the run sets process-wide (the CPU conv kernels) ends with it
        return run(cfg, scope)


def run(cfg: SDRecipeConfig, scope: contextlib.ExitStack):
    """The run, its config checked; what it sets process-wide enters `scope`."""
    if (done := finished_run(cfg.train)) is not None:
        return done  # finished_run has said so in one line; this is the summary the run wrote
    check_output_dir(cfg.train.output_dir, cfg.train.resume, cfg.train.overwrite_output_dir)
    accelerator = build_accelerator(cfg.train.seed)
    device, dtype, res, seed = accelerator.device, weight_dtype(accelerator), cfg.model.resolution, cfg.train.seed
    method = SD_METHODS[cfg.method]  # its config section, what trains, how it saves (finetune/methods/sd_registry.py)

    # Model and data, validated before anything is written: a bad folder, image or token leaves no output_dir.
    parts = load_sd_components(cfg.model)
    # distill_unet: the loaded UNet is the frozen teacher; the smaller student cut from it is the UNet that trains.
    distill = method.distillation(parts.unet, parts.text_encoder, cfg) if method.distillation else None
    if distill is not None:
        parts.unet = distill.student
    set_seed(seed)  # building a tiny model reseeds torch; training noise must follow train.seed
    vae, text_encoder, tokenizer, unet, noise_scheduler = (
        parts.vae,
        parts.text_encoder,
        parts.tokenizer,
        parts.unet,
        parts.noise_scheduler,
    )
    text_encoder_2 = parts.text_encoder_2  # SDXL's second (CLIP-G) encoder; None for SD1.x/2.x
    if parts.is_xl and not method.xl:
        raise UserError(
            f"method={cfg.method} is for SD1.x/2.x models; this one is SDXL: use lora, full or textual_inversion"
        )
    tokenizers = [tok for tok, _ in parts.text_encoders]  # SD1.x/2.x: one (tokenizer, encoder) pair; SDXL: two
    encoders = [encoder for _, encoder in parts.text_encoders]
    # diffusers is imported here, after finetune: its import-time library notices then meet finetune.quiet's filters
    from diffusers.training_utils import cast_training_params

    unet.set_attn_processor(attention_processor(cfg.efficiency.attention))
    # Textual inversion: the new word joins the tokenizer(s) first, as every prompt of its data names it; SDXL's
    # word must be new in both tokenizers, checked before either changes.
    concept = None
    if method.concept:
        for name, tok in zip(("tokenizer", "tokenizer_2"), tokenizers):
            check_placeholder(tok, cfg.textual_inversion, name)
        concepts = [method.concept(tok, encoder, cfg) for tok, encoder in parts.text_encoders]
        concept = concepts[0]  # the same prompts for both encoders; each has its own token ids
    bucket = 8 * parts.vae_scale_factor  # aspect buckets: latent sides stay multiples of 8 (SD: 64 px)
    images = build_image_dataset(
        cfg.data, res, seed, instance_prompt=concept.instance_prompt if concept else "", bucket_multiple=bucket
    )
    out = start_run(accelerator, cfg, cfg.train)

    # DreamBooth prior preservation: class images come from the BASE model, so before any weight changes.
    generated = 0
    if cfg.prior.enabled:
        if accelerator.is_main_process:
            with on_device([vae, *encoders, unet], device):
                generated = ensure_class_images(build_pipeline(parts), cfg.prior, res, seed, accelerator.autocast)
        accelerator.wait_for_everyone()
        images = build_image_dataset(cfg.data, res, seed, class_items=class_image_prompts(cfg.prior))

    # Trainable parameters: everything starts frozen and the method unfreezes its part.
    for module in (vae, *encoders, unet):
        module.requires_grad_(False)
    xl_kwargs = {"text_encoder_2": text_encoder_2} if parts.is_xl else {}
    unet_params, te_params = method.trainable(unet, text_encoder, cfg, **xl_kwargs)
    te_trains = bool(te_params)
    # Frozen weights in the mixed-precision dtype, trained ones in fp32 (fp16/bf16 master weights lose small updates);
    # a method may keep its text encoder fp32 (textual inversion: its entry says why).
    cast_frozen(unet.to(device).parameters(), dtype)
    for encoder in encoders:
        cast_frozen(encoder.to(device).parameters(), torch.float32 if method.text_encoder_fp32 else dtype)
    cast_training_params([unet, *encoders], torch.float32)  # diffusers' guard; they never left fp32 here
    vae.to(device, torch.float32 if cfg.efficiency.vae_fp32 else dtype)
    if distill is not None:
        distill.to(device, dtype)  # the teacher is frozen: the weight dtype, like the other frozen parts
    # textual inversion: only the new rows may change; made after the cast, so its copy has their device and dtype
    restorers = (
        [RowRestorer(e.get_input_embeddings().weight, c.token_ids) for e, c in zip(encoders, concepts)]
        if concept
        else []
    )
    if cfg.efficiency.channels_last is True:  # a fixed layout: the kernel probe below times the run's own
        unet.to(memory_format=torch.channels_last)
    if cfg.efficiency.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if te_trains:
            for encoder in encoders:
                encoder.gradient_checkpointing_enable()

    # Caching: the VAE is frozen, so each image's latent distribution is computed once; so are the prompts'
    # embeddings when the text encoder is frozen. Training steps then never run either encoder.
    started = time.perf_counter()
    items = dataset_items(images)
    train_idx, val_idx = split_validation(
        len(items), cfg.validation.holdout, cfg.validation.loss_images, cfg.train.batch_size
    )
    val_items = cache_all_latents(
        vae, images, items, val_idx, device, cfg.efficiency.cache_latents, cfg.train.batch_size
    )
    prompts = sorted({p for it in items for p in (it["prompt"], it.get("class_prompt", it["prompt"]))} | {""})
    embeds: PromptEmbeddings | XLPromptEmbeddings | None = None
    if cfg.efficiency.cache_text and not te_trains:
        embeds = (
            XLPromptEmbeddings(encoders, tokenizers, prompts, device, dtype, res)
            if parts.is_xl
            else PromptEmbeddings(text_encoder, tokenizer, prompts, device, dtype)
        )
    if cfg.efficiency.offload_frozen and device.type != "cpu" and cfg.efficiency.cache_latents:
        vae.to("cpu")  # GPU memory: the VAE only comes back to decode validation samples
        if embeds is not None:
            for encoder in encoders:
                encoder.to("cpu")
    cache_seconds = time.perf_counter() - started
    collate = make_collate(
        tokenizer,
        embeds,
        concept.training_prompt if concept else None,
        cfg.data.caption_dropout,
        tokenizer_2=parts.tokenizer_2 if embeds is None else None,
    )
    dataset = TrainItems(images, items, train_idx)

    core = SDDenoiser(unet, *(encoders if embeds is None else []))

    def cond_fn(prompts: list[str], time_ids: torch.Tensor | None = None) -> torch.Tensor | XLCond:
        """Conditioning for validation and the kernel probe: cached embeddings or token ids (SDXL: with time ids,
        an uncropped square image's when none are given)."""
        if embeds is not None:
            return embeds(prompts, time_ids)
        if not parts.is_xl:
            return tokenize_prompts(tokenizer, prompts)
        time_ids = time_ids if time_ids is not None else xl_time_ids(res, len(prompts))
        ids = [tokenize_prompts(tok, prompts) for tok in tokenizers]
        return XLCond(time_ids, input_ids=ids[0], input_ids_2=ids[1])

    # CPU: oneDNN or native convolution kernels, whichever runs this model's step faster (no-op on GPUs); the
    # UNet's layout follows them. Chosen after the caching: decoding photos on top of the probe's buffers peaked 3-9
    # MiB higher (tiny SD, 1024x1280 photos).
    side, n = res // parts.vae_scale_factor, cfg.train.batch_size * (2 if cfg.prior.enabled else 1)
    probe = step_probe(
        core,
        unet_params + te_params,
        cond_fn,
        items[0]["prompt"],
        (n, unet.config.in_channels, side, side),
        device,
        accelerator.autocast,
    )
    conv = cpu_conv_backend(
        cfg.efficiency.conv_backend, probe, accelerator, out / "conv_backend.json", reuse=bool(cfg.train.resume)
    )
    channels_last = uses_channels_last(cfg.efficiency.channels_last, conv)
    if channels_last and cfg.efficiency.channels_last == "auto":
        unet.to(memory_format=torch.channels_last)
    scope.enter_context(conv_backend(conv))  # validation, samples and training run on the chosen kernels

    groups = param_groups(unet.named_parameters(), cfg.optim.weight_decay)
    for encoder in encoders:
        groups += param_groups(
            encoder.named_parameters(), cfg.optim.weight_decay, lr=cfg.text_encoder.lr or cfg.optim.lr
        )
    optimizer = build_optimizer(groups, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.train.max_steps)
    denoiser, optimizer = accelerator.prepare(core, optimizer)
    trainable = unet_params + te_params
    ema = build_ema(trainable, cfg.ema)
    n_trained = method.trained_count(cfg, unet_params, te_params)  # textual inversion: its new rows only
    accelerator.print(
        f"method {cfg.method}: {n_trained:,} trained parameters; "
        f"{len(dataset)} training items; cached latents={cfg.efficiency.cache_latents} text={embeds is not None}"
    )

    prediction_type, num_timesteps = parts.prediction_type, noise_scheduler.config.num_train_timesteps

    def step_fn(batch):
        latents = sample_latents(vae, batch)  # cached mean + std * eps, or the VAE now
        cond = batch_cond(batch)  # SD1.x/2.x: embeddings or token ids; SDXL: + pooled text and per-image time ids
        noise = offset_noise(latents, cfg.loss.noise_offset)
        timesteps = torch.randint(0, num_timesteps, (latents.shape[0],), device=latents.device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        target = diffusion_target(noise_scheduler, latents, noise, timesteps, prediction_type)  # eps, v or x0
        pred = denoiser(noisy, timesteps, cond)
        weights = (
            snr_weights(noise_scheduler, timesteps, cfg.loss.snr_gamma, prediction_type) if cfg.loss.snr_gamma else None
        )
        if not cfg.prior.enabled and distill is not None:
            # distill_unet: w_denoise * denoise + w_out * MSE(pred, teacher's) + w_feat * sum MSE(stage outputs)
            return distill.loss(diffusion_loss(pred, target, weights), pred, noisy, timesteps, cond)
        if not cfg.prior.enabled:
            return diffusion_loss(pred, target, weights)
        # DreamBooth: the batch is instance examples then class examples; loss = instance + lambda * prior.
        (pred_i, pred_c), (target_i, target_c) = split_prior_batch(pred), split_prior_batch(target)
        w_i, w_c = split_prior_batch(weights) if weights is not None else (None, None)
        instance, prior = diffusion_loss(pred_i, target_i, w_i), diffusion_loss(pred_c, target_c, w_c)
        loss = prior_preservation_loss(instance, prior, cfg.prior.loss_weight)
        return loss, {"instance_loss": instance.detach(), "prior_loss": prior.detach()}

    val = fixed_validation_batches(val_items, noise_scheduler, cfg.validation.seed)
    default_prompts = [concept.sample_prompt] if concept else sorted({it["prompt"] for it in items})[:2]
    sample_prompts = cfg.validation.prompts or default_prompts

    def validation_loss() -> float:
        with torch.no_grad(), accelerator.autocast():
            return fixed_noise_loss(core, vae, noise_scheduler, val, cond_fn, prediction_type, device)

    def samples() -> list:
        if not (cfg.validation.grids and accelerator.is_main_process):
            return []
        with on_device([vae, *encoders], device):
            pipe = build_pipeline(parts, unet=unet, text_encoder=text_encoder, text_encoder_2=text_encoder_2)
            return sample_images(pipe, sample_prompts, cfg.validation, res, accelerator.autocast)

    def eval_fn(step: int) -> dict:
        with ema_weights(ema, trainable):
            metrics = {"val_loss": validation_loss()}
            if images_now := samples():
                save_image_grid(images_now, len(sample_prompts), out / "samples" / f"step-{step:06d}.png")
        return metrics

    def save_fn(path: Path) -> list[Path]:
        with ema_weights(ema, trainable):  # the EMA weights, when kept, are the ones saved
            return method.save(path, parts, cfg, dtype)

    def before_optimizer_step(step: int) -> None:
        if cfg.text_encoder.stop_step and step >= cfg.text_encoder.stop_step:
            for p in te_params:  # a None grad: AdamW neither updates nor decays it
                p.grad = None

    def before_step(step: int, epoch: int) -> None:
        images.set_epoch(epoch)  # new crops/flips each epoch when latents are not cached

    def after_optimizer_step(step: int) -> None:
        for restorer in restorers:
            restorer(step)  # textual inversion: only the new embedding rows may change
        if ema is not None:
            ema.step(trainable)

    before_loss, before_images = validation_loss(), samples()
    hooks = Hooks(
        before_step=before_step, before_optimizer_step=before_optimizer_step, after_optimizer_step=after_optimizer_step
    )
    batches_fn = (
        epoch_batches([items[i]["bucket"] for i in train_idx], cfg.train.batch_size, seed)
        if cfg.data.aspect_buckets
        else None
    )
    result = train(
        accelerator=accelerator,
        model=denoiser,
        optimizer=optimizer,
        scheduler=scheduler,
        dataset=dataset,
        collate_fn=collate,
        step_fn=step_fn,
        cfg=cfg.train,
        eval_fn=eval_fn,
        save_fn=save_fn,
        hooks=hooks,
        batches_fn=batches_fn,
        checkpoint_objects=(ema,) if ema is not None else (),
    )

    # Outputs (main process): the artifact, the before/after grid and the summary.
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    after_images = samples()
    artifacts = save_fn(out)
    if before_images and after_images:
        save_image_grid(before_images + after_images, 2, out / "before_after.png")
    summary = {
        "method": cfg.method,
        "family": "sdxl" if parts.is_xl else "sd",
        "prior_preservation": cfg.prior.enabled,
        "steps": result.global_step,
        # the loop's timing (finetune/train/loop.py): optimizer steps only, evaluations and checkpoints left out
        "train_seconds": round(result.train_seconds, 3),
        "steps_per_second": round(result.trained_steps / result.train_seconds, 3) if result.train_seconds > 0 else None,
        "median_step_seconds": statistics.median(result.step_seconds) if result.step_seconds else None,
        "train_peak_memory": result.peak_memory,
        "cache_seconds": round(cache_seconds, 3),
        "class_images_generated": generated,
        "trained_parameters": n_trained,
        "conv_backend": conv,
        "channels_last": channels_last,
        "image_sizes": image_sizes(images, items),
        "val_loss_before": before_loss,
        "val_loss_after": result.last_eval.get("val_loss"),
        "nonfinite_steps": result.nonfinite_steps,
        "artifacts": [str(Path(p).relative_to(out)) for p in artifacts],
        "sample_prompts": sample_prompts,
        # after training and the last validation: trained weights must still be fp32, frozen ones in the weight dtype
        "trainable_dtypes": sorted({str(p.dtype) for p in trainable}),
        "frozen_dtypes": sorted(
            {str(p.dtype) for m in (unet, *encoders) for p in m.parameters() if not p.requires_grad}
        ),
        "vae_dtype": str(vae.dtype),
    }
    atomic_write_json(out / "summary.json", summary)
    print(f"validation loss {before_loss:.4f} -> {summary['val_loss_after']:.4f}; artifacts: {summary['artifacts']}")
    print(json.dumps({"steps_per_second": summary["steps_per_second"]}))
    return summary


if __name__ == "__main__":
    main()
