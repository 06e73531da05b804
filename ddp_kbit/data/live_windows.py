"""Pure: the windows of continuous training (``--follow``). A window is the next run
of new offsets of every partition, cut when enough records arrived or enough time
passed, then planned like an epoch (:func:`ddp_kbit.data.plan.plan_epoch`:
exact, equal steps, shuffled). Rehearsal adds a seeded sample of older records,
counted apart from the new ones."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum

from ddp_kbit.data.plan import Slice, cut_runs, merge_slices, slices_from_json, slices_to_json


class Close(StrEnum):
    """What to do with the open window now."""

    WAIT = "wait"      # for more records (or time)
    CLOSE = "close"    # train it
    STOP = "stop"      # nothing arrived for --until-idle: the run ends


WAIT, CLOSE, STOP = Close.WAIT, Close.CLOSE, Close.STOP


@dataclass(frozen=True)
class LiveWindow:
    """What every rank trains in window ``index`` (all agree on it through one collective)."""

    index: int
    topic: str
    new: tuple[Slice, ...]                 # the window's new offsets
    replay: tuple[Slice, ...] = ()         # older offsets mixed in (rehearsal)
    high: dict = field(default_factory=dict)   # partition -> high watermark when the window closed
    closed_at: float = 0.0
    final: bool = False                    # the last window (--until-idle, --max-windows, a stop)

    @property
    def records(self) -> int:
        return sum(len(s) for s in self.new)

    def to_dict(self) -> dict:
        return {"index": self.index, "topic": self.topic, "final": self.final, "closed_at": self.closed_at,
                "high": {str(p): h for p, h in self.high.items()}, "new": slices_to_json(self.new),
                "replay": slices_to_json(self.replay)}

    @classmethod
    def from_dict(cls, d: dict) -> LiveWindow:
        t = d["topic"]
        return cls(int(d["index"]), t, tuple(slices_from_json(t, d["new"])), tuple(slices_from_json(t, d["replay"])),
                   {int(p): h for p, h in d["high"].items()}, float(d["closed_at"]), bool(d["final"]))


def decide(new_records: int, open_s: float, idle_s: float, window_records: int, window_seconds: float,
           until_idle_s: float | None) -> Close:
    """Close the window, wait for more, or stop (never an empty window)."""
    if new_records >= window_records:
        return CLOSE
    if until_idle_s is not None and idle_s >= until_idle_s:
        return CLOSE if new_records else STOP
    if new_records and open_s >= window_seconds:
        return CLOSE
    return WAIT


def new_offsets(topic: str, position: dict[int, int], high: dict[int, int], limit: int) -> list[Slice]:
    """Up to ``limit`` of the records after ``position``, taken in proportion from each
    partition (so a backlog is worked off in windows of bounded size)."""
    pending = [Slice(topic, p, position[p], high[p]) for p in sorted(position) if high.get(p, 0) > position[p]]
    total = sum(len(s) for s in pending)
    if total <= limit:
        return pending
    shares = [len(s) * limit // total for s in pending]   # each partition's share, largest remainders rounded up
    by_remainder = sorted(range(len(pending)), key=lambda i: -(len(pending[i]) * limit % total))
    for i in by_remainder[:limit - sum(shares)]:
        shares[i] += 1
    return [Slice(topic, s.partition, s.start, s.start + n) for s, n in zip(pending, shares) if n]


def replay_sample(start: dict[int, int], position: dict[int, int], topic: str, count: int, seed: int,
                  block: int = 64) -> list[Slice]:
    """A seeded sample of about ``count`` older offsets (trained in earlier windows), in
    blocks of ``block`` neighbouring offsets (short reads), none twice."""
    older = [Slice(topic, p, start[p], position[p]) for p in sorted(position) if position[p] > start.get(p, 0)]
    total = sum(len(s) for s in older)
    if count <= 0 or total == 0:
        return []
    blocks = [b for s in cut_runs(older, [total]) for b in _blocks(s, block)]
    blocks = [b for part in blocks for b in part]
    rng = random.Random(seed)
    rng.shuffle(blocks)
    out, got = [], 0
    for b in blocks:
        if got >= count:
            break
        take = min(len(b), count - got)
        out.append(Slice(topic, b.partition, b.start, b.start + take))
        got += take
    return merge_slices(out)


def _blocks(run: list[Slice], block: int) -> list[list[Slice]]:
    return [[Slice(s.topic, s.partition, a, min(a + block, s.end)) for a in range(s.start, s.end, block)] for s in run]
