"""Measurements: perplexity and forgetting against the base model for language models; FID / KID / IS and a digits judge for image models.

Import what you need from here; the digits judge lives in finetune.metrics.judge.
"""

from finetune.metrics.fid import (
    fid,
    frechet_distance,
    gaussian_stats,
    inception_score,
    judge_images,
    kid,
    per_class_accuracy,
)
from finetune.metrics.forgetting import ForgettingConfig, base_samples_file, kl_to_base, top_k_reference
from finetune.metrics.judge import DigitsJudge, load_judge
from finetune.metrics.perplexity import perplexity

__all__ = [
    "ForgettingConfig",
    "base_samples_file",
    "kl_to_base",
    "top_k_reference",
    "DigitsJudge",
    "fid",
    "frechet_distance",
    "gaussian_stats",
    "inception_score",
    "judge_images",
    "kid",
    "load_judge",
    "per_class_accuracy",
    "perplexity",
]
