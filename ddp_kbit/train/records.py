"""Typed records of a run: epoch statistics and what a checkpoint holds.

Plain data only (ints, floats, strings, lists, dicts), so a checkpoint loads
with ``torch.load(weights_only=True)`` and a report is plain JSON.
"""
from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field

from ddp_kbit.data.dead_letters import BadRecords
from ddp_kbit.data.plan import ConsumedRange, merge_slices
from ddp_kbit.errors import CheckpointError
from ddp_kbit.reports import EpochRecord

CHECKPOINT_VERSION = 2   # 2: consumed ranges as one tensor


@dataclass
class EpochStats:
    """Sums over all ranks for (part of) an epoch."""

    loss_sum: float = 0.0    # loss x samples
    samples: int = 0
    wait_s: float = 0.0      # seconds the step waited for data
    seconds: float = 0.0     # each rank's wall seconds, summed over ranks
    bad: int = 0             # bad records skipped
    absent: int = 0          # planned offsets never delivered (transaction markers, compaction): not records

    def __add__(self, other: EpochStats) -> EpochStats:
        return EpochStats(*(a + b for a, b in zip(self.values(), other.values())))

    def values(self) -> list:
        return [self.loss_sum, self.samples, self.wait_s, self.seconds, self.bad, self.absent]

    @classmethod
    def from_list(cls, v) -> EpochStats:
        return cls(float(v[0]), round(v[1]), float(v[2]), float(v[3]), round(v[4]), round(v[5]))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EpochStats:
        d = dict(d)
        if "missing" in d:   # a checkpoint of 0.2 named absent offsets "missing"
            d["absent"] = d.pop("missing")
        return cls(**d)


def epoch_record(epoch: int, stats: EpochStats, world: int, consumed: list[ConsumedRange], ev: dict) -> EpochRecord:
    """The report's entry for one finished epoch."""
    wall = stats.seconds / world  # ranks run side by side: seconds summed over ranks / ranks = wall time
    return EpochRecord(epoch + 1, stats.loss_sum / max(stats.samples, 1), ev["val_loss"], ev["val_accuracy"],
                       int(stats.samples), wall, stats.samples / max(wall, 1e-9),
                       stats.wait_s / max(stats.seconds, 1e-9), stats.bad, **absent_counts(stats.absent),
                       consumed=[c.to_dict() for c in sorted(consumed, key=lambda c: (c.topic, c.partition, c.start))])


@dataclass(frozen=True)
class TrainedOffsets:
    """Per partition of a pass: ``committed`` = its first offset + the records that went
    into steps (what a consumer group shows lag tools), ``left`` = what the pass has not
    trained yet. ``behind``: a live topic's lag, records behind its high watermark
    (``--follow`` sets it after each window); otherwise the lag is what is left."""

    committed: dict = field(default_factory=dict)
    left: dict = field(default_factory=dict)
    behind: dict | None = None

    @property
    def lag(self) -> dict:
        return self.behind if self.behind is not None else self.left

    @classmethod
    def of(cls, slices, consumed, behind: dict | None = None) -> TrainedOffsets:
        trained: dict[int, int] = {}
        for c in consumed:
            trained[c.partition] = trained.get(c.partition, 0) + c.end - c.start
        first, total = {}, {}
        for s in slices:
            first[s.partition] = min(first.get(s.partition, s.start), s.start)
            total[s.partition] = total.get(s.partition, 0) + len(s)
        done = {p: min(trained.get(p, 0), total[p]) for p in first}
        return cls({p: first[p] + done[p] for p in first}, {p: total[p] - done[p] for p in first}, behind)


def absent_counts(n: int) -> dict:
    """A pass's absent offsets: ``absent_records``, and ``missing_records``, its name
    before 0.3 (the same count; the report's top-level ``missing_records`` is another
    thing: planned ranges retention deleted)."""
    return {"absent_records": n, "missing_records": n}


