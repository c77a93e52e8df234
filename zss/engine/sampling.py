"""Deterministic, resumable, rank-sharded sampling for iteration-based training.

Every training sample is drawn as ``(index, sample_seed)``; :class:`SeededDataset` seeds the
augmentation RNGs from ``sample_seed`` before loading, so the data a step sees depends only on
(seed, step, rank) — not on worker count, worker scheduling or where a run was resumed.
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class StepSampler(Sampler):
    """Infinite shuffled stream of ``(index, sample_seed)`` pairs, sharded by rank, resumable.

    The global stream is: epoch e permutes ``range(n)`` with ``torch.Generator`` seeded by
    ``seed * 1_000_003 + e``; the i-th element of the concatenated epochs goes to rank
    ``i % world_size``. ``start`` skips the first ``start`` elements of this rank's share
    (micro-batches already consumed × micro-batch size), so a resumed run sees exactly the
    samples the uninterrupted run would have seen.

    Args:
        num_samples: dataset length (> 0). seed: run seed. rank / world_size: this process's
            shard. start: number of this rank's samples to skip.

    Raises:
        ValueError: for an empty dataset.
    """

    def __init__(self, num_samples: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0):
        if num_samples <= 0:
            raise ValueError("StepSampler got an empty dataset: check dataset.root and the split file")
        self.n, self.seed, self.rank, self.world, self.start = num_samples, seed, rank, world_size, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g_pos = self.start * self.world + self.rank  # position in the global stream
        epoch, offset = divmod(g_pos, self.n)
        while True:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=gen).tolist()
            while offset < self.n:
                yield perm[offset], (self.seed * 1_000_003 + epoch) * 100_003 + offset
                offset += self.world
            offset -= self.n
            epoch += 1

    def __len__(self) -> int:  # infinite stream; a large number keeps DataLoader happy
        return 2**62


class SeededDataset(Dataset):
    """Wraps a dataset so ``ds[(index, sample_seed)]`` seeds ``torch``, ``random`` and ``numpy``
    from ``sample_seed`` before loading: augmentations become a pure function of the pair."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, sample_seed = item
        torch.manual_seed(sample_seed)
        random.seed(sample_seed)
        np.random.seed(sample_seed % 2**32)
        return self.dataset[index]


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Indices ``rank, rank + world, ...`` of ``range(n)``: every sample evaluated exactly once
    across ranks (no padding duplicates, unlike ``DistributedSampler``)."""
    return list(range(rank, n, world_size))
