"""Convert Stable Diffusion LoRA weights between the diffusers/PEFT format and kohya/A1111's.

diffusers' `save_lora_weights` writes keys like `unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight`;
AUTOMATIC1111, ComfyUI and kohya's sd-scripts read `lora_unet_down_blocks_0_..._attn1_to_q.lora_down.weight`, `.lora_up.weight`
and a per-module `.alpha` scalar, plus `ss_*` safetensors metadata. Written by hand: diffusers only ships a private
kohya -> diffusers converter and a PEFT -> kohya one that always writes alpha = rank, which silently changes the
LoRA's strength whenever lora_alpha != r.

Alpha can differ per module (PEFT's alpha_pattern / rank_pattern, rsLoRA, different UNet and text-encoder configs):
`read_diffusers_lora` + `module_alphas` read each module's value from the `lora_adapter_metadata` that
`save_lora_weights` writes, resolved the way PEFT resolves it, and `to_kohya` keeps every module's scale.

CLIP text-encoder modules are written with kohya's "lora_te_text_model_..." spelling (transformers 4's layout, which
A1111 expects) and read back in the installed transformers' layout (version 5 dropped the `text_model.` level).

The key rules, as ComfyUI's `comfy/lora.py` maps them (`model_lora_keys_unet`, `model_lora_keys_clip`):
- UNet, SD1.x/2.x and SDXL: `lora_unet_` + the diffusers UNet module name with "." -> "_"
  (`lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k`): ComfyUI maps every diffusers weight
  name of `unet_to_diffusers` this way, and diffusers' SDXL loader accepts it beside kohya's SGM spelling.
- CLIP, SD1.x/2.x (one encoder): `lora_te_text_model_encoder_layers_{i}_{m}`.
- CLIP, SDXL: `lora_te1_text_model_encoder_layers_{i}_{m}` (CLIP-L, `text_encoder`) and
  `lora_te2_text_model_encoder_layers_{i}_{m}` (CLIP-G, `text_encoder_2`), with either encoder alone too.
  ComfyUI knows only the six modules of its LORA_CLIP_MAP: {m} is one of `self_attn_{q,k,v,out}_proj`, `mlp_fc1`,
  `mlp_fc2`.
- every module: `<name>.lora_down.weight`, `<name>.lora_up.weight` and a 0-d `<name>.alpha`; the file's
  metadata holds kohya's `ss_network_module`, `ss_network_dim`, `ss_network_alpha`, `ss_base_model_version`
  ("sd_v1", or "sdxl_base_v1-0" as kohya's sd-scripts write for SDXL).
A kohya file read for a model of the other family (SD1.x keys for SDXL, or the reverse) is refused in one line.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save

from finetune.errors import UserError
from finetune.io import atomic_write_bytes

# component name in a diffusers pipeline -> kohya key prefix (SD1.x/2.x; SDXL's first encoder is "lora_te1_")
KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}
_PREFIX_TO_COMPONENT = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}

ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # where save_lora_weights stores each component's LoraConfig
_FLAT_CLIP_HEADS = ("embeddings.", "encoder.", "final_layer_norm")  # CLIP text modules once under "text_model."
_PEFT_KEY = re.compile(r"^(unet|text_encoder|text_encoder_2)\.(.+)\.(lora_A|lora_B|lora\.down|lora\.up)\.weight$")
_KOHYA_KEY = re.compile(
    r"^(lora_unet_|lora_te1_|lora_te2_|lora_te_)([A-Za-z0-9_]+)\.(lora_down\.weight|lora_up\.weight|alpha)$"
)

# Multi-word module names in SD's UNet and CLIP text encoder, used to undo kohya's "." -> "_" when no model is
# at hand (longest first, so "time_emb_proj" wins over shorter matches).
_COMPOUNDS = sorted(
    [
        "time_emb_proj",
        "add_k_proj",
        "add_v_proj",
        "add_q_proj",
        "encoder_hid_proj",
        "down_blocks",
        "up_blocks",
        "mid_block",
        "transformer_blocks",
        "to_q",
        "to_k",
        "to_v",
        "to_out",
        "proj_in",
        "proj_out",
        "conv_shortcut",
        "conv_in",
        "conv_out",
        "time_embedding",
        "linear_1",
        "linear_2",
        "add_embedding",
        "class_embedding",
        "text_model",
        "self_attn",
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "token_embedding",
        "position_embedding",
        "text_projection",
    ],
    key=lambda c: -c.count("_"),
)


# one lora_alpha for every module, or {"unet.<module>": alpha, ...} (module_alphas) when they differ
Alpha = float | Mapping[str, float]


def to_kohya(
    state_dict: Mapping[str, torch.Tensor], alpha: Alpha, rank: int | None = None, sdxl: bool = False
) -> dict[str, torch.Tensor]:
    """diffusers/PEFT LoRA keys -> kohya keys, with one `.alpha` scalar per module (the LoraConfig's lora_alpha).

    `sdxl`: the first text encoder is written `lora_te1_` even when the second has no LoRA (a `text_encoder_2`
    key also implies SDXL).

    Per-module alphas are written as one alpha (the most common) with each other module's ratio folded into its up
    weights: the same scales everywhere, and diffusers' kohya loader (0.42) mis-keys differing UNet alphas.
    """
    _check_rank(state_dict, rank)
    written = Counter(sorted(alpha.values())).most_common(1)[0][0] if isinstance(alpha, Mapping) else alpha
    out: dict[str, torch.Tensor] = {}
    sdxl = sdxl or any(k.startswith("text_encoder_2.") for k in state_dict)
    for key, tensor in state_dict.items():
        component, module, kind = _parse_peft_key(key)
        fold = (alpha[f"{component}.{module}"] if isinstance(alpha, Mapping) else alpha) / written
        if kind in ("lora_B", "lora.up") and fold != 1:
            tensor = (tensor.float() * fold).to(tensor.dtype)
        prefix = "lora_te1_" if component == "text_encoder" and sdxl else KOHYA_PREFIX[component]
        if component != "unet" and module.startswith(_FLAT_CLIP_HEADS):
            module = "text_model." + module  # A1111/kohya name CLIP's modules as transformers 4 did
        name = prefix + module.replace(".", "_")
        out[f"{name}.{'lora_down' if kind in ('lora_A', 'lora.down') else 'lora_up'}.weight"] = tensor
        out[f"{name}.alpha"] = torch.tensor(float(written))
    return out


def read_diffusers_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A `pytorch_lora_weights.safetensors` -> (state dict, its parsed `lora_adapter_metadata`, None if absent)."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".safetensors":
        raise UserError(f"'{path}' is not a .safetensors LoRA file; pass pytorch_lora_weights.safetensors")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(ADAPTER_METADATA_KEY)
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:  # e.g. a pickle renamed .safetensors: never unpickled, refused
        raise UserError(
            f"'{path}' is not a readable safetensors file ({e}); pass the LoRA file the recipe wrote"
        ) from None
    try:
        return state, (json.loads(raw) if raw else None)
    except json.JSONDecodeError:
        raise UserError(f"{path}: its {ADAPTER_METADATA_KEY} is not valid JSON; pass --rank and --alpha") from None


def module_alphas(state_dict: Mapping[str, torch.Tensor], adapter_metadata: Mapping) -> dict[str, float]:
    """Each module's kohya alpha from diffusers' adapter metadata ({"unet.r": 4, "unet.lora_alpha": 8, ...}).

    Resolved as PEFT resolves it (rank_pattern / alpha_pattern matched by module-name suffix); the metadata's rank
    must be the weights' rank. rsLoRA scales by alpha / sqrt(r) where kohya scales by alpha / r, so it is folded in.
    """
    from peft.utils.other import get_pattern_key  # PEFT's own matcher, so patterns resolve exactly as in training

    alphas = {}
    for key, rank in _ranks(state_dict).items():
        component, name, _ = _parse_peft_key(key)
        cfg = {k[len(component) + 1 :]: v for k, v in adapter_metadata.items() if k.startswith(component + ".")}
        if "r" not in cfg or "lora_alpha" not in cfg:
            raise UserError(
                f"the LoRA file's {ADAPTER_METADATA_KEY} has no LoraConfig for the {component}; pass --rank and --alpha"
            )
        if cfg.get("use_dora"):
            raise UserError(
                "the LoRA is DoRA (use_dora), which kohya/A1111 LoRA files cannot hold; export it as diffusers LoRA"
            )
        rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
        r = int(rank_pattern.get(get_pattern_key(rank_pattern.keys(), name), cfg["r"]))
        if r != rank:
            raise UserError(
                f"{component}.{name} has rank {rank} but the file's metadata says r={r}; the file is inconsistent"
            )
        alpha = float(alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), name), cfg["lora_alpha"]))
        alphas[f"{component}.{name}"] = alpha * math.sqrt(r) if cfg.get("use_rslora") else alpha
    return alphas


def from_kohya(
    state_dict: Mapping[str, torch.Tensor], components: Mapping[str, torch.nn.Module] | None = None
) -> tuple[dict[str, torch.Tensor], float]:
    """kohya keys -> (diffusers/PEFT keys, lora_alpha).

    With `components` (e.g. {"unet": unet, "text_encoder": text_encoder}) module names are matched exactly against
    the model; without, SD's known multi-word names are used. Modules whose alpha differs from the most common one
    get it folded into their up (B) weights, so a single lora_alpha reproduces every module's scale exactly.
    """
    groups = _group_kohya(state_dict)
    if components is not None:
        _check_architecture(groups, components)
    name_maps = {c: _kohya_name_map(m) for c, m in (components or {}).items()}
    alphas = {
        name: float(g.get("alpha", torch.tensor(float(g["lora_down.weight"].shape[0])))) for name, g in groups.items()
    }
    alpha = Counter(sorted(alphas.values())).most_common(1)[0][0]
    out: dict[str, torch.Tensor] = {}
    for name, group in groups.items():
        prefix, rest = _split_prefix(name)
        component = _PREFIX_TO_COMPONENT[prefix]
        module = _module_name(rest, name_maps.get(component), name, component)
        up = group["lora_up.weight"]
        if alphas[name] != alpha:
            up = (up.float() * (alphas[name] / alpha)).to(up.dtype)
        if components is not None and component in components:
            _check_shapes(name, group, components[component].get_submodule(module))
        out[f"{component}.{module}.lora_A.weight"] = group["lora_down.weight"]
        out[f"{component}.{module}.lora_B.weight"] = up
    return out, alpha


@functools.lru_cache(maxsize=1)
def _clip_is_flat() -> bool:
    """transformers 5 dropped CLIPTextModel's `text_model.` level; module names follow the installed version."""
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        model = CLIPTextModel(
            CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1)
        )
    return not hasattr(model, "text_model")