def distinct_bad(bad_records) -> BadRecords:
    """Counts of distinct bad source records, from (topic, partition, offset, reason) entries."""
    unique = {(t, p, o): reason for t, p, o, reason in bad_records}
    return BadRecords(len(unique), 0, collections.Counter(unique.values()))


def distinct_seen(consumed_lists) -> int:
    """Distinct offsets covered by all these consumed ranges (any epoch, any rank)."""
    slices = [c.slice for consumed in consumed_lists for c in consumed]
    return sum(len(s) for s in merge_slices(slices))


@dataclass
class RunProgress:
    """Where a run stands; the ``run`` entry of every checkpoint.

    ``consumed`` holds every rank's ranges of the current epoch that already went
    into an optimizer step, so a resumed run (on any number of ranks) plans
    exactly the rest. ``bad_records`` lists each distinct bad source record once
    (topic, partition, offset, reason). ``belongs_to`` says which topics, ranges,
    model and sample type the checkpoint is for; resuming anything else is refused."""

    epoch: int = 0
    global_step: int = 0
    consumed: list[ConsumedRange] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    bad_records: list[tuple] = field(default_factory=list)
    partial: EpochStats = field(default_factory=EpochStats)  # stats of this epoch before a resume
    belongs_to: dict = field(default_factory=dict)
    follow: dict = field(default_factory=dict)   # --follow: start, position, the open window, published
    card: dict = field(default_factory=dict)     # the model card (ddp_kbit.train.modelcard): for evaluate

    @property
    def bad(self) -> BadRecords:
        """Distinct bad source records and distinct records read, over the whole run."""
        counts = distinct_bad(self.bad_records)
        counts.seen = distinct_seen([self.consumed, *[[ConsumedRange.from_dict(c) for c in e["consumed"]]
                                                      for e in self.history]])
        return counts

    def state_dict(self) -> dict:
        return {"version": CHECKPOINT_VERSION, "epoch": self.epoch, "global_step": self.global_step,
                "consumed": pack_consumed(self.consumed), "history": self.history,
                "bad_records": [list(b) for b in self.bad_records], "partial": self.partial.to_dict(),
                "belongs_to": self.belongs_to, "follow": self.follow, "card": self.card}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"checkpoint format version {state.get('version')!r}; this version of ddp_kbit "
                                  f"reads version {CHECKPOINT_VERSION}")
        mismatch = describe_mismatch(state["belongs_to"], self.belongs_to)
        if mismatch:
            raise CheckpointError(f"checkpoint is for another run: {mismatch}")
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.consumed = unpack_consumed(state["consumed"])
        self.history = list(state["history"])
        self.bad_records = [tuple(b) for b in state["bad_records"]]
        self.partial = EpochStats.from_dict(state["partial"])
        self.follow = dict(state.get("follow") or {})
        self.card = dict(state.get("card") or self.card)


def pack_consumed(consumed: list[ConsumedRange]) -> dict:
    """Ranges as one int64 tensor (a mid-epoch checkpoint of a shuffled plan holds
    thousands of short ranges of the open windows): rows of (topic index, partition,
    start, end, count, rank)."""
    import torch

    topics = sorted({c.topic for c in consumed})
    ix = {t: i for i, t in enumerate(topics)}
    rows = torch.tensor([[ix[c.topic], c.partition, c.start, c.end, c.count, c.rank] for c in consumed],
                        dtype=torch.int64).reshape(-1, 6)
    return {"topics": topics, "rows": rows}


def unpack_consumed(packed: dict) -> list[ConsumedRange]:
    topics = packed["topics"]
    return [ConsumedRange(topics[t], p, a, b, n, r) for t, p, a, b, n, r in packed["rows"].tolist()]


def describe_mismatch(saved: dict, current: dict) -> str | None:
    """What differs between a checkpoint's identity and this run's, in words."""
    diffs = [f"{k} {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now"
             for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    return "; ".join(diffs) or None
