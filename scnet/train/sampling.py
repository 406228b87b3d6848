"""Which images each process sees, so that K processes train exactly like one.

Training: each epoch draws one permutation (seeded by seed and epoch, the same in every process) and cuts it
into global batches of ``batch_size``; a global batch is cut into ``world_size x accum_steps`` equal shards,
and process ``r`` at accumulation step ``a`` takes shard ``r * accum_steps + a``. So a 2-process run and a
1-process run with ``accum_steps=2`` see the same shards in the same steps, and average the same gradients.
The last incomplete global batch is dropped. ``set_epoch(epoch, start_step)`` skips the first steps of the
epoch's order: what a run resumed from a state saved mid-epoch has already trained on.

Evaluation: process ``r`` takes images ``r, r + K, r + 2K, ...``: every image exactly once, no padding
(torch's DistributedSampler pads with repeats, which would count some images twice).
"""
from __future__ import annotations

from typing import Iterator, List

import torch
from torch.utils.data import Sampler

from scnet.errors import ScnetError

__all__ = ['BatchSizeError', 'check_batch', 'ShardedBatchSampler', 'StridedSampler']


class BatchSizeError(ScnetError, ValueError):
    """A batch size that the processes, the accumulation steps or the data cannot be cut into."""


def check_batch(batch_size: int, world_size: int, accum_steps: int, num_images: int) -> int:
    """The images per process and accumulation step (``batch_size / (world_size x accum_steps)``), or a
    ``BatchSizeError`` naming the flags to change: before the run's first step, rather than a ``ValueError``
    traceback from its first batch."""
    shards = world_size * accum_steps
    if batch_size % shards:
        raise BatchSizeError(f'batch size {batch_size} must be divisible by processes x accumulation steps '
                             f'({world_size} x {accum_steps} = {shards}): change --batch-size, --accum-steps or '
                             'the number of processes')
    if num_images < batch_size:
        raise BatchSizeError(f'{num_images} training images are fewer than one batch of {batch_size}: '
                             'lower --batch-size')
    return batch_size // shards


class ShardedBatchSampler(Sampler[List[int]]):
    """Yields this process's micro-batches: ``steps x accum_steps`` lists of ``batch_size / (K x accum)``."""

    def __init__(self, num_images: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 accum_steps: int = 1, seed: int = 0) -> None:
        self.micro = check_batch(batch_size, world_size, accum_steps, num_images)
        self.num_images, self.batch_size = num_images, batch_size
        self.rank, self.accum_steps, self.seed = rank, accum_steps, seed
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Draw ``epoch``'s order, beginning after its first ``start_step`` optimiser steps."""
        if not 0 <= start_step <= self.steps:
            raise ValueError(f'start_step {start_step} is outside the epoch\'s {self.steps} steps')
        self.epoch, self.start_step = epoch, start_step

    @property
    def steps(self) -> int:
        return self.num_images // self.batch_size

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accum_steps

    def __iter__(self) -> Iterator[List[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_images, generator=generator).tolist()
        for step in range(self.start_step, self.steps):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            for a in range(self.accum_steps):
                shard = self.rank * self.accum_steps + a
                yield batch[shard * self.micro:(shard + 1) * self.micro]


class StridedSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...``: each image of the set in exactly one process, once."""

    def __init__(self, num_images: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, num_images, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
