"""Stable Diffusion parts: load them (diffusers dir, hub id, single .safetensors file) or build them.

Everything a Stable Diffusion recipe needs comes out of here as one `SDParts`: the VAE, the CLIP text
encoder and tokenizer (SDXL: both, `text_encoder_2` being CLIP-G with its projection), the UNet, a DDPM noise scheduler for training (prediction type taken from the
model, overridable) and a sampling scheduler for validation images. `build_tiny_sd` builds the same
architecture from small configs with random weights and an offline tokenizer, so tests and the digits
world run without the hub (`build_tiny_sdxl`: the same for SDXL); `sd15_configs` gives SD1.5-sized configs for GPU benchmarks through the very
same builder.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from finetune.errors import UserError

PREDICTION_TYPES = ("epsilon", "v_prediction")
# family -> the name users know it by: SD1.x/2.x (one CLIP text encoder), SDXL (two, plus pooled text and time ids)
FAMILIES = {"sd": "SD1.x/2.x", "sdxl": "SDXL"}

# SD1.x's own noise schedule; clip_sample stays off because latents are not bounded to [-1, 1].
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


@dataclass
class SDModelConfig:
    pretrained: str = ""  # "" with tiny=True, a diffusers directory, a hub id, or a single-file .safetensors checkpoint
    tiny: bool = (
        False  # build a tiny randomly initialised SD from small configs (tests, digits world); ignores `pretrained`
    )
    prediction_type: str | None = (
        None  # override the model's objective: "epsilon" or "v_prediction"; None keeps the model's
    )
    revision: str | None = None  # hub revision (branch, tag or commit) when `pretrained` is a hub id
    variant: str | None = None  # weight variant file to load, e.g. "fp16"; None loads the default weights
    resolution: int = 512  # training image side in pixels; must be a multiple of 8 (the VAE downsamples by 8)
    single_file_config: str | None = (
        None  # diffusers dir or hub id with component configs for a single-file checkpoint (offline use)
    )
    family: Literal["auto", "sd", "sdxl"] = (
        "auto"  # auto: read from the model (SDXL: two text encoders / a text_time UNet); with tiny=true picks which
    )


@dataclass
class SDParts:
    """The components of a Stable Diffusion model, ready for a training recipe."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler  # adds noise during training; its config carries the prediction type
    pipeline_cls: type  # the diffusers pipeline class that assembles these parts for inference
    sample_scheduler_config: dict  # config (with "_class_name") of the scheduler used to sample images
    text_encoder_2: Any = None  # SDXL: CLIP-G (CLIPTextModelWithProjection); None for SD1.x/2.x
    tokenizer_2: Any = None  # SDXL: its tokenizer

    @property
    def is_xl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def text_encoders(self) -> list:
        """(tokenizer, text encoder) pairs: one for SD1.x/2.x, two for SDXL."""
        pairs = [(self.tokenizer, self.text_encoder)]
        return pairs + [(self.tokenizer_2, self.text_encoder_2)] if self.is_xl else pairs

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_sd_components(cfg: SDModelConfig, torch_dtype: torch.dtype = torch.float32) -> SDParts:
    """Load (or, with cfg.tiny, build) the SD parts described by `cfg`, validated early."""
    if cfg.prediction_type is not None and cfg.prediction_type not in PREDICTION_TYPES:
        raise UserError(
            f"prediction_type={cfg.prediction_type!r} is unknown; use one of {PREDICTION_TYPES} or leave it unset"
        )
    if cfg.resolution <= 0 or cfg.resolution % 8 != 0:
        raise UserError(
            f"resolution={cfg.resolution} must be a positive multiple of 8 (e.g. {max(8, cfg.resolution // 8 * 8)})"
        )
    if cfg.tiny:
        if cfg.family == "sdxl":
            parts = parts_of_pipeline(build_tiny_sdxl(sample_size=cfg.resolution // 2))
        else:
            parts = build_tiny_sd(sample_size=cfg.resolution // 2)
        parts = _to_dtype(parts, torch_dtype)
    elif not cfg.pretrained:
        raise UserError(
            "model.pretrained is empty; set it to a diffusers directory, a hub id or a .safetensors file, or set model.tiny=true"
        )
    else:
        parts = _load_pretrained(cfg, torch_dtype)
    return _with_prediction_type(parts, cfg.prediction_type)


def _load_pretrained(cfg: SDModelConfig, torch_dtype: torch.dtype) -> SDParts:
    path = Path(os.path.expanduser(cfg.pretrained))
    if path.is_file():
        return _load_single_file(path, cfg, torch_dtype)
    if path.is_dir():
        _check_diffusers_dir(path)
        return _load_diffusers(str(path), cfg, torch_dtype)
    if _looks_like_path(cfg.pretrained):
        raise UserError(
            f"model path {cfg.pretrained} does not exist; point model.pretrained at a diffusers directory or a .safetensors file"
        )
    return _load_diffusers(cfg.pretrained, cfg, torch_dtype)  # a hub id


def _looks_like_path(name: str) -> bool:
    """A hub id is "owner/name"; anything else that does not exist locally is a mistyped path."""
    if name.startswith(("/", "./", "../", "~", "\\")) or name.endswith((".safetensors", ".ckpt", ".pt", ".bin")):
        return True
    return name.count("/") != 1


def _check_diffusers_dir(path: Path) -> None:
    index = path / "model_index.json"
    if not index.is_file() or not (path / "unet").is_dir():
        raise UserError(
            f"{path} is not a diffusers Stable Diffusion directory (needs model_index.json and unet/); "
            "save one with pipeline.save_pretrained or pass a single-file .safetensors checkpoint"
        )
    class_name = json.loads(index.read_text()).get("_class_name", "")
    if "Refiner" in class_name or "Img2Img" in class_name:
        raise UserError(f"{path} holds {class_name}; train a base model (the SDXL refiner is not supported)")


def check_family(found: str, cfg: SDModelConfig, where: str) -> None:
    """Refuse a model of the other family than the config names, in one line that names the fix."""
    if cfg.family not in ("auto", found):
        raise UserError(
            f"{where} is an {FAMILIES[found]} model but model.family={cfg.family}; "
            f"set model.family={found} (or auto), or point model.pretrained at an {FAMILIES[cfg.family]} model"
        )


def _unet_family(name: str, common: dict) -> str:
    """SDXL's UNet adds the pooled text embedding and time ids to its time embedding ("text_time")."""
    unet_config = UNet2DConditionModel.load_config(name, subfolder="unet", **common)
    return "sdxl" if unet_config.get("addition_embed_type") == "text_time" else "sd"


def _load_diffusers(name: str, cfg: SDModelConfig, torch_dtype: torch.dtype) -> SDParts:
    """Load each component from its subfolder of a diffusers directory or hub repo (safetensors only)."""
    from transformers import CLIPTextModelWithProjection

    common = {"revision": cfg.revision}
    weights = {**common, "variant": cfg.variant, "use_safetensors": True, "dtype": torch_dtype}
    try:
        # The scheduler config first: one small file, so a wrong hub id or no network fails fast.
        scheduler_config = dict(DDPMScheduler.load_config(name, subfolder="scheduler", **common))
        family = _unet_family(name, common)  # before any weights: a model of the wrong family loads nothing
        check_family(family, cfg, repr(name))
        tokenizers = [CLIPTokenizer.from_pretrained(name, subfolder="tokenizer", **common)]
        encoders = [CLIPTextModel.from_pretrained(name, subfolder="text_encoder", **weights)]
        if family == "sdxl":
            tokenizers.append(CLIPTokenizer.from_pretrained(name, subfolder="tokenizer_2", **common))
            encoders.append(CLIPTextModelWithProjection.from_pretrained(name, subfolder="text_encoder_2", **weights))
        vae = AutoencoderKL.from_pretrained(name, subfolder="vae", **weights)
        unet = UNet2DConditionModel.from_pretrained(name, subfolder="unet", **weights)
    except (OSError, ValueError, KeyError) as e:  # missing files, no safetensors, no network for a hub id
        raise UserError(
            f"could not load Stable Diffusion from {name!r} ({_first_line(e)}); check the path or hub id, "
            "that the weights are .safetensors (variant/revision if set), and network access for hub ids"
        ) from e
    for tokenizer in tokenizers:
        # transformers returns a specials-only tokenizer when the vocabulary files are missing
        if len(tokenizer) <= 256:
            raise UserError(
                f"the tokenizer of {name!r} has no vocabulary ({len(tokenizer)} tokens); its tokenizer/ folder "
                "needs vocab.json + merges.txt or tokenizer.json"
            )
    parts = _assemble(vae, encoders[0], tokenizers[0], unet, scheduler_config)
    return _with_xl(parts, encoders[1], tokenizers[1]) if family == "sdxl" else parts


def _load_single_file(path: Path, cfg: SDModelConfig, torch_dtype: torch.dtype) -> SDParts:
    """A single A1111-style checkpoint, converted by diffusers' own single-file loader."""
    if path.suffix != ".safetensors":
        raise UserError(
            f"{path} is not a .safetensors checkpoint; single files are read as .safetensors only "
            "(pickle .ckpt/.pt/.bin files can run code when loaded: convert them first)"
        )
    from diffusers import StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError  # raised for a part missing from the file

    family = single_file_family(path)  # from its keys alone: nothing is loaded for a file of the wrong family
    check_family(family, cfg, str(path))
    if cfg.single_file_config and Path(cfg.single_file_config).is_dir():
        config_family = "sdxl" if (Path(cfg.single_file_config) / "text_encoder_2").is_dir() else "sd"
        if config_family != family:
            raise UserError(
                f"{path} is an {FAMILIES[family]} checkpoint but model.single_file_config={cfg.single_file_config} "
                f"holds {FAMILIES[config_family]} configs; point it at an {FAMILIES[family]} diffusers directory"
            )
    # No safety checker. (`load_safety_checker=False` would not do: diffusers treats any value of that deprecated
    # flag as a request and downloads CompVis/stable-diffusion-safety-checker from the hub.) SDXL has none.
    extra = (
        {}
        if family == "sdxl"
        else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    )
    pipeline_cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    try:
        pipe = pipeline_cls.from_single_file(str(path), dtype=torch_dtype, config=cfg.single_file_config, **extra)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, SingleFileComponentError) as e:
        raise UserError(
            f"could not load single-file checkpoint {path} ({_first_line(e)}); offline you must set "
            "model.single_file_config to a diffusers dir with the configs of the same family (SD1.x/2.x or SDXL)"
        ) from e
    return parts_of_pipeline(pipe)


# Keys only an SDXL (LDM/SGM layout) checkpoint has: its second text encoder and the UNet's added embedding.
_SDXL_KEYS = ("conditioner.embedders.1.", "model.diffusion_model.label_emb.")


def single_file_family(path: Path) -> str:
    """ "sdxl" or "sd" from a single-file checkpoint's tensor names (read from its header, no weights loaded). A file
    without SDXL's keys counts as SD1.x/2.x: diffusers' SD loader then names the part it lacks."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable .safetensors file ({_first_line(e)}); re-download it") from e
    return "sdxl" if any(k.startswith(_SDXL_KEYS) for k in keys) else "sd"


def parts_of_pipeline(pipe) -> SDParts:
    """SDParts from a loaded diffusers pipeline (SD or SDXL)."""
    parts = _assemble(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, dict(pipe.scheduler.config))
    if getattr(pipe, "text_encoder_2", None) is None:
        return parts
    return _with_xl(parts, pipe.text_encoder_2, pipe.tokenizer_2)


def _with_xl(parts: SDParts, text_encoder_2, tokenizer_2) -> SDParts:
    from diffusers import StableDiffusionXLPipeline

    parts.text_encoder_2, parts.tokenizer_2, parts.pipeline_cls = text_encoder_2, tokenizer_2, StableDiffusionXLPipeline
    return parts


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _assemble(vae, text_encoder, tokenizer, unet, scheduler_config: dict) -> SDParts:
    """Training scheduler: a DDPM one with the model's schedule. Sampling: the model's own scheduler class."""
    scheduler_config = {k: v for k, v in scheduler_config.items() if k != "_use_default_values"}
    noise_scheduler = DDPMScheduler.from_config({**scheduler_config, "clip_sample": False})
    sample_config = {"_class_name": "DDIMScheduler", **scheduler_config, "clip_sample": False}
    return SDParts(vae, text_encoder, tokenizer, unet, noise_scheduler, StableDiffusionPipeline, sample_config)


def _with_prediction_type(parts: SDParts, prediction_type: str | None) -> SDParts:
    if prediction_type is None:
        return parts
    parts.noise_scheduler = DDPMScheduler.from_config(parts.noise_scheduler.config, prediction_type=prediction_type)
    parts.sample_scheduler_config = {**parts.sample_scheduler_config, "prediction_type": prediction_type}
    return parts


def _to_dtype(parts: SDParts, dtype: torch.dtype) -> SDParts:
    for module in (parts.vae, parts.text_encoder, parts.text_encoder_2, parts.unet):
        if module is not None:
            module.to(dtype=dtype)
    return parts


# ---------------------------------------------------------------------------------------------
# Building from configs (tiny for tests, SD1.5-sized for benchmarks): one code path for both
# ---------------------------------------------------------------------------------------------


def tiny_sd_configs(sample_size: int = 8, vae_scale_factor: int = 2) -> dict[str, dict]:
    """Small configs of the SD architecture: a VAE with `vae_scale_factor` downsampling, a 2-level cross-attention
    UNet, a 2-layer CLIP text encoder. `sample_size` is the UNet's default latent side."""
    n_vae_blocks = int(math.log2(vae_scale_factor)) + 1
    if 2 ** (n_vae_blocks - 1) != vae_scale_factor:
        raise UserError(f"vae_scale_factor={vae_scale_factor} must be a power of two (1, 2, 4, 8)")
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "block_out_channels": [16] + [32] * (n_vae_blocks - 1),
        "down_block_types": ["DownEncoderBlock2D"] * n_vae_blocks,
        "up_block_types": ["UpDecoderBlock2D"] * n_vae_blocks,
        "sample_size": sample_size * vae_scale_factor,
    }
    unet = {
        "sample_size": sample_size,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": [32, 64],
        "norm_num_groups": 8,
        "cross_attention_dim": 32,
        "attention_head_dim": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }
    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": 32,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
    }
    return {"vae": vae, "unet": unet, "text_encoder": text, "scheduler": dict(SD_SCHEDULER_CONFIG)}


