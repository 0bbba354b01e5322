"""Deterministic, resumable, shardable batch order.

Written by hand because exact resume needs the data order to be a pure function of
(seed, epoch, position): accelerate's prepared dataloaders and torch's RandomSampler draw their
permutation from the global RNG, which a mid-epoch resume cannot replay bit for bit.

Sharding is by whole micro-batches: global batch g of an epoch goes to rank g % world. With
`grad_accum` micro-batches per optimizer step, window w of a run with W processes covers global
batches [w*A*W, (w+1)*A*W), exactly the ones a single process with accumulation A*W covers, so the
two runs see the same samples per optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from finetune.errors import UserError

BatchesFn = Callable[[int], list[list[int]]]


def shuffled_batches(n: int, batch_size: int, seed: int) -> BatchesFn:
    """Epoch -> list of index batches: a seeded permutation cut into full batches (last partial dropped)."""

    def batches(epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]

    return batches


def rank_batches(all_batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """This rank's share of an epoch: every world-th batch, the same count on every rank."""
    usable = len(all_batches) - len(all_batches) % world
    return all_batches[:usable][rank::world]


def iterate_batches(
    batches_fn: BatchesFn, rank: int, world: int, epoch: int, position: int
) -> Iterator[tuple[int, int, list[int]]]:
    """Yield (epoch, position_after, indices) forever, starting at `position` of `epoch`."""
    while True:
        mine = rank_batches(batches_fn(epoch), rank, world)
        if not mine:
            raise UserError(
                "the training set is too small for one batch per process; lower train.batch_size or add data"
            )
        for pos in range(position, len(mine)):
            yield epoch, pos + 1, mine[pos]
        epoch, position = epoch + 1, 0
