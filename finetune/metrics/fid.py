"""Image-generation quality numbers: FID, KID, Inception Score, and accuracy against prompts.

The formulas are the standard ones (Heusel et al. 2017 for FID, Binkowski et al. 2018 for KID,
Salimans et al. 2016 for IS), written by hand with numpy/scipy because none of the stack's
libraries (diffusers, transformers, peft, accelerate, datasets) computes them and torchmetrics /
torch-fidelity would pull an Inception network from the hub. Here the embedding is the digits
judge's (finetune.metrics.judge), and `judge_images` scores generated digits against real ones.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import scipy.linalg
import torch
from scipy.special import xlogy

from finetune.errors import UserError

ArrayLike = np.ndarray | torch.Tensor | Sequence


def _as_2d(x: ArrayLike, name: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise UserError(f"{name} must be a 2-D array (samples x features), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise UserError(f"{name} contains NaN or infinite values; check the images that produced them")
    return a


def _sqrtm_product(sig1: np.ndarray, sig2: np.ndarray, eps: float) -> np.ndarray:
    """sqrtm(sig1 @ sig2), retrying with eps * I added to both when the product is near singular."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)  # singular product: retry below
        try:
            covmean = scipy.linalg.sqrtm(sig1 @ sig2)
        except scipy.linalg.LinAlgWarning:
            covmean = np.full_like(sig1, np.nan)
    bad = not np.isfinite(covmean).all()
    if not bad and np.iscomplexobj(covmean):
        # sig1 @ sig2 has non-negative real eigenvalues; a sizable imaginary part means sqrtm struggled
        scale = max(np.abs(covmean).max(), 1e-12)
        bad = np.abs(covmean.imag).max() > 1e-3 * scale
    if bad:
        offset = np.eye(len(sig1)) * eps
        covmean = scipy.linalg.sqrtm((sig1 + offset) @ (sig2 + offset))
        if not np.isfinite(covmean).all():
            raise ValueError("matrix square root failed even with an eps offset; are the features degenerate?")
    return covmean.real