def sd15_configs() -> dict[str, dict]:
    """Stable Diffusion 1.5's component configs (for random-weight GPU benchmarks at real size)."""
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "block_out_channels": [128, 256, 512, 512],
        "sample_size": 512,
        "scaling_factor": 0.18215,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }
    unet = {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": [320, 640, 1280, 1280],
        "norm_num_groups": 32,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }
    text = {
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "projection_dim": 768,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
    }
    return {"vae": vae, "unet": unet, "text_encoder": text, "scheduler": dict(SD_SCHEDULER_CONFIG)}


def build_sd_from_configs(
    configs: dict[str, dict],
    seed: int = 0,
    tokenizer: CLIPTokenizer | None = None,
    device: str | torch.device = "cpu",
) -> SDParts:
    """Random-weight SD parts from component configs (tiny or real-sized), deterministic in `seed`.

    `device` builds the weights directly there (e.g. "cuda" for SD1.5-sized benchmarks, skipping a CPU copy)."""
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    text = dict(configs["text_encoder"])
    text["vocab_size"] = max(text.get("vocab_size", 0), len(tokenizer))
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(seed)  # the three models draw their initial weights from the global RNG, in this fixed order
    with torch.device(device):
        vae = AutoencoderKL(**configs["vae"])
        unet = UNet2DConditionModel(**configs["unet"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**text, **ids))
    for module in (vae, unet, text_encoder):
        module.eval()
    return _assemble(vae, text_encoder, tokenizer, unet, configs["scheduler"])


