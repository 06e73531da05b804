"""Live windows (--follow), planned (pure): when a window closes, what it holds, replay sampling."""
import collections

from hypothesis import given, settings
from hypothesis import strategies as st

from ddp_kbit.data.live_windows import CLOSE, STOP, WAIT, LiveWindow, decide, new_offsets, replay_sample
from ddp_kbit.data.plan import Slice, plan_epoch


def test_a_window_closes_at_n_records_or_s_seconds_never_empty_and_idle_stops():
    assert decide(100, 1, 0, 100, 60, None) == CLOSE
    assert decide(5, 61, 0, 100, 60, None) == CLOSE
    assert decide(0, 600, 0, 100, 60, None) == WAIT            # never an empty window
    assert decide(0, 600, 31, 100, 60, 30) == STOP             # idle: stop
    assert decide(7, 5, 31, 100, 60, 30) == CLOSE              # ...after training what arrived


@settings(max_examples=200, deadline=None)
@given(parts=st.dictionaries(st.integers(0, 5), st.tuples(st.integers(0, 300), st.integers(0, 300)), min_size=1,
                             max_size=5), limit=st.integers(1, 500))
def test_a_window_takes_at_most_limit_new_records_in_proportion(parts, limit):
    position = {p: a for p, (a, _) in parts.items()}
    high = {p: a + b for p, (a, b) in parts.items()}
    got = new_offsets("t", position, high, limit)
    total = sum(high[p] - position[p] for p in parts)
    assert sum(len(s) for s in got) == min(total, limit)
    for s in got:
        assert s.start == position[s.partition] and s.end <= high[s.partition]   # front of each partition


def test_windows_one_after_another_cover_every_record_once():
    position, high, seen = {0: 0, 1: 10}, {0: 95, 1: 42}, collections.Counter()
    while any(high[p] > position[p] for p in position):
        for s in new_offsets("t", position, high, 17):
            seen.update((s.partition, o) for o in range(s.start, s.end))
            position[s.partition] = s.end
    assert seen == collections.Counter([(0, o) for o in range(95)] + [(1, o) for o in range(10, 42)])


def test_replay_is_seeded_older_and_never_twice():
    start, position = {0: 0, 1: 100}, {0: 500, 1: 300}
    a = replay_sample(start, position, "t", 200, seed=3)
    assert a == replay_sample(start, position, "t", 200, seed=3) != replay_sample(start, position, "t", 200, seed=4)
    offs = [(s.partition, o) for s in a for o in range(s.start, s.end)]
    assert len(offs) == len(set(offs)) == 200
    assert all(start[p] <= o < position[p] for p, o in offs)
    assert replay_sample(start, {0: 0, 1: 100}, "t", 50, seed=1) == []


def test_a_window_is_planned_like_an_epoch_and_round_trips():
    w = LiveWindow(3, "t", (Slice("t", 0, 10, 60), Slice("t", 1, 0, 33)), (Slice("t", 0, 0, 5),), {0: 60, 1: 33},
                   1.5, False)
    assert LiveWindow.from_dict(w.to_dict()) == w
    plans = plan_epoch([*w.new, *w.replay], 2, 8, seed=1, epoch=w.index)
    got = collections.Counter(o for pl in plans for k in range(pl.num_batches) for o in pl.batch_offsets(k))
    assert sum(got.values()) == w.records + 5 and max(got.values()) == 1
    assert len({pl.num_batches for pl in plans}) == 1
