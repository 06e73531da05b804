"""Planning invariants for fewer, equal and more partitions than ranks, and skew."""
import collections

import pytest

from ddp_kbit.partitions import PlanError, Slice, merge, plan_epoch, ranges_to_slices, split_ranks, subtract

LAYOUTS = {
    "fewer_partitions": {0: (0, 1000)},
    "equal": {0: (0, 250), 1: (0, 250), 2: (0, 250), 3: (0, 250)},
    "more_partitions": {p: (0, 37 + p) for p in range(9)},
    "skew_1_10": {0: (0, 100), 1: (0, 1000)},
    "offsets_not_at_zero": {0: (500, 777), 1: (10, 20), 2: (0, 0)},
}


def offsets_of(plans):
    return collections.Counter((s.topic, s.partition, o) for pl in plans for b in pl.batches for s in b
                               for o in range(s.start, s.end))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("batch", [1, 16, 64])
def test_every_offset_once_counts_within_one_equal_steps(layout, world, batch):
    slices = ranges_to_slices("t", LAYOUTS[layout])
    plans = plan_epoch(slices, world, batch, seed=3)
    want = collections.Counter(("t", s.partition, o) for s in slices for o in range(s.start, s.end))
    assert offsets_of(plans) == want                                   # exactly once
    counts = [sum(len(s) for b in pl.batches for s in b) for pl in plans]
    assert max(counts) - min(counts) <= 1
    assert len({len(pl.batches) for pl in plans}) == 1                 # equal steps
    for pl in plans:
        sizes = [sum(len(s) for s in b) for b in pl.batches]
        assert all(sz == batch for sz in sizes[:-1]) and 1 <= sizes[-1] <= batch + 1


def test_equal_partitions_equal_ranks_get_one_partition_each():
    plans = plan_epoch(ranges_to_slices("t", LAYOUTS["equal"]), 4, 10)
    assert [[s.partition for s in pl.slices] for pl in plans] == [[0], [1], [2], [3]]


def test_each_partition_read_front_to_back_within_a_rank():
    for pl in plan_epoch(ranges_to_slices("t", LAYOUTS["more_partitions"]), 2, 5, seed=1):
        last = {}
        for b in pl.batches:
            for s in b:
                assert s.start >= last.get(s.tp, -1)
                last[s.tp] = s.end


def test_batches_mix_partitions():
    pl = plan_epoch(ranges_to_slices("t", {0: (0, 640), 1: (0, 640)}), 1, 32, seed=0)[0]
    firsts = [b[0].partition for b in pl.batches[:20]]
    assert 0 in firsts and 1 in firsts


def test_plan_is_deterministic():
    s = ranges_to_slices("t", LAYOUTS["skew_1_10"])
    assert plan_epoch(s, 3, 8, seed=5) == plan_epoch(s, 3, 8, seed=5)


def test_too_few_records_for_ranks():
    with pytest.raises(PlanError, match="3 records cannot feed 4 ranks"):
        plan_epoch([Slice("t", 0, 0, 3)], 4, 2)


def test_split_ranks_is_contiguous():
    ranks = split_ranks([Slice("t", 0, 0, 10), Slice("t", 1, 0, 10)], 3)
    assert ranks == [[Slice("t", 0, 0, 6)], [Slice("t", 0, 6, 10), Slice("t", 1, 0, 3)], [Slice("t", 1, 3, 10)]]


def test_subtract_and_merge():
    full = [Slice("t", 0, 0, 100), Slice("t", 1, 0, 50)]
    used = [Slice("t", 0, 0, 10), Slice("t", 0, 20, 30), Slice("t", 1, 0, 50)]
    assert subtract(full, used) == [Slice("t", 0, 10, 20), Slice("t", 0, 30, 100)]
    assert merge([Slice("t", 0, 5, 10), Slice("t", 0, 0, 5), Slice("t", 1, 0, 1)]) == [
        Slice("t", 0, 0, 10), Slice("t", 1, 0, 1)]


def test_resume_plan_covers_exactly_the_rest():
    slices = ranges_to_slices("t", LAYOUTS["skew_1_10"])
    plans = plan_epoch(slices, 2, 16, seed=2)
    used = [s for pl in plans for b in pl.batches[:5] for s in b]
    rest = plan_epoch(subtract(slices, used), 3, 16, seed=2)   # resumed on a different world size
    assert offsets_of(rest) + collections.Counter(
        (s.topic, s.partition, o) for s in used for o in range(s.start, s.end)) == offsets_of(plans)
