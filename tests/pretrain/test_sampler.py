import pytest

from datamodules.instruction import EpochShuffleSampler


def test_ranks_get_distinct_samples_covering_the_epoch():
    world = 3
    per_rank = [list(EpochShuffleSampler(10, seed=5, num_replicas=world, rank=r)) for r in range(world)]
    assert all(len(p) == 4 for p in per_rank)  # ceil(10 / 3), padded by wrapping around
    flat = [i for p in per_rank for i in p]
    assert set(flat) == set(range(10))
    assert len(flat) - len(set(flat)) == 2  # only the 2 wrapped-around padding samples repeat


def test_distinct_without_padding():
    per_rank = [set(EpochShuffleSampler(12, seed=1, num_replicas=2, rank=r)) for r in range(2)]
    assert per_rank[0].isdisjoint(per_rank[1]) and per_rank[0] | per_rank[1] == set(range(12))


def test_epochs_reshuffle_deterministically():
    s = EpochShuffleSampler(50, seed=2)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1 and sorted(e0) == sorted(e1) == list(range(50))
    s2 = EpochShuffleSampler(50, seed=2)
    s2.set_epoch(1)
    assert list(s2) == e1


def test_skip_resumes_mid_epoch_once():
    s = EpochShuffleSampler(20, seed=4)
    full = list(s)
    s.skip(7)
    assert list(s) == full[7:]
    assert list(s) == full  # the skip applies to one pass only
    assert len(s) == 20


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rank must be in"):
        EpochShuffleSampler(5, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="length"):
        EpochShuffleSampler(0)


def test_alignment_phase_opens_epoch_zero_only_and_keeps_its_length():
    pool = [3, 7, 11]
    s = EpochShuffleSampler(20, seed=5, align_pool=pool, align_samples=8)
    first = s.epoch_indices()
    assert len(first) == 20
    assert set(first[:8]) <= set(pool) and set(first[:8]) == set(pool)  # each pool record drawn
    plain = EpochShuffleSampler(20, seed=5)
    s.set_epoch(1)
    plain.set_epoch(1)
    assert s.epoch_indices() == plain.epoch_indices()  # later epochs are untouched
    # two ranks split the aligned epoch 0 between them, in step
    r0 = EpochShuffleSampler(20, seed=5, num_replicas=2, rank=0, align_pool=pool, align_samples=8)
    r1 = EpochShuffleSampler(20, seed=5, num_replicas=2, rank=1, align_pool=pool, align_samples=8)
    assert set(r0.epoch_indices()[:4]) | set(r1.epoch_indices()[:4]) <= set(pool)
    with pytest.raises(ValueError, match="alignment"):
        EpochShuffleSampler(20, align_samples=4)
