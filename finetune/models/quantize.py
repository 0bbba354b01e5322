"""A quantized frozen base for LoRA (QLoRA): 4-bit NF4 through bitsandbytes, int8 weight-only through torchao.

`model.quantization` picks it; `load_causal_lm` passes `quantization_config(kind, compute_dtype)` to transformers'
`from_pretrained`, which quantizes every linear layer but the output head while loading. Both run on the CPU
(bitsandbytes' wheel has a CPU backend for x86-64 with AVX2; torchao's int8 weight-only is plain torch ops) and
on a GPU unchanged. PEFT puts LoRA on top of either (its bnb `Linear4bit` and torchao layers); `prepare_for_training`
is PEFT's k-bit preparation. Merging never goes into the quantized weights: finetune/export/lm.py reloads the
base in full precision first (merging into 4-bit weights rounds the update away).
"""

from __future__ import annotations

import importlib.util
import platform
from typing import Literal

import torch

from finetune.errors import UserError

Quantization = Literal["none", "nf4", "int8"]
QUANTIZATIONS = ("none", "nf4", "int8")
LIBRARY = {"nf4": "bitsandbytes", "int8": "torchao"}  # the package each kind needs, as pip names it
MIN_VERSION = {"bitsandbytes": "0.46.1", "torchao": "0.15.0"}  # what transformers' integrations accept
INSTALL = "pip install 'finetune[quant]'"
X86 = ("x86_64", "amd64", "i386", "i686")


def check_quantization(kind: str, device_type: str | None = None) -> None:
    """Raise UserError naming what to install or choose instead when `kind` cannot run here (before any load)."""
    if kind == "none":
        return
    if kind not in LIBRARY:
        raise UserError(f"model.quantization={kind!r} is unknown; choose one of {', '.join(QUANTIZATIONS)}")
    package = LIBRARY[kind]
    other = "int8" if kind == "nf4" else "nf4"
    version = _installed_version(package)
    if version is None:
        raise UserError(
            f"model.quantization={kind} needs the {package} package; run `{INSTALL}` "
            f"(or pip install {package}), or set model.quantization={other} or none"
        )
    if _older(version, MIN_VERSION[package]):
        raise UserError(
            f"model.quantization={kind} needs {package}>={MIN_VERSION[package]} (installed: {version}); "
            f"run `{INSTALL}` or `pip install -U {package}`"
        )
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "nf4" and device_type == "cpu":
        _check_bnb_cpu()


def _check_bnb_cpu() -> None:
    """bitsandbytes' CPU kernels are built for x86-64 with AVX2 and come from its native library."""
    capability = cpu_capability()
    if platform.machine().lower() in X86 and capability not in ("AVX2", "AVX512"):
        raise UserError(
            f"model.quantization=nf4 on the CPU needs AVX2 (bitsandbytes' CPU kernels); this CPU reports "
            f"{capability}; set model.quantization=int8 (torchao, any CPU) or none, or train on a GPU"
        )
    from bitsandbytes.cextension import ErrorHandlerMockBNBNativeLibrary, lib

    if isinstance(lib, ErrorHandlerMockBNBNativeLibrary):
        raise UserError(
            "model.quantization=nf4: bitsandbytes' native CPU library did not load (run "
            "`python -m bitsandbytes` to see why); set model.quantization=int8 or none"
        )


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels detected: DEFAULT, AVX2, AVX512, ..."""
    return torch.backends.cpu.get_cpu_capability()


def quantization_config(kind: str, compute_dtype: torch.dtype = torch.float32):
    """transformers' config that quantizes the linear layers while `from_pretrained` loads them (None: none)."""
    if kind == "none":
        return None
    check_quantization(kind)
    if kind == "nf4":
        from transformers import BitsAndBytesConfig

        # QLoRA's recipe: NF4 with the block scales quantized again (double quant, ~0.4 bit/parameter less).
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return TorchAoConfig(Int8WeightOnlyConfig())  # the one torchao scheme PEFT's LoRA supports (and merges)


def quantization_of(model) -> Quantization:
    """Which of `none`, `nf4`, `int8` the loaded `model` (or a PeftModel around it) holds."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if config is None:
        return "none"
    method = _get(config, "quant_method")
    method = getattr(method, "value", method)
    if method == "bitsandbytes" and _get(config, "load_in_4bit") and _get(config, "bnb_4bit_quant_type") == "nf4":
        return "nf4"
    if method == "torchao":
        return "int8"
    raise UserError(
        f"the model is quantized with {method!r}; finetune trains and merges only on nf4 (bitsandbytes), "
        "int8 (torchao) or full-precision bases"
    )


def compute_dtype_of(model) -> torch.dtype:
    """The dtype the quantized layers of `model` compute in (so a reload for a check computes alike)."""
    config = model.config.quantization_config
    dtype = _get(config, "bnb_4bit_compute_dtype") or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def prepare_for_training(model):
    """PEFT's k-bit preparation: every base weight frozen, non-quantized half-precision weights (norms, embeddings)
    upcast to fp32 for stable training.

    Its gradient checkpointing is off here on purpose: PEFT's default turns it on (reentrant, with an input-grad
    hook), which costs a forward per step; the recipe enables the non-reentrant kind only when
    model.gradient_checkpointing asks for it, as for a full-precision base. The upcast costs memory only for
    weights loaded in half precision (model.torch_dtype=bfloat16): the default fp32 load has nothing to upcast.
    """
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def keep_nf4_trainable(model) -> int:
    """Stop bitsandbytes repacking NF4 weights for CPU inference; returns how many layers it would have repacked.

    Worked around by hand (bitsandbytes 0.50): on a CPU with AVX512-BF16, the first forward of a `Linear4bit` in
    eval mode without grad (our perplexity before training) repacks its weight in place into an inference layout,
    and from then on its matmul runs a kernel with no backward: gradients stop at every 4-bit layer, silently (only
    the adapters next to the loss would train). It also needs in_features >= 64. The plain layout trains correctly
    and computes the same products, a little slower at inference.
    """
    count = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def _installed_version(package: str) -> str | None:
    if importlib.util.find_spec(package) is None:  # also None when a test blocks it with sys.modules[package] = None
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _older(version: str, minimum: str) -> bool:
    from packaging.version import Version

    return Version(version) < Version(minimum)


def _get(config, key: str):
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def check_quantized_training(quantization: str, method: str, compile_layers: bool) -> None:
    """Refuse, before any load, the recipe settings a quantized base cannot train with."""
    check_quantization(quantization)
    if quantization == "none":
        return
    if method != "lora":
        raise UserError(
            f"model.quantization={quantization} trains only with method=lora (the quantized base stays "
            f"frozen under the adapter; method={method} would train it); set method=lora or "
            "model.quantization=none"
        )
    if quantization == "nf4" and compile_layers:
        raise UserError(
            "model.compile_layers does not work with NF4 layers (torch.compile cannot trace "
            "bitsandbytes' 4-bit weights); set model.compile_layers=false, or model.quantization=int8"
        )
