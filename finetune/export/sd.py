"""Stable Diffusion artifacts, each in a format the stock libraries load:

- LoRA: `pytorch_lora_weights.safetensors` written by `StableDiffusionPipeline.save_lora_weights` (PEFT keys
  `unet.<module>.lora_A.weight`, the LoraConfig, hence lora_alpha, in the safetensors metadata) for
  `pipe.load_lora_weights(dir)`; optionally the same LoRA as one kohya/A1111 file (finetune.export.kohya).
  Both are checked first (finetune.export.lora_check): an all-zero LoRA or keys that match no module fail.
- Textual inversion: `learned_embeds.safetensors`, {placeholder: (num_vectors, dim)}, for
  `pipe.load_textual_inversion(path)`; SDXL: {"clip_l": ..., "clip_g": ...}, loaded per encoder with
  `pipe.load_textual_inversion(state["clip_l"], token=..., text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)`
  and the same with "clip_g" / text_encoder_2 / tokenizer_2 (the layout diffusers' SDXL docs load).
- Full fine-tuning: a diffusers pipeline directory (`save_pretrained`, safetensors) for `from_pretrained`.
- Sample grids as PNG.
Every file is written through finetune.io, so a crash never leaves half an artifact.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_save

from finetune.errors import UserError
from finetune.export.kohya import save_kohya
from finetune.export.lora_check import check_lora_state_dict
from finetune.io import atomic_dir, atomic_write_bytes

LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"
EMBEDDING_FILE = "learned_embeds.safetensors"
PIPELINE_DIR = "pipeline"


def save_sd_lora(
    out_dir: str | Path,
    unet_layers: dict[str, torch.Tensor],
    unet_config: dict,
    text_encoder_layers: dict[str, torch.Tensor] | None = None,
    text_encoder_config: dict | None = None,
    components: dict | None = None,
    kohya: bool = False,
    text_encoder_2_layers: dict[str, torch.Tensor] | None = None,
    text_encoder_2_config: dict | None = None,
    sdxl: bool = False,
) -> list[Path]:
    """Write the diffusers LoRA file (and the kohya file with `kohya`) into `out_dir`; returns the paths.

    `*_layers` are PEFT state dicts without component prefix, `*_config` the LoraConfig dicts (metadata).
    `components` ({"unet": unet, "text_encoder": te}) are the models the keys must match. `sdxl`: written by
    StableDiffusionXLPipeline.save_lora_weights (text_encoder_2 keys too), which its load_lora_weights reads, and the
    kohya file in SDXL's spelling.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    prefixed = {f"unet.{k}": v for k, v in unet_layers.items()}
    prefixed.update({f"text_encoder.{k}": v for k, v in (text_encoder_layers or {}).items()})
    prefixed.update({f"text_encoder_2.{k}": v for k, v in (text_encoder_2_layers or {}).items()})
    if components is not None:
        check_lora_state_dict(prefixed, components)
    out_dir = Path(out_dir)
    kwargs = {
        "unet_lora_layers": unet_layers,
        "text_encoder_lora_layers": text_encoder_layers or None,
        "unet_lora_adapter_metadata": unet_config,
        "text_encoder_lora_adapter_metadata": text_encoder_config,
    }
    if sdxl:
        kwargs |= {
            "text_encoder_2_lora_layers": text_encoder_2_layers or None,
            "text_encoder_2_lora_adapter_metadata": text_encoder_2_config,
        }
    pipeline_cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    # named as finetune/io.py names its temporaries, so a run that starts after a kill here removes the leftover
    with tempfile.TemporaryDirectory(dir=_existing_parent(out_dir), prefix=f".{LORA_FILE}.", suffix=".tmp") as tmp:
        pipeline_cls.save_lora_weights(tmp, **kwargs, safe_serialization=True)
        atomic_write_bytes(out_dir / LORA_FILE, (Path(tmp) / LORA_FILE).read_bytes())
    paths = [out_dir / LORA_FILE]
    if kohya:
        alphas = {c["lora_alpha"] for c in (unet_config, text_encoder_config, text_encoder_2_config) if c}
        if len(alphas) > 1:
            raise UserError("a kohya file holds one alpha; the UNet and text-encoder LoRA alphas differ")
        paths.append(
            save_kohya(
                out_dir / KOHYA_FILE,
                prefixed,
                alpha=float(unet_config["lora_alpha"]),
                rank=int(unet_config["r"]),
                sdxl=sdxl,
            )
        )
    return paths


def save_textual_inversion(path: str | Path, placeholder: str, embeddings: torch.Tensor) -> Path:
    """diffusers' textual-inversion format: one key (the placeholder) -> (num_vectors, dim) tensor."""
    if embeddings.dim() != 2 or not torch.isfinite(embeddings).all():
        raise UserError("the learned embeddings are not a finite (num_vectors, dim) matrix; training diverged")
    path = Path(path)
    data = safetensors_save({placeholder: embeddings.detach().float().contiguous().cpu()}, metadata={"format": "pt"})
    atomic_write_bytes(path, data)
    return path


def save_textual_inversion_xl(path: str | Path, clip_l: torch.Tensor, clip_g: torch.Tensor) -> Path:
    """SDXL textual inversion as one file: {"clip_l": (n, d1) for text_encoder, "clip_g": (n, d2) for text_encoder_2}."""
    embeddings = {"clip_l": clip_l, "clip_g": clip_g}
    if any(e.dim() != 2 or not torch.isfinite(e).all() for e in embeddings.values()):
        raise UserError("the learned embeddings are not finite (num_vectors, dim) matrices; training diverged")
    tensors = {k: e.detach().float().contiguous().cpu() for k, e in embeddings.items()}
    atomic_write_bytes(Path(path), safetensors_save(tensors, metadata={"format": "pt"}))
    return Path(path)


def save_sd_pipeline(out_dir: str | Path, pipeline) -> Path:
    """A complete diffusers pipeline directory (safetensors weights), renamed into place when whole."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
    return out_dir


def image_grid(images: list, rows: int):
    """Tile PIL images (all one size) row by row into one image."""
    if not images or len(images) % rows:
        raise ValueError(f"{len(images)} images do not fill {rows} rows")
    from PIL import Image

    cols = len(images) // rows
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((i % cols) * w, (i // cols) * h))
    return grid


def save_image_grid(images: list, rows: int, path: str | Path) -> Path:
    buf = io.BytesIO()
    image_grid(images, rows).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _existing_parent(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
