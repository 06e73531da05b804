"""Planning invariants for fewer, equal and more partitions than ranks, and skew,
with and without the shuffle: hand cases, then the same invariants as properties
over any partition sizes, world sizes, batch, chunk and window sizes, epochs and
resume points."""
import collections

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ddp_kbit.data.plan import (
    NO_SHUFFLE,
    ConsumedRange,
    Shuffle,
    Slice,
    chunks_of,
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
SHUFFLES = {"none": NO_SHUFFLE, "window": Shuffle("window", chunk=64, window=200)}


def offsets_of(plans):
    return collections.Counter(o for pl in plans for k in range(pl.num_batches) for o in pl.batch_offsets(k))


def want_of(slices):
    return collections.Counter((s.topic, s.partition, o) for s in slices for o in range(s.start, s.end))


def assert_invariants(plans, slices, batch):
    assert offsets_of(plans) == want_of(slices)                         # every offset exactly once
    counts = [pl.records for pl in plans]
    assert max(counts) - min(counts) <= 1                               # ranks within one record
    assert len({pl.num_batches for pl in plans}) == 1                   # equal steps: no rank waits
    for pl in plans:
        sizes = [pl.batch_size_of(k) for k in range(pl.num_batches)]
        assert all(sz == batch for sz in sizes[:-1]) and all(1 <= sz <= batch + 1 for sz in sizes[-1:])


def assert_front_to_back(plans):
    """(no shuffle) Within each rank, every partition's pieces come in offset order."""
    for pl in plans:
        last = {}
        for s in pl.slices:
            assert s.start >= last.get(s.tp, -1)
            last[s.tp] = s.end


@pytest.mark.parametrize("shuffle", sorted(SHUFFLES))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("batch", [1, 16, 64])
def test_every_offset_once_counts_within_one_equal_steps(shuffle, layout, world, batch):
    slices = ranges_to_slices("t", LAYOUTS[layout])
    assert_invariants(plan_epoch(slices, world, batch, seed=3, shuffle=SHUFFLES[shuffle]), slices, batch)


def test_no_shuffle_is_the_earlier_plan_one_partition_each_front_to_back():
    plans = plan_epoch(ranges_to_slices("t", LAYOUTS["equal"]), 4, 10)
    assert [sorted({s.partition for s in pl.slices}) for pl in plans] == [[0], [1], [2], [3]]
    assert_front_to_back(plan_epoch(ranges_to_slices("t", LAYOUTS["more_partitions"]), 2, 5, seed=1))
    pl = plan_epoch(ranges_to_slices("t", {0: (0, 640), 1: (0, 640)}), 1, 32, seed=0)[0]
    firsts = [pl.batch_offsets(k)[0][1] for k in range(20)]
    assert 0 in firsts and 1 in firsts          # chunk order mixes partitions
    assert pl.batch_offsets(0) == [("t", firsts[0], o) for o in range(pl.batch_offsets(0)[0][2],
                                                                      pl.batch_offsets(0)[0][2] + 32)]


def test_the_shuffle_mixes_each_batch_and_moves_partitions_between_ranks_every_epoch():
    slices = ranges_to_slices("t", {p: (0, 3000) for p in range(4)})
    shuffle = Shuffle("window", chunk=256, window=2048)
    e0, e1 = (plan_epoch(slices, 2, 128, seed=7, epoch=e, shuffle=shuffle) for e in (0, 1))
    batch = e0[0].batch_offsets(0)
    assert len({p for _, p, _ in batch}) >= 3                      # a batch mixes partitions...
    assert max(o for *_, o in batch) - min(o for *_, o in batch) > 128   # ...and positions
    assert {frozenset(b) for b in [e0[0].batch_offsets(k) for k in range(10)]}.isdisjoint(
        {frozenset(b) for b in [e1[0].batch_offsets(k) for k in range(10)]})   # epochs differ in composition
    rank0 = lambda plans: {(s.partition, s.start // 256) for s in plans[0].slices}  # noqa: E731
    assert rank0(e0) != rank0(e1)                                   # the chunk -> rank mapping moves
    assert plan_epoch(slices, 2, 128, seed=7, epoch=1, shuffle=shuffle) == e1   # same (seed, epoch): same plan


def test_chunks_are_aligned_spans_each_read_in_one_go():
    slices = [Slice("t", 0, 5, 300), Slice("t", 0, 310, 320), Slice("t", 1, 0, 70)]
    assert chunks_of(slices, 100) == [
        [Slice("t", 0, 5, 100)], [Slice("t", 0, 100, 200)], [Slice("t", 0, 200, 300)], [Slice("t", 0, 310, 320)],
        [Slice("t", 1, 0, 70)]]
    for pl in plan_epoch(slices, 2, 8, shuffle=Shuffle("window", chunk=100, window=64)):
        assert all(s.start // 100 == (s.end - 1) // 100 for s in pl.slices)


def test_too_few_records_for_ranks():
    for shuffle in SHUFFLES.values():
        with pytest.raises(PlanError, match="3 records cannot feed 4 ranks"):
            plan_epoch([Slice("t", 0, 0, 3)], 4, 2, shuffle=shuffle)


def test_split_ranks_is_contiguous():
    ranks = split_ranks([Slice("t", 0, 0, 10), Slice("t", 1, 0, 10)], 3)
    assert ranks == [[Slice("t", 0, 0, 6)], [Slice("t", 0, 6, 10), Slice("t", 1, 0, 3)], [Slice("t", 1, 3, 10)]]


def test_subtract_and_merge():
    full = [Slice("t", 0, 0, 100), Slice("t", 1, 0, 50)]
    used = [Slice("t", 0, 0, 10), Slice("t", 0, 20, 30), Slice("t", 1, 0, 50), Slice("t", 0, 25, 40)]
    assert subtract(full, used) == [Slice("t", 0, 10, 20), Slice("t", 0, 40, 100)]


def test_merge_consumed_joins_a_ranks_adjacent_ranges_and_sums_counts():
    got = merge_consumed([ConsumedRange("t", 0, 5, 10, 4, 0), ConsumedRange("t", 0, 0, 5, 5, 0),
                          ConsumedRange("t", 0, 10, 12, 2, 1), ConsumedRange("t", 1, 0, 1, 1, 0)])
    assert got == [ConsumedRange("t", 0, 0, 10, 9, 0), ConsumedRange("t", 1, 0, 1, 1, 0),
                   ConsumedRange("t", 0, 10, 12, 2, 1)]


def test_used_is_exactly_the_first_batches():
    slices = ranges_to_slices("t", LAYOUTS["skew_1_10"])
    for shuffle in SHUFFLES.values():
        pl = plan_epoch(slices, 2, 16, seed=2, shuffle=shuffle)[1]
        for steps in (0, 1, 7, 13, pl.num_batches):
            got = collections.Counter((s.topic, s.partition, o) for s in pl.used(steps) for o in range(s.start, s.end))
            assert got == collections.Counter(o for k in range(steps) for o in pl.batch_offsets(k))


# ------------------------------------------------------------- properties
partitions = st.dictionaries(st.integers(0, 11), st.tuples(st.integers(0, 500), st.integers(0, 400)).map(
    lambda t: (t[0], t[0] + t[1])), min_size=1, max_size=8)
shuffles = st.one_of(st.just(NO_SHUFFLE), st.builds(lambda c, w: Shuffle("window", c, w), st.integers(1, 300),
                                                   st.integers(1, 500)))


@settings(max_examples=200, deadline=None)
@given(parts=partitions, world=st.integers(1, 9), batch=st.integers(1, 70), seed=st.integers(0, 99),
       epoch=st.integers(0, 5), shuffle=shuffles)
def test_plan_properties(parts, world, batch, seed, epoch, shuffle):
    slices = ranges_to_slices("t", parts)
    total = sum(len(s) for s in slices)
    if 0 < total < world:
        with pytest.raises(PlanError):
            plan_epoch(slices, world, batch, seed, epoch, shuffle)
        return
    plans = plan_epoch(slices, world, batch, seed, epoch, shuffle)
    assert_invariants(plans, slices, batch)
    assert plans == plan_epoch(slices, world, batch, seed, epoch, shuffle)   # deterministic
    if shuffle.kind == "none":
        assert_front_to_back(plans)


@settings(max_examples=150, deadline=None)
@given(parts=partitions, world=st.integers(1, 6), world2=st.integers(1, 6), batch=st.integers(1, 40),
       done=st.integers(0, 50), seed=st.integers(0, 99), shuffle=shuffles, shuffle2=shuffles)
def test_resume_plans_exactly_the_remainder(parts, world, world2, batch, done, seed, shuffle, shuffle2):
    """What a checkpoint records (each rank's first ``done`` batches, as offsets) plus
    the remainder planned on another world size is the epoch, each offset once."""
    slices = ranges_to_slices("t", parts)
    assume(sum(len(s) for s in slices) >= world)
    plans = plan_epoch(slices, world, batch, seed, 0, shuffle)
    used = [s for pl in plans for s in pl.used(done)]
    rest = subtract(slices, used)
    assume(sum(len(s) for s in rest) >= world2 or not rest)
    resumed = plan_epoch(rest, world2, batch, seed, 0, shuffle2)
    used_offsets = want_of(used)
    assert sum(used_offsets.values()) == sum(min(done, pl.num_batches) and
                                             sum(pl.batch_size_of(k) for k in range(min(done, pl.num_batches)))
                                             for pl in plans)
    assert offsets_of(resumed) + used_offsets == want_of(slices)
    assert not set(offsets_of(resumed)) & set(used_offsets)
    if shuffle2.kind == "none":
        assert_front_to_back(resumed)   # even across several slices of one partition


def test_every_shuffle_name_has_a_planner_and_the_config_knows_them_all():
    from ddp_kbit.config import SHUFFLES as CONFIG_SHUFFLES
    from ddp_kbit.data.plan import SHUFFLE_PLANNERS, SHUFFLES

    assert set(SHUFFLE_PLANNERS) == set(SHUFFLES) == set(CONFIG_SHUFFLES)
