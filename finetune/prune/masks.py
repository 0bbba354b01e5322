"""Pruning masks for the decoder's linear layers: which weights to zero, given a score per weight.

A mask is a bool tensor shaped like the weight (True: keep). Scores are compared where the method says:

- unstructured, `per_row=False`: the `sparsity` fraction of lowest scores in the whole layer is zeroed
  (magnitude pruning as usually done layer-wise);
- unstructured, `per_row=True`: the same fraction within each output row (Wanda's comparison group: every row
  loses exactly the same number of weights, so no output unit is wiped out);
- N:M: in every group of M consecutive weights along the input dimension the N highest scores stay and M - N
  are zeroed (2:4 is the pattern NVIDIA's sparse tensor cores run; on a CPU it is just zeros).

Written by hand: torch.nn.utils.prune has only layer-global L1 and random unstructured pruning (no per-row or
N:M selection, no external score such as Wanda's), and it leaves weight_orig / weight_mask behind that would
then have to be removed again; the masks here are multiplied into the weights in place, so nothing but
ordinary weights is ever saved.
"""

from __future__ import annotations

import torch

from finetune.errors import UserError


def check_sparsity(sparsity: float) -> None:
    """Sparsity is the fraction of weights zeroed: 0 keeps everything, 1 would delete every weight."""
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"--sparsity {sparsity} is outside [0, 1); pass the fraction of weights to zero, e.g. 0.5")


def parse_n_m(text: str) -> tuple[int, int]:
    """'2:4' -> (2, 4): keep N of every M consecutive weights along the input dimension (0 < N < M)."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--n-m {text!r} is not N:M; pass two whole numbers, e.g. 2:4 (keep 2 of every 4 weights)")
    n, m = int(parts[0]), int(parts[1])
    if not 0 < n < m:
        raise UserError(
            f"--n-m {text}: N (weights kept per group) must be at least 1 and below M (the group size); e.g. 2:4"
        )
    return n, m


def check_n_m_fits(name: str, in_features: int, m: int) -> None:
    """Groups of M run along a row of the weight; a row whose width M does not divide would leave a ragged group."""
    if in_features % m:
        raise UserError(
            f"--n-m groups of {m} do not divide the input width {in_features} of {name}; "
            f"pick an M that divides every layer width (e.g. 2:4)"
        )


def unstructured_mask(score: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Keep-mask zeroing exactly round(sparsity * size) lowest scores per layer, or per output row."""
    check_sparsity(sparsity)
    flat = score.reshape(score.shape[0], -1) if per_row else score.reshape(1, -1)
    k = round(sparsity * flat.shape[1])  # weights zeroed per comparison group
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k:
        # argsort, not a threshold: ties at the threshold would otherwise zero more (or fewer) than asked
        lowest = torch.argsort(flat, dim=1, stable=True)[:, :k]
        keep.scatter_(1, lowest, False)
    return keep.reshape(score.shape)


def n_m_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with exactly N kept (M - N zeroed) in every group of M consecutive inputs of each row."""
    rows, width = score.shape
    if width % m:
        raise ValueError(f"width {width} is not a multiple of {m}")
    groups = score.reshape(rows, width // m, m)
    lowest = torch.argsort(groups, dim=2, stable=True)[:, :, : m - n]
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(2, lowest, False)
    return keep.reshape(rows, width)


def magnitude_score(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().float()


def wanda_score(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """Wanda (Sun et al. 2023, arXiv:2306.11695): |W_ij| * ||X_j||_2, the L2 norm of input channel j over the
    calibration tokens; a small weight on a loud input channel can matter more than a large one on a quiet one."""
    return weight.detach().abs().float() * input_norm.float().reshape(1, -1)


@torch.no_grad()
def apply_mask(linear: torch.nn.Linear, keep: torch.Tensor) -> None:
    """Bake the mask into the weight (in place): the saved weights are ordinary tensors with zeros in them."""
    linear.weight.mul_(keep.to(linear.weight.dtype))
