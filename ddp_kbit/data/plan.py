"""Pure planning: an epoch's offset ranges -> per-rank windows -> batches.

Invariants (tested, also as hypothesis properties): every offset of the epoch is
read by exactly one rank; the offset counts of two ranks differ by at most one;
every rank runs the same number of batches, so uneven or skewed partitions never
leave a rank waiting in a collective. Batches are defined by *offsets*, not by
records that arrive, so the plan is fixed before any I/O and is the same for the
same (ranges, world size, batch size, seed, epoch, shuffle).

The shuffle (``Shuffle("window")``, the default of training), because producers do
not write in random order (a topic published class by class trains to chance
when its batches are runs of neighbouring offsets):

1. The offsets are cut into *chunks*: spans of ``chunk`` offsets aligned to
   multiples of ``chunk`` in each partition (aligned, so the remainder of a resumed
   epoch falls into the same spans and each span is still one short read).
2. The chunks of all partitions are put in a (seed, epoch)-seeded order and the
   sequence is cut into ``world_size`` runs of equal record counts: every epoch each
   rank gets other chunks, from every partition.
3. Each rank's run is cut into *windows* of about ``window`` records (a whole number
   of batches); the positions of a window are permuted per (seed, epoch, rank,
   window) and cut into batches, so a batch mixes partitions and positions. A
   window is read (one seek per chunk) and decoded whole, then served as batches.

``Shuffle("none")`` keeps the earlier plan: contiguous runs of partitions per rank,
chunks of ``batch_size`` offsets in a seeded order that mixes partitions, batches of
neighbouring offsets.

Resume: a checkpoint records the *offsets* that went into optimizer steps, not
positions in a plan: whole windows as their chunk pieces, and for the open window
the exact offsets of its first batches (:meth:`RankPlan.used`; at most a window's
worth of short ranges per rank). The rest of the epoch is :func:`subtract` of those
from the epoch's ranges, planned again by the same rules on any world size, so a
resumed epoch trains exactly the remainder. (Resuming only at window boundaries would
train the open window's used records twice; a bitmap would not survive another
world size's plan.)
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ddp_kbit.errors import PlanError

SHUFFLES = ("window", "none")   # SHUFFLE_PLANNERS' names (a test keeps them equal)


@dataclass(frozen=True, order=True)
class Slice:
    topic: str
    partition: int
    start: int
    end: int  # exclusive

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)


@dataclass(frozen=True)
class Shuffle:
    """How an epoch's offsets are mixed (see the module docstring)."""

    kind: str = "window"  # DataConfig's shuffle, shuffle_chunk and shuffle_window say what these mean
    chunk: int = 4096
    window: int = 32768

    def __post_init__(self):
        if self.kind not in SHUFFLES:
            raise PlanError(f"shuffle must be one of {', '.join(SHUFFLES)}; got {self.kind!r}")
        if self.chunk < 1 or self.window < 1:
            raise PlanError(f"shuffle chunk and window must be >= 1; got {self.chunk}, {self.window}")

    @classmethod
    def of(cls, data) -> Shuffle:
        """From a DataConfig's ``shuffle``, ``shuffle_chunk`` and ``shuffle_window``."""
        return cls(data.shuffle, data.shuffle_chunk, data.shuffle_window)


NO_SHUFFLE = Shuffle("none")


def slices_to_json(slices: Iterable[Slice]) -> dict[str, list[list[int]]]:
    """Offset ranges of one topic as plain data: partition -> [[start, end], ...].
    The one form of ranges in checkpoints and saved states (the manifest's
    {"p": [start, end]} and the report's consumed ranges are contracts of their own)."""
    out: dict[str, list[list[int]]] = {}
    for s in sorted(slices):
        out.setdefault(str(s.partition), []).append([s.start, s.end])
    return out


def slices_from_json(topic: str, d: dict) -> list[Slice]:
    return [Slice(topic, int(p), a, b) for p, ranges in d.items() for a, b in ranges]


