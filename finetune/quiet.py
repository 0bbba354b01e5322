"""Quiet by default: drop the library noise every run prints and that says nothing about the user's run.

Each entry below is one known message, matched where it is really emitted (a logger, the `warnings` module or a
library's own tqdm switch), so genuine warnings from the same libraries still show. `FINETUNE_VERBOSE=1` (or
`finetune --verbose`, which sets it for the recipe it launches too) keeps everything.

Some of it is printed while diffusers is imported, before any recipe's main() runs, so `finetune/__init__.py`
installs the logging filters on import; the recipes and the `finetune` command call `quiet_libraries()` first
thing for the rest.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import warnings

VERBOSE_ENV = "FINETUNE_VERBOSE"

# (logger name, message pattern): log records that are noise on every run of this project
NOISY_LOGS = [
    # diffusers' pipeline imports touch CLIPImageProcessor; torchvision is never installed here (see README), so
    # transformers' fallback to its PIL processor is the expected path, not a problem
    ("transformers.utils.import_utils", r"requires torchvision \(not installed\); falling back to"),
    # diffusers warns on every `.to(dtype)`, even when the list of modules to keep in fp32 is empty
    ("diffusers.models.modeling_utils", r"that should be kept in float32: \[\]\."),
    # accelerate lists the defaults it filled in (threads per CPU process) when the config file leaves them out
    ("accelerate.commands.launch", r"were not passed to `accelerate launch` and had defaults used"),
    # torchrun's note that a process exited with 2, the recipes' user-error code: the recipe has printed why
    ("torch.distributed.elastic.multiprocessing.api", r"failed \(exitcode: 2\) local_rank"),
    # the quant extra: torchao's CUDA-only kernels (MXFP8, Hopper CUTLASS) do not load into a CPU build of torch, and
    # it registers enums torch now handles itself; bitsandbytes' optional hub kernel (offline here) has a built-in twin
    ("torchao", r"Failed to load .*_C_(mxfp8|cutlass_\w+)\.\S+: Could not load this library"),
    ("torch.utils._pytree", r"is an Enum subclass and is now natively supported by torch.compile"),
    ("bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward from kernels-community"),
    # diffusers 0.42 looks for torchao < 0.16's tensor classes (moved in 0.18) to allow-list them for loading
    # torchao-quantized diffusers checkpoints, which this project never loads
    ("diffusers.quantizers.torchao.torchao_quantizer", r"Unable to import `torchao` Tensor objects"),
]

# (category, message pattern): warnings.warn calls that are noise
NOISY_WARNINGS = [
    # PEFT reads transformers' deprecated alias on every get_peft_model; nothing the user can change
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
]


def verbose() -> bool:
    """True when the user asked to see every library message."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_verbose(on: bool) -> None:
    """Switch verbosity for this process and the processes it starts (a launched recipe reads the variable)."""
    if on:
        os.environ[VERBOSE_ENV] = "1"


class _DropMessage(logging.Filter):
    """Drops records whose message matches; reads the verbose switch per record, so it can be set later."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return verbose() or not self.pattern.search(record.getMessage())


def filter_known_log_noise() -> None:
    """Attach the drop filters to the emitting loggers (cheap, imports no library; idempotent)."""
    for name, pattern in NOISY_LOGS:
        logger = logging.getLogger(name)  # the same object the library's get_logger(__name__) returns later
        if not any(isinstance(f, _DropMessage) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropMessage(pattern))


@contextlib.contextmanager
def quiet_tqdm(module_name: str):
    """Inside the block, `module_name`'s own `tqdm` bars are off (unless verbose): for a library bar that its
    progress-bar switch does not reach (transformers' GGUF reader imports tqdm.auto directly)."""
    import importlib
    from unittest import mock

    if verbose():
        yield
        return
    module = importlib.import_module(module_name)
    with mock.patch.object(module, "tqdm", functools.partial(module.tqdm, disable=True)):
        yield


def quiet_libraries() -> None:
    """Silence the known noise of transformers, diffusers, PEFT and accelerate unless FINETUNE_VERBOSE is on."""
    filter_known_log_noise()
    if verbose():
        return
    for category, pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    _disable_library_progress_bars()


def _disable_library_progress_bars() -> None:
    """The libraries' own bars ("Loading weights", "Writing model shards", ...); the training bar is ours and stays."""
    try:
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:
        pass
    else:
        disable_progress_bars()  # transformers reads this switch when it is imported later
    # importing diffusers costs ~2 s, so only a library already loaded is switched directly
    for module in ("transformers.utils.logging", "diffusers.utils.logging"):
        if module.split(".")[0] in sys.modules:
            __import__(module, fromlist=["disable_progress_bar"]).disable_progress_bar()
