import pytest

from vitp_geo.pretrain.datamodule import EpochShuffleSampler


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


def test_alignment_ramp_hands_over_to_the_full_mix_gradually():
    """After the phase, the pool's share falls from all to none over the ramp; the epoch keeps its length."""
    pool = list(range(100))  # the alignment records are the first 100 of 1000
    s = EpochShuffleSampler(1000, seed=3, align_pool=pool, align_samples=80, ramp_samples=400)
    order = s.epoch_indices()
    assert len(order) == 1000
    assert all(i < 100 for i in order[:80])  # the phase itself
    ramp = order[80:480]
    share = [sum(i < 100 for i in ramp[k : k + 100]) / 100 for k in range(0, 400, 100)]
    # expected pool shares of the four quarters: 1 - k/400 plus the pool's own 10 % of the rest
    assert share[0] > 0.8 and share[3] < 0.35 and share == sorted(share, reverse=True)
    assert sum(i < 100 for i in order[480:]) / 520 < 0.15  # after the ramp: about the recipe share
    # without a ramp the switch is hard
    hard = EpochShuffleSampler(1000, seed=3, align_pool=pool, align_samples=80).epoch_indices()
    assert sum(i < 100 for i in hard[80:180]) < 25
    # seeded: the same order again, and epoch 1 has no phase and no ramp
    assert (
        EpochShuffleSampler(1000, seed=3, align_pool=pool, align_samples=80, ramp_samples=400).epoch_indices()
        == order
    )
    s.set_epoch(1)
    assert sorted(s.epoch_indices()) == list(range(1000))
    with pytest.raises(ValueError, match="ramp_samples"):
        EpochShuffleSampler(20, align_pool=pool, align_samples=4, ramp_samples=-1)


def test_a_phase_longer_than_an_epoch_carries_on_into_the_next():
    pool = list(range(10))  # 10 alignment records out of 100
    s = EpochShuffleSampler(100, seed=1, align_pool=pool, align_samples=150, ramp_samples=100)
    e0 = s.epoch_indices()
    s.set_epoch(1)
    e1 = s.epoch_indices()
    s.set_epoch(2)
    e2 = s.epoch_indices()
    s.set_epoch(3)
    assert all(i < 10 for i in e0) and all(i < 10 for i in e1[:50])  # the phase spans 1.5 epochs
    assert sum(i < 10 for i in e1[50:]) > 35  # the ramp's first half: mostly pool
    assert 10 < sum(i < 10 for i in e2[:50]) < 40  # its second half: less
    assert sorted(s.epoch_indices()) == list(range(100))  # after it: a plain permutation
    assert len(e0) == len(e1) == len(e2) == 100