def build_tiny_sd(seed: int = 0, sample_size: int = 8, vae_scale_factor: int = 2) -> SDParts:
    """A tiny Stable Diffusion (random weights) whose images are `sample_size * vae_scale_factor` pixels a side."""
    return build_sd_from_configs(tiny_sd_configs(sample_size, vae_scale_factor), seed=seed)


def build_tiny_sdxl(seed: int = 0, sample_size: int = 8, width_2: int = 32):
    """A tiny Stable Diffusion XL pipeline (random weights, offline tokenizers), for tests of SDXL artifacts.

    The SDXL architecture in miniature: a UNet with `addition_embed_type="text_time"` (pooled text embedding + the
    six added time ids), conditioned on both text encoders' hidden states side by side (32 + 32 = 64 wide); the
    second encoder is a `CLIPTextModelWithProjection` whose projected pooled output feeds the added embedding.
    `width_2`: the second encoder's width (SDXL's differ, 768 vs 1280, which diffusers' single-file loader relies on).
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = build_tiny_tokenizer(), build_tiny_tokenizer()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    text = {**tiny_sd_configs()["text_encoder"], "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    time_dim = 8  # each of the 6 added time ids gets an 8-wide sinusoidal embedding
    torch.manual_seed(seed)  # the models draw their initial weights from the global RNG, in this fixed order
    vae = AutoencoderKL(**tiny_sd_configs(sample_size)["vae"])
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        layers_per_block=1,
        block_out_channels=(32, 64),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),  # SDXL's first level has no attention either
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=text["hidden_size"] + width_2,  # both encoders' hidden states concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + width_2,  # time ids + the projected pooled text
    )
    encoders = {
        "text_encoder": CLIPTextModel(CLIPTextConfig(**text, **ids)),
        "text_encoder_2": CLIPTextModelWithProjection(
            CLIPTextConfig(
                **text | {"hidden_size": width_2, "projection_dim": width_2, "intermediate_size": 2 * width_2}, **ids
            )
        ),
    }
    for module in (vae, unet, *encoders.values()):
        module.eval()
    sampler = EulerDiscreteScheduler.from_config(SD_SCHEDULER_CONFIG)  # SDXL's sampler, SD's noise schedule
    pipe = StableDiffusionXLPipeline(
        vae=vae, unet=unet, scheduler=sampler, tokenizer=tokenizer, tokenizer_2=tokenizer_2, **encoders
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_pipeline(
    parts: SDParts, unet=None, text_encoder=None, show_progress: bool = False, text_encoder_2=None
) -> StableDiffusionPipeline:
    """An inference pipeline over `parts` (optionally a trained unet/text encoder(s)), with no safety checker."""
    scheduler_cls = getattr(diffusers, parts.sample_scheduler_config.get("_class_name", ""), DDIMScheduler)
    models = {
        "vae": parts.vae,
        "text_encoder": text_encoder if text_encoder is not None else parts.text_encoder,
        "tokenizer": parts.tokenizer,
        "unet": unet if unet is not None else parts.unet,
        "scheduler": scheduler_cls.from_config(parts.sample_scheduler_config),  # fresh: sampling state never leaks
    }
    if parts.is_xl:  # SDXL pipelines have no safety checker
        models |= {
            "text_encoder_2": text_encoder_2 if text_encoder_2 is not None else parts.text_encoder_2,
            "tokenizer_2": parts.tokenizer_2,
        }
    else:
        models |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    pipe = parts.pipeline_cls(**models)
    pipe.set_progress_bar_config(disable=not show_progress)
    return pipe


def tokenize_prompts(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids padded/truncated to the tokenizer's max length, as SD's text encoder expects."""
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def encode_tokens(text_encoder, tokenizer, prompts: list[str], device) -> torch.Tensor:
    """CLIP last hidden states for `prompts`, as SD conditions on them."""
    return text_encoder(tokenize_prompts(tokenizer, prompts).to(device))[0]