def ranges_to_slices(topic: str, partitions: dict[int, tuple[int, int]]) -> list[Slice]:
    return [Slice(topic, p, s, e) for p, (s, e) in sorted(partitions.items()) if e > s]


def split_ranks(slices: Sequence[Slice], world_size: int) -> list[list[Slice]]:
    """Cut the concatenation of ``slices`` (in sorted order) into ``world_size``
    contiguous runs whose lengths differ by at most one."""
    if world_size < 1:
        raise PlanError(f"world_size must be >= 1, got {world_size}")
    total = sum(len(s) for s in slices)
    return cut_runs(sorted(slices), [(r + 1) * total // world_size - r * total // world_size
                                     for r in range(world_size)])


def cut_runs(slices: Sequence[Slice], sizes: Sequence[int]) -> list[list[Slice]]:
    """Consecutive runs of ``sizes[k]`` offsets from the slice sequence, in order."""
    out: list[list[Slice]] = []
    i, off = 0, 0
    for size in sizes:
        parts = []
        while size > 0:
            s = slices[i]
            take = min(size, len(s) - off)
            parts.append(Slice(s.topic, s.partition, s.start + off, s.start + off + take))
            size, off = size - take, off + take
            if off == len(s):
                i, off = i + 1, 0
        out.append(parts)
    return out


def batch_sizes(count: int, steps: int, batch_size: int) -> list[int]:
    """``steps`` batches of ``batch_size`` offsets, the last taking the remainder
    (at most batch_size + 1 when this rank holds one offset more than another)."""
    if steps == 0:
        return []
    return [batch_size] * (steps - 1) + [count - batch_size * (steps - 1)]


# what a derived seed is for, so two uses of the same (seed, epoch, rank) never draw alike
SEED_INTERLEAVE, SEED_RANK, SEED_REPLAY = 1_000_001, 1_000_002, 1_000_003


def derive_seed(*parts: int) -> int:
    """A seed from several integers, the same in every process and Python version:
    the one way every seed of a run is made from the run's ``--seed``."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


# ------------------------------------------------------------------ plans
@dataclass(frozen=True)
class ReadWindow:
    """Planned positions ``0..len-1`` are the offsets of ``pieces`` in order; the
    batches are consecutive runs of ``sizes`` positions of :meth:`order`."""

    pieces: tuple[Slice, ...]
    sizes: tuple[int, ...]
    seed: int | None = None   # None: batches in planned-position order

    def __len__(self) -> int:
        return sum(self.sizes)

    @cached_property
    def order(self) -> np.ndarray:
        n = len(self)
        if self.seed is None:
            return np.arange(n, dtype=np.int64)
        return np.random.default_rng(self.seed).permutation(n).astype(np.int64)

    @cached_property
    def bounds(self) -> np.ndarray:
        """Batch j is ``order[bounds[j]:bounds[j + 1]]``."""
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    @cached_property
    def tps(self) -> list[tuple[str, int]]:
        return sorted({p.tp for p in self.pieces})

    @cached_property
    def located(self) -> tuple[np.ndarray, np.ndarray]:
        """Per planned position: the index of its partition in :attr:`tps`, and its offset."""
        index = {tp: i for i, tp in enumerate(self.tps)}
        tp_ix = np.concatenate([np.full(len(p), index[p.tp], np.int64) for p in self.pieces]) if self.pieces \
            else np.zeros(0, np.int64)
        offs = np.concatenate([np.arange(p.start, p.end, dtype=np.int64) for p in self.pieces]) if self.pieces \
            else np.zeros(0, np.int64)
        return tp_ix, offs

    def batch_offsets(self, j: int) -> list[tuple[str, int, int]]:
        """(topic, partition, offset) of batch ``j``, in batch order."""
        tp_ix, offs = self.located
        pos = self.order[self.bounds[j]:self.bounds[j + 1]]
        return [(*self.tps[t], int(o)) for t, o in zip(tp_ix[pos], offs[pos])]

    def used(self, batches: int) -> list[Slice]:
        """The offsets of this window's first ``batches`` batches, as merged slices."""
        if batches >= len(self.sizes):
            return merge_slices(self.pieces)
        tp_ix, offs = self.located
        pos = self.order[:self.bounds[batches]]
        return runs_to_slices(self.tps, tp_ix[pos], offs[pos])


