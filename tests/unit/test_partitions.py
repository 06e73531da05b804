"""Planning invariants for fewer, equal and more partitions than ranks, and skew:
hand cases, then the same invariants as properties over any partition sizes,
world sizes, batch sizes and resume points."""
import collections

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ddp_kbit.data.partitions import (
    ConsumedRange,
    Slice,
    merge_consumed,
    plan_epoch,
    ranges_to_slices,
    split_ranks,
    subtract,
)
from ddp_kbit.errors import PlanError

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


def assert_front_to_back(plans):
    """Within each rank, every partition's pieces come in offset order."""
    for pl in plans:
        last = {}
        for b in pl.batches:
            for s in b:
                assert s.start >= last.get(s.tp, -1)
                last[s.tp] = s.end


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
    assert_front_to_back(plan_epoch(ranges_to_slices("t", LAYOUTS["more_partitions"]), 2, 5, seed=1))


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


def test_merge_consumed_joins_a_ranks_adjacent_ranges_and_sums_counts():
    got = merge_consumed([ConsumedRange("t", 0, 5, 10, 4, 0), ConsumedRange("t", 0, 0, 5, 5, 0),
                          ConsumedRange("t", 0, 10, 12, 2, 1), ConsumedRange("t", 1, 0, 1, 1, 0)])
    assert got == [ConsumedRange("t", 0, 0, 10, 9, 0), ConsumedRange("t", 1, 0, 1, 1, 0),
                   ConsumedRange("t", 0, 10, 12, 2, 1)]


def test_resume_plan_covers_exactly_the_rest():
    slices = ranges_to_slices("t", LAYOUTS["skew_1_10"])
    plans = plan_epoch(slices, 2, 16, seed=2)
    used = [s for pl in plans for b in pl.batches[:5] for s in b]
    rest = plan_epoch(subtract(slices, used), 3, 16, seed=2)   # resumed on a different world size
    assert offsets_of(rest) + collections.Counter(
        (s.topic, s.partition, o) for s in used for o in range(s.start, s.end)) == offsets_of(plans)


# ------------------------------------------------------------- properties
partitions = st.dictionaries(st.integers(0, 11), st.tuples(st.integers(0, 500), st.integers(0, 400)).map(
    lambda t: (t[0], t[0] + t[1])), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(parts=partitions, world=st.integers(1, 9), batch=st.integers(1, 70), seed=st.integers(0, 99))
def test_plan_properties(parts, world, batch, seed):
    slices = ranges_to_slices("t", parts)
    total = sum(len(s) for s in slices)
    if 0 < total < world:
        with pytest.raises(PlanError):
            plan_epoch(slices, world, batch, seed)
        return
    plans = plan_epoch(slices, world, batch, seed)
    want = collections.Counter(("t", s.partition, o) for s in slices for o in range(s.start, s.end))
    assert offsets_of(plans) == want                                    # every offset exactly once
    counts = [sum(len(s) for b in pl.batches for s in b) for pl in plans]
    assert max(counts) - min(counts) <= 1                               # ranks within one record
    assert len({len(pl.batches) for pl in plans}) == 1                  # equal steps: no rank waits
    assert_front_to_back(plans)                                         # each partition front to back


@settings(max_examples=150, deadline=None)
@given(parts=partitions, world=st.integers(1, 6), world2=st.integers(1, 6), batch=st.integers(1, 40),
       done=st.integers(0, 50), seed=st.integers(0, 99))
def test_resume_plans_exactly_the_remainder(parts, world, world2, batch, done, seed):
    slices = ranges_to_slices("t", parts)
    total = sum(len(s) for s in slices)
    assume(total >= world)
    plans = plan_epoch(slices, world, batch, seed)
    used = [s for pl in plans for b in pl.batches[:done] for s in b]
    rest = subtract(slices, used)
    assume(sum(len(s) for s in rest) >= world2 or not rest)
    resumed = plan_epoch(rest, world2, batch, seed + 1)               # on another world size
    used_offsets = collections.Counter((s.topic, s.partition, o) for s in used for o in range(s.start, s.end))
    assert offsets_of(resumed) + used_offsets == offsets_of(plans)
    assert not set(offsets_of(resumed)) & set(used_offsets)
    assert_front_to_back(resumed)   # even across several slices of one partition