SDXL_BASE_MODEL_VERSION = "sdxl_base_v1-0"  # kohya sd-scripts' ss_base_model_version for SDXL LoRAs


def _check_architecture(groups: Mapping[str, object], components: Mapping[str, torch.nn.Module]) -> None:
    """Refuse SD1.x text-encoder keys for an SDXL model and SDXL ones for SD1.x, naming both (ComfyUI's rules)."""
    model_sdxl = "text_encoder_2" in components
    prefixes = {_split_prefix(name)[0] for name in groups}
    file_sdxl = bool(prefixes & {"lora_te1_", "lora_te2_"})
    if model_sdxl and "lora_te_" in prefixes or not model_sdxl and file_sdxl:
        family = ("SD1.x/2.x", "SDXL") if model_sdxl else ("SDXL", "SD1.x/2.x")
        spelled = "lora_te_*" if model_sdxl else "lora_te1_* / lora_te2_*"
        raise UserError(
            f"the kohya LoRA is an {family[0]} LoRA (its text-encoder keys are {spelled}) but the model is "
            f"{family[1]}; use a LoRA trained for {family[1]} or load the {family[0]} model it was trained on"
        )


def _check_shapes(name: str, group: Mapping[str, torch.Tensor], module: torch.nn.Module) -> None:
    """A module of the same name but another width (SD1.x's 768-wide cross attention against SDXL's 2048) means the
    LoRA belongs to another architecture: refused here instead of a shape error deep in the loader."""
    weight = getattr(module, "weight", None)
    down, up = group["lora_down.weight"], group["lora_up.weight"]
    if weight is None or (down.shape[1], up.shape[0]) != (weight.shape[1], weight.shape[0]):
        got = f"{down.shape[1]} -> {up.shape[0]}"
        want = "no weight" if weight is None else f"{weight.shape[1]} -> {weight.shape[0]}"
        raise UserError(
            f"kohya LoRA module {name} is {got} wide but the model's is {want}: the LoRA was trained for another "
            "architecture (SD1.x vs SDXL); use a LoRA made for this model"
        )


