"""The resumable sampler: per-epoch permutations, rank shares, mid-epoch starts, one pass over several epochs."""

from __future__ import annotations

import pytest

from depthcontrast.data.sampler import ResumableDistributedSampler


def one_epoch(sampler: ResumableDistributedSampler, epoch: int, start_batch: int = 0) -> list[tuple[int, int]]:
    sampler.set_position(epoch, start_batch)
    return list(sampler)


def test_one_pass_over_several_epochs_is_the_epochs_in_turn() -> None:
    sampler = ResumableDistributedSampler(length=50, batch_size=4, seed=3)
    expected = one_epoch(sampler, 2, start_batch=5) + one_epoch(sampler, 3) + one_epoch(sampler, 4)
    sampler.set_position(2, 5, end_epoch=5)
    assert list(sampler) == expected
    assert len(sampler) == len(expected) == (3 * 12 - 5) * 4  # 12 whole batches of 4 per epoch


def test_epochs_are_different_permutations_of_whole_batches() -> None:
    sampler = ResumableDistributedSampler(length=50, batch_size=4, seed=3)
    first, second = one_epoch(sampler, 0), one_epoch(sampler, 1)
    assert {epoch for epoch, _ in first} == {0} and {epoch for epoch, _ in second} == {1}
    assert len(set(first)) == len(first) == 48  # drop_last: 2 samples left out
    assert [i for _, i in first] != [i for _, i in second]


@pytest.mark.parametrize("start_batch", [0, 7])
def test_ranks_share_each_global_batch_without_overlap(start_batch: int) -> None:
    ranks = [ResumableDistributedSampler(50, 4, world_size=3, rank=r, seed=1) for r in range(3)]
    for sampler in ranks:
        sampler.set_position(1, start_batch, end_epoch=3)
    passes = [list(sampler) for sampler in ranks]
    assert len({len(p) for p in passes}) == 1
    for step in range(len(passes[0]) // 4):
        keys = [key for p in passes for key in p[step * 4 : step * 4 + 4]]
        assert len(set(keys)) == 12 and len({epoch for epoch, _ in keys}) == 1
