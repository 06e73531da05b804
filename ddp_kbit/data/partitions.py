"""Pure planning: an epoch's offset ranges -> per-rank slices -> batches.

Invariants (tested): every offset of the epoch is read by exactly one rank; the
offset counts of two ranks differ by at most one; every rank runs the same number
of batches, so uneven or skewed partitions never leave a rank waiting in a
collective. Batches are defined by *offsets*, not by records that arrive, so the
plan is fixed before any I/O and a resumed run plans the remainder identically.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ddp_kbit.errors import PlanError


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


def ranges_to_slices(topic: str, partitions: dict[int, tuple[int, int]]) -> list[Slice]:
    return [Slice(topic, p, s, e) for p, (s, e) in sorted(partitions.items()) if e > s]


def split_ranks(slices: Sequence[Slice], world_size: int) -> list[list[Slice]]:
    """Cut the concatenation of ``slices`` into ``world_size`` contiguous runs whose
    lengths differ by at most one. Equal partitions and as many ranks as
    partitions give one whole partition per rank; otherwise partitions are cut."""
    if world_size < 1:
        raise PlanError(f"world_size must be >= 1, got {world_size}")
    ordered = sorted(slices)
    total = sum(len(s) for s in ordered)
    bounds = [r * total // world_size for r in range(world_size + 1)]
    out: list[list[Slice]] = [[] for _ in range(world_size)]
    base = 0
    for s in ordered:
        for r in range(world_size):
            lo, hi = max(bounds[r], base), min(bounds[r + 1], base + len(s))
            if hi > lo:
                out[r].append(Slice(s.topic, s.partition, s.start + lo - base, s.start + hi - base))
        base += len(s)
    return out


@dataclass(frozen=True)
class RankPlan:
    """One rank's epoch: ``batches[k]`` lists the slices whose offsets form batch k."""

    rank: int
    slices: tuple[Slice, ...]
    batches: tuple[tuple[Slice, ...], ...]

    def span(self) -> dict[tuple[str, int], tuple[int, int]]:
        """Per partition: the first planned offset and one past the last (where this
        rank's consumer starts, and how far it reads)."""
        out: dict[tuple[str, int], tuple[int, int]] = {}
        for s in self.slices:
            lo, hi = out.get(s.tp, (s.start, s.end))
            out[s.tp] = (min(lo, s.start), max(hi, s.end))
        return out


def interleave(slices: Sequence[Slice], chunk: int, seed: int) -> list[Slice]:
    """Chunks of ``chunk`` offsets in a seeded order that mixes partitions, while each
    partition is still read front to back (so a checkpoint is a next offset per slice).
    One queue per partition, not per slice: a rank resumed on another world size can
    hold several slices of one partition, and its consumer reads them in offset order."""
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


def cut_batches(chunks: Sequence[Slice], sizes: Sequence[int]) -> list[tuple[Slice, ...]]:
    """Consecutive batches of ``sizes[k]`` offsets from the chunk sequence."""
    batches, i, off = [], 0, 0
    chunks = list(chunks)
    for size in sizes:
        parts = []
        while size > 0:
            c = chunks[i]
            take = min(size, len(c) - off)
            parts.append(Slice(c.topic, c.partition, c.start + off, c.start + off + take))
            size, off = size - take, off + take
            if off == len(c):
                i, off = i + 1, 0
        batches.append(tuple(parts))
    return batches


def batch_sizes(count: int, steps: int, batch_size: int) -> list[int]:
    """``steps`` batches of ``batch_size`` offsets, the last taking the remainder
    (at most batch_size + 1 when this rank holds one offset more than another)."""
    if steps == 0:
        return []
    return [batch_size] * (steps - 1) + [count - batch_size * (steps - 1)]


def plan_epoch(slices: Sequence[Slice], world_size: int, batch_size: int, seed: int = 0,
               mix_chunk: int | None = None) -> list[RankPlan]:
    """Every rank's slices and batches for one epoch (or the rest of one)."""
    if batch_size < 1:
        raise PlanError(f"batch_size must be >= 1, got {batch_size}")
    per_rank = split_ranks(slices, world_size)
    counts = [sum(len(s) for s in r) for r in per_rank]
    if sum(counts) and min(counts) == 0:
        raise PlanError(f"{sum(counts)} records cannot feed {world_size} ranks; use fewer processes")
    # Same step count everywhere: ceil over the smallest rank; the larger ranks
    # fold their extra offset into the last batch.
    steps = -(-min(counts) // batch_size) if counts else 0
    plans = []
    for rank, rslices in enumerate(per_rank):
        chunks = interleave(rslices, mix_chunk or batch_size, seed * 1_000_003 + rank)
        plans.append(RankPlan(rank, tuple(rslices), tuple(cut_batches(chunks, batch_sizes(counts[rank], steps, batch_size)))))
    return plans


def subtract(slices: Iterable[Slice], used: Iterable[Slice]) -> list[Slice]:
    """What remains of ``slices`` after removing the offset intervals in ``used``."""
    remaining = sorted(slices)
    for u in sorted(used):
        nxt = []
        for s in remaining:
            if s.tp != u.tp or u.end <= s.start or u.start >= s.end:
                nxt.append(s)
                continue
            if s.start < u.start:
                nxt.append(Slice(s.topic, s.partition, s.start, u.start))
            if u.end < s.end:
                nxt.append(Slice(s.topic, s.partition, u.end, s.end))
        remaining = nxt
    return remaining


@dataclass(frozen=True, order=True)
class ConsumedRange:
    """Offsets ``[start, end)`` of one partition that went into optimizer steps on
    ``rank``, of which ``count`` records were good (the rest were bad records)."""

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
    """Adjacent or overlapping ranges of one rank and partition joined, counts summed."""
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
    return [c.slice for c in merge_consumed(ConsumedRange(s.topic, s.partition, s.start, s.end, 0) for s in slices)]