def kohya_metadata(alpha: float, rank: int | str, base_model_version: str | None = None) -> dict[str, str]:
    """The `ss_*` safetensors metadata kohya's tools write and A1111 / civitai read ("Dynamic": differs per module)."""
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha)}
    if base_model_version:
        meta["ss_base_model_version"] = base_model_version  # e.g. "sd_v1", "sd_v2"
    return meta


def save_kohya(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    alpha: Alpha,
    rank: int | None = None,
    base_model_version: str | None = "sd_v1",
    sdxl: bool = False,
) -> Path:
    """Write a diffusers/PEFT LoRA as one kohya-format .safetensors file (A1111/ComfyUI loadable).

    `sdxl` (or a `text_encoder_2` key): SDXL's spelling (`lora_te1_`/`lora_te2_`) and ss_base_model_version."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"kohya LoRA output {path} must end in .safetensors")
    sdxl = sdxl or any(k.startswith("text_encoder_2.") for k in state_dict)
    if sdxl and base_model_version == "sd_v1":
        base_model_version = SDXL_BASE_MODEL_VERSION
    tensors = {k: v.detach().contiguous() for k, v in to_kohya(state_dict, alpha, rank, sdxl).items()}
    ranks = set(_ranks(state_dict).values())
    written_alpha = next(v.item() for k, v in tensors.items() if k.endswith(".alpha"))  # one for all modules
    # kohya's own tools (resize_lora.py) write "Dynamic" when the rank differs per module
    meta = kohya_metadata(written_alpha, ranks.pop() if len(ranks) == 1 else "Dynamic", base_model_version)
    atomic_write_bytes(path, safetensors_save(tensors, metadata=meta))
    return path


def load_kohya(
    path: str | Path, components: Mapping[str, torch.nn.Module] | None = None
) -> tuple[dict[str, torch.Tensor], float]:
    """Read a kohya-format .safetensors LoRA back as (diffusers/PEFT state dict, lora_alpha)."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".safetensors":
        raise UserError(f"{path} is not an existing .safetensors file; kohya LoRAs are read from safetensors only")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return from_kohya(tensors, components)