@dataclass(frozen=True)
class RankPlan:
    """One rank's epoch (or the rest of one): windows of batches."""

    rank: int
    windows: tuple[ReadWindow, ...]
    _starts: tuple[int, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "_starts", tuple(np.cumsum([0, *(len(w.sizes) for w in self.windows)]).tolist()))

    @property
    def num_batches(self) -> int:
        return self._starts[-1]

    def __len__(self) -> int:
        return self.num_batches

    @property
    def slices(self) -> tuple[Slice, ...]:
        return tuple(p for w in self.windows for p in w.pieces)

    @property
    def records(self) -> int:
        return sum(len(w) for w in self.windows)

    def locate(self, k: int) -> tuple[int, int]:
        """Batch ``k`` of the plan as (window, batch within it)."""
        w = int(np.searchsorted(self._starts, k, side="right")) - 1
        return w, k - self._starts[w]

    def batch_offsets(self, k: int) -> list[tuple[str, int, int]]:
        w, j = self.locate(k)
        return self.windows[w].batch_offsets(j)

    def batch_size_of(self, k: int) -> int:
        w, j = self.locate(k)
        return self.windows[w].sizes[j]

    def used(self, steps: int) -> list[Slice]:
        """The offsets of this plan's first ``steps`` batches, as merged slices."""
        if steps <= 0:
            return []
        w, j = self.locate(min(steps, self.num_batches) - 1)
        done = [p for win in self.windows[:w] for p in win.pieces]
        return merge_slices(done + self.windows[w].used(j + 1))

    def span(self) -> dict[tuple[str, int], tuple[int, int]]:
        """Per partition: the first planned offset and one past the last."""
        out: dict[tuple[str, int], tuple[int, int]] = {}
        for s in self.slices:
            lo, hi = out.get(s.tp, (s.start, s.end))
            out[s.tp] = (min(lo, s.start), max(hi, s.end))
        return out


