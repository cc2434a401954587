"""A distributed sampler that can resume in the middle of an epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableDistributedSampler(Sampler[tuple[int, int]]):
    """Each rank's share of a seeded per-epoch permutation, starting at `start_batch` of the epoch.

    Yields `(epoch, index)` keys, so a dataset can seed per-sample randomness by epoch while its
    DataLoader workers persist across epochs.

    Like torch's DistributedSampler with drop_last=True (every rank gets the same number of whole
    batches), plus `set_position(epoch, batch, end_epoch)` so a resumed run sees exactly the batches it had
    not seen yet, and one pass can span every epoch left. Without shuffle the order is the dataset order (the
    original's non-distributed quirk).
    """

    def __init__(
        self,
        length: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if length < batch_size * world_size:
            raise ValueError(f"{length} samples cannot fill one global batch of {batch_size} x {world_size} ranks")
        self.length, self.batch_size = length, batch_size
        self.world_size, self.rank = world_size, rank
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.start_batch, self.end_epoch = 0, 0, 1

    @property
    def batches_per_epoch(self) -> int:
        return self.length // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, start_batch: int = 0, end_epoch: int | None = None) -> None:
        """Start at batch `start_batch` of `epoch` and run on, epoch after epoch, up to `end_epoch` (exclusive; by
        default the end of `epoch`). One iteration over several epochs lets the DataLoader's workers prefetch the
        next epoch's first batches while this one ends, instead of starting each epoch from an empty queue."""
        self.epoch, self.start_batch = epoch, start_batch
        self.end_epoch = epoch + 1 if end_epoch is None else end_epoch

    def __len__(self) -> int:
        return ((self.end_epoch - self.epoch) * self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for epoch in range(self.epoch, self.end_epoch):
            first = self.start_batch if epoch == self.epoch else 0
            yield from ((epoch, index) for index in self._epoch_indices(epoch, first))

    def _epoch_indices(self, epoch: int, start_batch: int) -> list[int]:
        """This rank's sample indices of `epoch` from batch `start_batch` on, in order."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.length, generator=generator)
        else:
            order = torch.arange(self.length)
        used = self.batches_per_epoch * self.batch_size * self.world_size
        # batch b of rank r = order[(b * world + r) * batch : ... + batch]: global batch b is contiguous
        batches = order[:used].view(self.batches_per_epoch, self.world_size, self.batch_size)
        return batches[start_batch:, self.rank].reshape(-1).tolist()