def _check_rank(state_dict: Mapping[str, torch.Tensor], rank: int | None) -> None:
    ranks = _ranks(state_dict)
    if not ranks:
        raise UserError("the LoRA state dict has no lora_A / lora.down weights; nothing to export")
    if rank is not None and set(ranks.values()) != {rank}:
        odd = next(k for k, r in ranks.items() if r != rank)
        raise UserError(
            f"rank={rank} does not match the weights ({odd} has rank {ranks[odd]}); pass the LoraConfig's r"
        )


def _ranks(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    return {k: int(v.shape[0]) for k, v in state_dict.items() if k.endswith((".lora_A.weight", ".lora.down.weight"))}


def _parse_peft_key(key: str) -> tuple[str, str, str]:
    """'unet.<module>.lora_A.weight' -> ("unet", "<module>", "lora_A")."""
    match = _PEFT_KEY.match(key)
    if match is None:
        raise UserError(
            f"LoRA key {key!r} is not in diffusers format (expected 'unet.<module>.lora_A.weight' as "
            "save_lora_weights writes it); DoRA and non-LoRA adapters cannot be exported to kohya"
        )
    component, module, kind = match.groups()  # all three groups are required by the pattern, so none is None
    return component, module, kind


def _group_kohya(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = _KOHYA_KEY.match(key)
        if match is None:
            raise UserError(
                f"key {key!r} is not a kohya LoRA key ('lora_unet_<module>.lora_down.weight'); "
                "LyCORIS (LoHa/LoKr), DoRA and other formats are not supported"
            )
        groups.setdefault(match.group(1) + match.group(2), {})[match.group(3)] = tensor
    for name, group in groups.items():
        if "lora_down.weight" not in group or "lora_up.weight" not in group:
            raise UserError(f"kohya LoRA module {name} lacks its lora_down or lora_up weight; the file is incomplete")
    return groups


def _split_prefix(name: str) -> tuple[str, str]:
    for prefix in ("lora_unet_", "lora_te1_", "lora_te2_", "lora_te_"):
        if name.startswith(prefix):
            return prefix, name[len(prefix) :]
    raise AssertionError(name)  # _KOHYA_KEY only admits these prefixes


def _kohya_name_map(module: torch.nn.Module) -> dict[str, str]:
    """kohya's flattened module name -> the module's dotted name, for every module of `module` (a flat
    transformers-5 CLIP module is also found under kohya's "text_model_" spelling)."""
    names = {}
    for name, _ in module.named_modules():
        if name:
            names[name.replace(".", "_")] = name
            if name.startswith(_FLAT_CLIP_HEADS):
                names["text_model_" + name.replace(".", "_")] = name
    return names


def _module_name(flat: str, name_map: dict[str, str] | None, kohya_name: str, component: str) -> str:
    if name_map is not None:
        if flat not in name_map:
            raise UserError(
                f"kohya LoRA module {kohya_name} matches no module of the target model: the LoRA was trained for "
                "another architecture (SD1.x vs SDXL); use a LoRA made for this model"
            )
        return name_map[flat]
    module = _unflatten(flat)
    if component != "unet" and _clip_is_flat():
        module = module.removeprefix("text_model.")
    return module


def _unflatten(flat: str) -> str:
    """Undo "." -> "_" using SD's known multi-word module names."""
    tokens, parts, i = flat.split("_"), [], 0
    while i < len(tokens):
        for compound in _COMPOUNDS:
            n = compound.count("_") + 1
            if "_".join(tokens[i : i + n]) == compound:
                parts.append(compound)
                i += n
                break
        else:
            parts.append(tokens[i])
            i += 1
    return ".".join(parts)
