"""finetune: fine-tuning recipes for generative models on the Hugging Face stack."""

__version__ = "0.1.0"