def encode_xl(text_encoders: list, token_ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's conditioning, as StableDiffusionXLPipeline.encode_prompt computes it (clip_skip unset): each encoder's
    penultimate hidden states, concatenated along the width, and the second encoder's projected pooled output."""
    outputs = [
        encoder(ids.to(encoder.device), output_hidden_states=True) for encoder, ids in zip(text_encoders, token_ids)
    ]
    pooled = outputs[-1][0]  # the last encoder's: CLIPTextModelWithProjection's text_embeds
    return torch.cat([out.hidden_states[-2] for out in outputs], dim=-1), pooled


# ---------------------------------------------------------------------------------------------
# Offline CLIP tokenizer
# ---------------------------------------------------------------------------------------------

TINY_WORDS = """
a an the of in on at with and or by for to from is this that his her its my your our their some one two
zero three four five six seven eight nine ten number numeral digit digits handwritten hand written drawing drawn
sketch photo photograph picture image painting portrait render illustration art artwork style close up view
dog dogs cat cats puppy person man woman child face toy car house tree flower bird horse sks zwx ohwx xyz
black white red blue green yellow orange purple pink brown gray grey dark light bright small large big tiny
high quality detailed blurry sharp simple clean background pixel pixels low resolution centered
sitting standing running lying looking beach forest city street room table grass snow water sky night day
""".split()


def _learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges that turn every word into a single token.

    Hand-written because the `tokenizers` BPE trainer breaks frequency ties differently from one process to
    the next, and the tiny model's vocabulary must be identical everywhere. Deterministic: highest pair count
    first, ties broken by the pair's text.
    """
    from tokenizers.pre_tokenizers import ByteLevel

    byte_level = ByteLevel(add_prefix_space=False, use_regex=False)
    words_syms = []
    for word in sorted(set(words)):
        chars = list(byte_level.pre_tokenize_str(word)[0][0])
        words_syms.append(chars[:-1] + [chars[-1] + "</w>"])
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for syms in words_syms for pair in zip(syms, syms[1:]))
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        words_syms = [_merge(syms, best) for syms in words_syms]


def _merge(syms: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(syms):
        if i + 1 < len(syms) and (syms[i], syms[i + 1]) == pair:
            out.append(syms[i] + syms[i + 1])
            i += 2
        else:
            out.append(syms[i])
            i += 1
    return out


def build_tiny_tokenizer(extra_words: list[str] | None = None) -> CLIPTokenizer:
    """A real CLIPTokenizer (byte-level BPE, CLIP's vocab layout) over ~200 words, built offline in memory.

    Every byte has a token, so any text tokenizes; listed words are single tokens. `add_tokens` works for
    textual inversion, and rare identifiers like "sks" are whole tokens for DreamBooth prompts.
    """
    from tokenizers.pre_tokenizers import ByteLevel

    merges = _learn_merges(TINY_WORDS + list(extra_words or []))
    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