def frechet_distance(mu1: ArrayLike, sig1: ArrayLike, mu2: ArrayLike, sig2: ArrayLike, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(sig1 + sig2 - 2 (sig1 sig2)^(1/2)): the Frechet distance of two Gaussians."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sig1, sig2 = np.atleast_2d(np.asarray(sig1, np.float64)), np.atleast_2d(np.asarray(sig2, np.float64))
    if mu1.shape != mu2.shape or sig1.shape != sig2.shape or sig1.shape != (len(mu1), len(mu1)):
        raise UserError(
            "frechet_distance needs means of equal length d and d x d covariances, "
            f"got {mu1.shape}, {sig1.shape}, {mu2.shape}, {sig2.shape}"
        )
    diff = mu1 - mu2
    covmean = _sqrtm_product(sig1, sig2, eps)
    dist = float(diff @ diff + np.trace(sig1) + np.trace(sig2) - 2.0 * np.trace(covmean))
    return max(dist, 0.0)  # rounding can leave a tiny negative number for identical inputs


def gaussian_stats(feats: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of N x d features, N >= 2."""
    f = _as_2d(feats, "features")
    if len(f) < 2:
        raise UserError(f"need at least 2 samples for a covariance, got {len(f)}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a x d, N_b x d)."""
    mu_a, sig_a = gaussian_stats(feats_a)
    mu_b, sig_b = gaussian_stats(feats_b)
    return frechet_distance(mu_a, sig_a, mu_b, sig_b)


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, the KID kernel."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples: within-set means skip the diagonal."""
    m = len(x)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.mean())


def kid(
    feats_a: ArrayLike, feats_b: ArrayLike, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std of unbiased polynomial-kernel MMD^2 over random subsets.

    Each of `subsets` draws `subset_size` rows without replacement from each set; `subset_size` is
    capped at the smaller set's size (so subsets=1 with a large size uses both whole sets when equal).
    """
    a, b = _as_2d(feats_a, "feats_a"), _as_2d(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise UserError(f"feature sets differ in width: {a.shape[1]} vs {b.shape[1]}")
    m = min(subset_size, len(a), len(b))
    if m < 2 or subsets < 1:
        raise UserError(f"KID needs subsets >= 1 and at least 2 samples per subset, got subsets={subsets}, size={m}")
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(subsets):
        ia = rng.choice(len(a), size=m, replace=False)
        ib = rng.choice(len(b), size=m, replace=False)
        scores.append(_mmd2_unbiased(a[ia], b[ib]))
    return float(np.mean(scores)), float(np.std(scores))


def inception_score(probs: ArrayLike, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))), computed on `splits` contiguous chunks: (mean, std).

    1 for uniform (or identical) predictions; K for confident predictions spread evenly over K classes.
    """
    p = _as_2d(probs, "probs")
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise UserError(
            "inception_score needs class probabilities (non-negative rows summing to 1), e.g. judge.probs(images)"
        )
    if not 1 <= splits <= len(p):
        raise UserError(f"splits must be between 1 and the number of samples ({len(p)}), got {splits}")
    scores = []
    for chunk in np.array_split(p, splits):
        py = chunk.mean(axis=0, keepdims=True)
        kl = (xlogy(chunk, chunk) - xlogy(chunk, py)).sum(axis=1)  # xlogy: 0 log 0 = 0
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def _as_labels(x: ArrayLike) -> np.ndarray:
    return np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x).reshape(-1)


def per_class_accuracy(pred: ArrayLike, target_labels: ArrayLike) -> tuple[dict[int, float], float]:
    """Accuracy of predictions per target class (classes present in target) and overall."""
    pred, target = _as_labels(pred), _as_labels(target_labels)
    if len(pred) != len(target) or len(pred) == 0:
        raise UserError(f"need one prediction per target label, got {len(pred)} predictions and {len(target)} labels")
    per_class = {int(k): float((pred[target == k] == k).mean()) for k in np.unique(target)}
    return per_class, float((pred == target).mean())


def judge_images(judge, images: torch.Tensor, prompt_labels: ArrayLike | None = None, reference: str = "test") -> dict:
    """Score generated digit images with a DigitsJudge against the real digits of split `reference`.

    Returns fid, kid (+ kid_std), is (+ is_std) and n; with `prompt_labels` (the digit each image was
    prompted with) also accuracy and per_class_accuracy. Real digits are rendered at the generated
    images' size and their features are cached on the judge. FID is biased upwards for small n
    (the 64-d covariance needs a few hundred images to settle): compare runs at equal n.
    """
    from finetune.metrics.judge import check_images

    check_images(images)
    n, _, h, w = images.shape
    if n < 2:
        raise UserError(f"judge_images needs at least 2 images, got {n}")
    ref_size = h if h == w else judge.config.input_size
    ref = judge.reference_features(reference, size=ref_size).numpy()
    logits = judge.logits(images)
    feats = judge.features(images).numpy()
    kid_mean, kid_std = kid(feats, ref, subsets=100, subset_size=1000, seed=0)
    is_mean, is_std = inception_score(logits.softmax(-1).numpy(), splits=max(1, min(10, n // 50)))
    out = {
        "n": int(n),
        "reference": reference,
        "fid": fid(feats, ref),
        "kid": kid_mean,
        "kid_std": kid_std,
        "is": is_mean,
        "is_std": is_std,
    }
    if prompt_labels is not None:
        labels = _as_labels(prompt_labels)
        if len(labels) != n:
            raise UserError(f"prompt_labels has {len(labels)} entries for {n} images; give one digit per image")
        out["per_class_accuracy"], out["accuracy"] = per_class_accuracy(logits.argmax(-1).numpy(), labels)
    return out