def plan_epoch(slices: Sequence[Slice], world_size: int, batch_size: int, seed: int = 0, epoch: int = 0,
               shuffle: Shuffle = NO_SHUFFLE) -> list[RankPlan]:
    """Every rank's windows and batches for one epoch (or the rest of one)."""
    if batch_size < 1:
        raise PlanError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1:
        raise PlanError(f"world_size must be >= 1, got {world_size}")
    slices = [s for s in slices if len(s)]
    planner = SHUFFLE_PLANNERS[shuffle.kind]
    per_rank = planner.deal(slices, world_size, batch_size, shuffle, seed, epoch)
    counts = [sum(len(s) for s in r) for r in per_rank]
    if sum(counts) and min(counts) == 0:
        raise PlanError(f"{sum(counts)} records cannot feed {world_size} ranks; use fewer processes")
    # Same step count everywhere: ceil over the smallest rank; the larger ranks
    # fold their extra offset into the last batch.
    steps = -(-min(counts) // batch_size) if counts else 0
    per_window = max(1, shuffle.window // batch_size)
    plans = []
    for rank, run in enumerate(per_rank):
        sizes = batch_sizes(counts[rank], steps, batch_size)
        groups = [sizes[i:i + per_window] for i in range(0, len(sizes), per_window)]
        pieces = cut_runs(run, [sum(g) for g in groups])
        windows = tuple(ReadWindow(tuple(merge_adjacent(p)), tuple(g),
                                   derive_seed(seed, epoch, rank, w) if planner.permute_windows else None)
                        for w, (p, g) in enumerate(zip(pieces, groups)))
        plans.append(RankPlan(rank, windows))
    return plans


@dataclass(frozen=True)
class ShufflePlanner:
    """A shuffle by name (``--shuffle``): how an epoch's offsets are dealt to the ranks
    (each rank's run of slices, in read order), and whether each read window is
    permuted into batches. A new shuffle is a new entry of :data:`SHUFFLE_PLANNERS`
    (Mosaic Streaming's registry of shuffle algorithms is the model); the invariants
    (equal steps, every offset once, resumable) are plan_epoch's, whatever deals."""

    deal: Callable[[list[Slice], int, int, Shuffle, int, int], list[list[Slice]]]
    permute_windows: bool


def _deal_windows(slices, world_size, batch_size, shuffle, seed, epoch):
    return deal_chunks(slices, world_size, shuffle.chunk, derive_seed(seed, epoch))


def _deal_in_order(slices, world_size, batch_size, shuffle, seed, epoch):
    return [interleave(r, batch_size, derive_seed(seed, epoch, rank, SEED_INTERLEAVE))
            for rank, r in enumerate(split_ranks(slices, world_size))]


SHUFFLE_PLANNERS: dict[str, ShufflePlanner] = {
    "window": ShufflePlanner(_deal_windows, permute_windows=True),
    "none": ShufflePlanner(_deal_in_order, permute_windows=False),
}


def interleave(slices: Sequence[Slice], chunk: int, seed: int) -> list[Slice]:
    """(``Shuffle("none")``) Chunks of ``chunk`` offsets in a seeded order that mixes
    partitions, each partition still front to back; one queue per partition."""
    per_partition: dict[tuple[str, int], list[Slice]] = {}
    for s in sorted(slices):
        per_partition.setdefault(s.tp, []).extend(
            Slice(s.topic, s.partition, a, min(a + chunk, s.end)) for a in range(s.start, s.end, chunk))
    queues = list(per_partition.values())
    rng, order = random.Random(seed), []
    for i, q in enumerate(queues):
        order += [i] * len(q)
    rng.shuffle(order)
    pos = [0] * len(queues)
    out = []
    for i in order:
        out.append(queues[i][pos[i]])
        pos[i] += 1
    return out


def chunks_of(slices: Iterable[Slice], chunk: int) -> list[list[Slice]]:
    """The offsets grouped by aligned span ``[k * chunk, (k + 1) * chunk)`` of each
    partition, each group's slices in offset order; groups sorted by (topic, partition, k)."""
    groups: dict[tuple[str, int, int], list[Slice]] = {}
    for s in sorted(slices):
        a = s.start
        while a < s.end:
            k = a // chunk
            b = min(s.end, (k + 1) * chunk)
            groups.setdefault((s.topic, s.partition, k), []).append(Slice(s.topic, s.partition, a, b))
            a = b
    return [groups[key] for key in sorted(groups)]


def deal_chunks(slices: Sequence[Slice], world_size: int, chunk: int, seed: int) -> list[list[Slice]]:
    """Chunks of every partition in a seeded order, cut into ``world_size`` runs of
    record counts within one of each other."""
    chunks = chunks_of(slices, chunk)
    random.Random(seed).shuffle(chunks)
    sequence = [s for c in chunks for s in c]
    total = sum(len(s) for s in sequence)
    return cut_runs(sequence, [(r + 1) * total // world_size - r * total // world_size for r in range(world_size)])


def merge_adjacent(pieces: Sequence[Slice]) -> list[Slice]:
    """Neighbouring pieces that continue each other joined (order kept)."""
    out: list[Slice] = []
    for p in pieces:
        if out and out[-1].tp == p.tp and out[-1].end == p.start:
            out[-1] = Slice(p.topic, p.partition, out[-1].start, p.end)
        else:
            out.append(p)
    return out


def runs_to_slices(tps: Sequence[tuple[str, int]], tp_ix: np.ndarray, offs: np.ndarray) -> list[Slice]:
    """(partition index, offset) pairs as merged slices, sorted."""
    out = []
    for i, (topic, part) in enumerate(tps):
        o = np.sort(offs[tp_ix == i])
        if not len(o):
            continue
        breaks = np.flatnonzero(np.diff(o) != 1) + 1
        starts, ends = o[np.r_[0, breaks]], o[np.r_[breaks - 1, len(o) - 1]] + 1
        out += [Slice(topic, part, int(a), int(b)) for a, b in zip(starts, ends)]
    return out


def subtract(slices: Iterable[Slice], used: Iterable[Slice]) -> list[Slice]:
    """What remains of ``slices`` after removing the offset intervals in ``used``
    (one sweep per partition; ``used`` may hold thousands of short ranges)."""
    by_tp: dict[tuple[str, int], list[Slice]] = {}
    for u in merge_slices(used):
        by_tp.setdefault(u.tp, []).append(u)
    out = []
    for s in merge_slices(slices):
        cuts, at = by_tp.get(s.tp, []), s.start
        i = _first_ending_after(cuts, s.start)
        while i < len(cuts) and cuts[i].start < s.end:
            if cuts[i].start > at:
                out.append(Slice(s.topic, s.partition, at, cuts[i].start))
            at = max(at, cuts[i].end)
            i += 1
        if at < s.end:
            out.append(Slice(s.topic, s.partition, at, s.end))
    return out


def _first_ending_after(cuts: list[Slice], offset: int) -> int:
    lo, hi = 0, len(cuts)
    while lo < hi:
        mid = (lo + hi) // 2
        if cuts[mid].end <= offset:
            lo = mid + 1
        else:
            hi = mid
    return lo


@dataclass(frozen=True, order=True)
class ConsumedRange:
    """Offsets ``[start, end)`` of one partition that went into optimizer steps on
    ``rank``, of which ``count`` records were good (the rest were bad records or
    offsets the log does not hold)."""

    topic: str
    partition: int
    start: int
    end: int
    count: int
    rank: int = 0

    @property
    def slice(self) -> Slice:
        return Slice(self.topic, self.partition, self.start, self.end)

    def to_dict(self) -> dict:
        """The report's and the checkpoint's form."""
        return {"rank": self.rank, "topic": self.topic, "partition": self.partition, "start": self.start,
                "end": self.end, "count": self.count}

    @classmethod
    def from_dict(cls, d: dict) -> ConsumedRange:
        return cls(d["topic"], int(d["partition"]), int(d["start"]), int(d["end"]), int(d["count"]), int(d["rank"]))


def merge_consumed(ranges: Iterable[ConsumedRange]) -> list[ConsumedRange]:
    """Adjacent ranges of one rank and partition joined, counts summed (the ranges
    of one run never overlap: every offset is used once per epoch)."""
    out: list[ConsumedRange] = []
    for r in sorted(ranges, key=lambda r: (r.rank, r.topic, r.partition, r.start)):
        last = out[-1] if out else None
        if last and (last.rank, last.topic, last.partition) == (r.rank, r.topic, r.partition) and r.start <= last.end:
            out[-1] = ConsumedRange(r.topic, r.partition, last.start, max(last.end, r.end), last.count + r.count, r.rank)
        else:
            out.append(r)
    return out


def merge_slices(slices: Iterable[Slice]) -> list[Slice]:
    """The union of ``slices`` as disjoint, sorted slices."""
    out: list[Slice] = []
    for s in sorted(s for s in slices if len(s)):
        if out and out[-1].tp == s.tp and s.start <= out[-1].end:
            if s.end > out[-1].end:
                out[-1] = Slice(s.topic, s.partition, out[-1].start, s.end)
        else:
            out.append(s)
    return out
