"""finetune: fine-tuning recipes for generative models on the Hugging Face stack."""

__version__ = "0.1.0"  # the one place: pyproject.toml reads it, `finetune --version` prints it
__all__ = ["__version__"]

from finetune.quiet import filter_known_log_noise as _filter_known_log_noise

_filter_known_log_noise()  # first: diffusers' imports already log noise (finetune/quiet.py; FINETUNE_VERBOSE=1 keeps it)
