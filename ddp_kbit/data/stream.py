"""KafkaStreamDataset: one rank's planned batches, read straight from Kafka.

``assign`` (never a consumer group), then per window of the plan: one seek per
chunk run (gaps shorter than a chunk are read through), large polls, the whole
window decoded in one call, permuted as planned and cut into batches. A bounded
background thread reads and decodes ahead, and while the training step still has
batches queued it already reads the next window, so Kafka I/O and decoding overlap
the step. It yields :class:`StreamBatch`es of the topic's dtype (uint8 images are
scaled to float on the device). ``mark_used`` records the batches that went into an
optimizer step, so a checkpoint never claims records that were only prefetched.
Bad records are counted by reason, forwarded to ``<topic>.dlq`` and skipped.
"""
from __future__ import annotations

import bisect
import collections
import logging
import operator
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset

from ddp_kbit import kafka
from ddp_kbit.config import DataConfig, KafkaConfig, SourceConfig
from ddp_kbit.data.dead_letters import BadRecords, DeadLetters
from ddp_kbit.data.describe import codec_for
from ddp_kbit.data.manifest import Manifest
from ddp_kbit.data.plan import ConsumedRange, RankPlan, ReadWindow, Slice, merge_consumed
from ddp_kbit.errors import StreamError

log = logging.getLogger(__name__)


@dataclass
class StreamBatch:
    """One planned batch: the good records' ``images`` (N, *shape, the topic's dtype)
    and ``labels`` (int64), which step of the plan it is, and what it skipped."""

    images: torch.Tensor
    labels: torch.Tensor
    step: int = 0            # the batch's index in the rank's plan
    planned: int = 0         # offsets the plan put in this batch (bad records and gaps included)
    bad_records: tuple[tuple[str, int, int, str], ...] = ()  # (topic, partition, offset, reason)
    absent: tuple[tuple[str, int, int], ...] = ()             # planned offsets never delivered (markers, compaction)
    offsets: np.ndarray | None = None   # (N, 2) int64: partition and offset of each good record, in batch order
    keys: list | None = None            # the records' keys (keep_keys only: predictions keyed like their inputs)
    indices: np.ndarray | None = None   # v1 samples' own index field (keep_keys only; -1 for foreign topics)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(float images N x C x H x W, labels) on ``device``: see :func:`to_device`."""
        return to_device(self, torch.device(device))


class _Reader:
    """Records of the planned pieces, per partition, as parallel offset/value/record
    lists in offset order (slices and bisects, no per-record Python work; the client's
    record objects are kept only so a bad record's key and headers reach the
    dead-letter topic). Each partition reads its queue of runs: a run is a chunk's
    pieces, gaps shorter than ``gap`` read through; the next run seeks when it is
    behind or far ahead of what was read. A partition with nothing wanted, or whose
    buffer is full, is paused, so neither an idle one nor a prefetching client fills memory.

    A client fetches past the end of a run before the reader can seek away (up to a
    fetch's worth per partition), and a read-through gap may hold this rank's own
    later chunks. Such records of pieces of windows not yet wanted are *stashed*
    per piece instead of dropped: when their window comes they are served from
    memory, and only the rest of each piece is read. So no offset is read twice
    in an epoch (unless the stash is full: then it is read again, still exactly)."""

    def __init__(self, consumer, limit: int, gap: int):
        self.consumer, self.limit, self.gap = consumer, limit, gap
        self.offs: dict[tuple, list] = collections.defaultdict(list)
        self.vals: dict[tuple, list] = collections.defaultdict(list)
        self.recs: dict[tuple, list] = collections.defaultdict(list)
        self.head: dict[tuple, int] = collections.defaultdict(int)   # first record not yet handed out
        self.delivered: dict[tuple, int] = {}     # one past the last offset the client delivered (or sought)
        self.runs: dict[tuple, collections.deque] = collections.defaultdict(collections.deque)
        self.paused: set[tuple] = set()
        self.last_record = time.monotonic()
        self.later: dict[tuple, list[Slice]] = {}      # pieces of windows not yet wanted, by start
        self.stash: dict[Slice, tuple[list, list, list]] = {}   # such a piece's records already received
        self.stashed = 0
        self.segments: dict[Slice, collections.deque] = {}     # a wanted piece's [start, end, from stash]

    def start(self, plan: RankPlan) -> None:
        """Assign every partition of the plan at its first planned offset, paused."""
        span = plan.span()
        self.consumer.assign([(t, p, start) for (t, p), (start, _) in span.items()])
        self.delivered = {tp: start for tp, (start, _) in span.items()}
        self.consumer.pause(list(span))
        self.paused = set(span)
        self.later = _by_partition(plan.slices)

    def want(self, window: ReadWindow) -> None:
        """Queue the window's reads: per partition, what the stash does not hold of
        its pieces, in offset order, as runs."""
        for tp, pieces in _by_partition(window.pieces).items():
            later = self.later.get(tp, [])
            for p in pieces:
                later.pop(bisect.bisect_left(later, p))
            # what was read ahead (a fetch past the last window's runs): to the stash
            self._stash(tp, self.head[tp], len(self.offs[tp]), pieces)
            self._stash(tp, self.head[tp], len(self.offs[tp]))
            del self.offs[tp][:], self.vals[tp][:], self.recs[tp][:]
            self.head[tp] = 0
            q = self.runs[tp]
            for p in pieces:
                self.segments[p] = segs = collections.deque(_segments(p, self._sorted_stash(p)))
                for start, end, stashed in segs:
                    if stashed:
                        continue
                    if q and not q[-1][2] and 0 <= start - q[-1][1] <= self.gap:
                        q[-1][1] = end
                    else:
                        q.append([start, end, False])   # start, end, reading it
            self._advance(tp)

    def _stash(self, tp, lo: int, hi: int, pieces: list[Slice] | None = None) -> None:
        """Keep buffered records ``lo:hi`` of ``tp`` that belong to ``pieces`` (by
        default: the pieces of windows not yet wanted)."""
        offs = self.offs[tp]
        if lo >= hi or self.stashed >= 4 * self.limit:
            return
        pieces = self.later.get(tp, []) if pieces is None else pieces
        first, last = offs[lo], offs[hi - 1]
        i = max(0, bisect.bisect_right(pieces, first, key=operator.attrgetter("start")) - 1)
        for p in pieces[i:]:
            if p.start > last:
                break
            a, z = bisect.bisect_left(offs, p.start, lo, hi), bisect.bisect_left(offs, p.end, lo, hi)
            if a < z:
                got = self.stash.setdefault(p, ([], [], []))
                got[0].extend(offs[a:z])
                got[1].extend(self.vals[tp][a:z])
                got[2].extend(self.recs[tp][a:z])
                self.stashed += z - a

    def _sorted_stash(self, piece: Slice) -> tuple[list, list, list] | None:
        """The piece's stashed records in offset order, each offset once (a region
        can be fetched past twice before its window comes)."""
        got = self.stash.get(piece)
        if got is None:
            return None
        offs = np.asarray(got[0], dtype=np.int64)
        uniq, first = np.unique(offs, return_index=True)
        if len(uniq) != len(offs) or np.any(np.diff(offs) < 0):
            keep = first.tolist()
            got = self.stash[piece] = (uniq.tolist(), [got[1][i] for i in keep], [got[2][i] for i in keep])
            self.stashed -= len(offs) - len(uniq)
        return got

    def _advance(self, tp) -> None:
        """Drop runs already received; seek to the next one unless it starts in what
        is buffered or at most ``gap`` offsets ahead; resume or pause the partition."""
        q = self.runs[tp]
        while q:
            if not q[0][2]:   # a run's turn comes: read on to it, or seek
                start, offs, h = q[0][0], self.offs[tp], self.head[tp]
                have_from = offs[h] if h < len(offs) else self.delivered[tp]
                if not have_from <= start <= self.delivered[tp] + self.gap:
                    self._seek(tp, start)
                q[0][2] = True
            if self.delivered[tp] < q[0][1]:
                break
            q.popleft()
        self._flow(tp)

    def _seek(self, tp, offset: int) -> None:
        """Forward, what is buffered stays (earlier pieces of the window still take it);
        back, it goes (to the stash where later windows want it)."""
        self.consumer.seek(tp[0], tp[1], offset)
        if offset < self.delivered[tp]:
            self._stash(tp, self.head[tp], len(self.offs[tp]))
            del self.offs[tp][:], self.vals[tp][:], self.recs[tp][:]
            self.head[tp] = 0
        self.delivered[tp] = offset

    def _flow(self, tp) -> None:
        full = len(self.offs[tp]) - self.head[tp] >= self.limit
        if self.runs[tp] and not full:
            if tp in self.paused:
                self.consumer.resume([tp])
                # librdkafka fetches a resumed partition only at its broker thread's next
                # 1 s tick; a seek wakes it (measured here: ~950 ms to the first record -> ~10 ms)
                self.consumer.seek(tp[0], tp[1], self.delivered[tp])
                self.paused.discard(tp)
        elif tp not in self.paused:
            self.consumer.pause([tp])
            self.paused.add(tp)

    def outstanding(self) -> int:
        """Wanted records not yet received: a poll asks for no more, so the last poll
        of a run returns at once instead of waiting out its timeout."""
        return sum(max(0, q[-1][1] - self.delivered[tp]) for tp, q in self.runs.items() if q and tp not in self.paused)

    def fill(self, max_records: int, timeout: float, idle: float = 0.01) -> int:
        """One poll; returns the records kept. With nothing to read until records are
        taken or more are wanted, it sleeps ``idle`` s (0: returns at once)."""
        self._skip_absent()
        want = min(max_records, self.outstanding())
        if want <= 0:
            if idle:
                time.sleep(idle)
            return 0
        runs = self.consumer.poll_runs(want, timeout)
        if not runs:
            self._skip_absent()
            return 0
        self.last_record = time.monotonic()
        got = 0
        for tp, offs, vals, recs in runs:
            first = bisect.bisect_left(offs, self.delivered.get(tp, 0))   # anything from before a seek
            if first < len(offs):
                self.offs[tp].extend(offs[first:])
                self.vals[tp].extend(vals[first:])
                self.recs[tp].extend(recs[first:])
                self.delivered[tp] = offs[-1] + 1
                got += len(offs) - first
        for tp in {r[0] for r in runs}:
            self._advance(tp)
        self._skip_absent()
        return got

    def _skip_absent(self) -> None:
        """Offsets that exist in the log but are never delivered (transaction commit and
        abort markers, aborted records under read_committed, compacted-away records)
        are *absent*: the client's position passes them without a record, so they are
        known at once and never waited for. (librdkafka reports no position after a
        seek until a record or marker is read past it: never a stale one.)"""
        for tp, q in self.runs.items():
            if q and tp not in self.paused and self.delivered[tp] < q[-1][1]:
                pos = self.consumer.position(*tp)
                if pos is not None and pos > self.delivered[tp]:
                    self.delivered[tp] = pos
                    self.last_record = time.monotonic()
                    self._advance(tp)

    def take(self, piece: Slice, out_vals: list, out_offs: list, out_recs: list) -> bool:
        """Move ``piece``'s records into out lists, in offset order (its stashed
        segments and what the log delivered of the others); True once complete."""
        tp, segs = piece.tp, self.segments[piece]
        while segs:
            start, end, stashed = segs[0]
            if stashed:
                offs, vals, recs = self.stash[piece]
                lo, hi = bisect.bisect_left(offs, start), bisect.bisect_left(offs, end)
            else:
                offs, vals, recs, h = self.offs[tp], self.vals[tp], self.recs[tp], self.head[tp]
                lo = bisect.bisect_left(offs, start, h)   # earlier ones: a gap read through
                self._stash(tp, h, lo)
                hi = bisect.bisect_left(offs, end, lo)
                self.head[tp] = hi
            out_vals.extend(vals[lo:hi])
            out_offs.extend(offs[lo:hi])
            out_recs.extend(recs[lo:hi])
            if not stashed:
                if hi > 65536 and hi * 2 > len(offs):  # drop what was handed out, now and then
                    del offs[:hi], vals[:hi], recs[:hi]
                    self.head[tp] = 0
                self._flow(tp)
                if self.delivered.get(tp, 0) < end:
                    return False
            segs.popleft()
        del self.segments[piece]
        if piece in self.stash:
            self.stashed -= len(self.stash.pop(piece)[0])
        return True

    def stalled(self, piece: Slice, timeout: float) -> bool:
        """No record for ``timeout`` s and the rest of the piece is not a gap in the log."""
        if time.monotonic() - self.last_record < timeout:
            return False
        end = self.segments[piece][0][1] if self.segments.get(piece) else piece.end
        pos = self.consumer.position(*piece.tp)
        if pos is not None and pos >= end:
            self.delivered[piece.tp] = max(self.delivered[piece.tp], pos)   # compaction, transaction markers
            return False
        return True


def _segments(piece: Slice, stashed: tuple[list, list, list] | None) -> list[list]:
    """``piece`` as [start, end, from stash] segments in offset order: runs of
    consecutive stashed offsets, and the rest (to read from the log)."""
    if not stashed:
        return [[piece.start, piece.end, False]]
    offs = np.asarray(stashed[0], dtype=np.int64)
    breaks = np.flatnonzero(np.diff(offs) != 1) + 1
    starts, ends = offs[np.r_[0, breaks]].tolist(), (offs[np.r_[breaks - 1, len(offs) - 1]] + 1).tolist()
    out, at = [], piece.start
    for a, z in zip(starts, ends):
        if a > at:
            out.append([at, a, False])
        out.append([a, z, True])
        at = z
    if at < piece.end:
        out.append([at, piece.end, False])
    return out


def _by_partition(pieces) -> dict[tuple, list[Slice]]:
    out: dict[tuple, list[Slice]] = {}
    for p in sorted(pieces):
        out.setdefault(p.tp, []).append(p)
    return out


class KafkaStreamDataset(IterableDataset):
    """Iterating yields this rank's planned batches for one epoch, then stops."""

    def __init__(self, kafka_cfg: KafkaConfig, data: DataConfig, topic: Manifest, plan: RankPlan,
                 num_classes: int | None = None, pin_memory: bool = False, forwarded: set | None = None,
                 consumer_factory: Callable | None = None, producer_factory: Callable | None = None,
                 auth: SourceConfig | None = None, keep_keys: bool = False):
        """``forwarded``: (topic, partition, offset) of bad records already in a DLQ;
        shared, and added to as this stream forwards more. ``auth``: Schema Registry
        credentials for a foreign topic's framing."""
        super().__init__()
        self.kafka, self.data, self.topic, self.plan = kafka_cfg, data, topic, plan
        self.num_classes, self.pin_memory, self.auth, self.keep_keys = num_classes, pin_memory, auth, keep_keys
        self._consumer_factory = consumer_factory or (
            lambda: kafka.make_consumer(kafka_cfg, group_id="ddp_kbit.train", strict=True))
        self._dead_letters = DeadLetters(kafka_cfg, producer_factory, forwarded, data.dlq_max_bytes)
        self.steps = 0               # batches marked used, in plan order
        self.used_bad: list[tuple[str, int, int, str]] = []   # bad records of batches used in steps
        self.used_absent: list[tuple[str, int, int]] = []
        self.bad = BadRecords()      # as decoded (read-ahead included): for the --max-bad-fraction stop
        self.wait_seconds = 0.0

    def __len__(self) -> int:
        return self.plan.num_batches

    @property
    def dead_lettered(self) -> int:
        return self._dead_letters.sent

    def mark_used(self, batch: StreamBatch) -> None:
        """Call after the optimizer step that consumed ``batch`` (batches in order)."""
        if batch.step != self.steps:
            raise StreamError(f"mark_used: batch {batch.step} of the plan marked after {self.steps} batches; "
                              "mark batches in the order they were yielded")
        self.steps += 1
        self.used_bad.extend(batch.bad_records)
        self.used_absent.extend(batch.absent)

    @property
    def consumed(self) -> list[ConsumedRange]:
        """The offsets of the batches marked used, merged per partition, each range with
        its good records (its bad records and offsets the log lacks not counted)."""
        skipped = collections.Counter((t, p) for t, p, _ in self.used_absent)
        skipped.update((t, p) for t, p, _, _ in self.used_bad)
        excluded = {tp: np.sort(np.array([o for t, p, o, *_ in [*self.used_bad, *self.used_absent]
                                          if (t, p) == tp], dtype=np.int64)) for tp in skipped}
        out = []
        for s in self.plan.used(self.steps):
            n = len(s)
            if s.tp in excluded:
                ex = excluded[s.tp]
                n -= int(np.searchsorted(ex, s.end) - np.searchsorted(ex, s.start))
            out.append(ConsumedRange(s.topic, s.partition, s.start, s.end, n, self.plan.rank))
        return merge_consumed(out)

    # ---------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[StreamBatch]:
        if torch.utils.data.get_worker_info() is not None:
            raise StreamError("KafkaStreamDataset reads its planned offsets with its own prefetch thread; "
                              "DataLoader worker processes would each read the same records. Iterate it directly, "
                              "or use DataLoader(dataset, batch_size=None, num_workers=0)")
        if not self.plan.num_batches:
            return
        q: queue.Queue = queue.Queue(maxsize=max(1, self.data.prefetch))
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(q, stop), daemon=True, name="kafka-prefetch")
        worker.start()
        try:
            for _ in range(self.plan.num_batches):
                t0 = time.perf_counter()
                item = q.get()
                self.wait_seconds += time.perf_counter() - t0
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while worker.is_alive():  # unblock a worker waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    worker.join(0.05)

    def _produce(self, q: queue.Queue, stop: threading.Event) -> None:
        try:
            with self._consumer_factory() as consumer:
                # room for a whole window per partition, or a window could never complete
                limit = max(self.data.buffer_records, 2 * max(len(w) for w in self.plan.windows))
                reader = _Reader(consumer, limit, self.data.shuffle_chunk)
                reader.start(self.plan)
                codec = codec_for(self.topic, self.auth)
                windows, step = self.plan.windows, 0
                reader.want(windows[0])
                for w, window in enumerate(windows):
                    vals, offs, recs, planned_at = self._collect(window, reader)
                    if w + 1 < len(windows):
                        reader.want(windows[w + 1])   # read ahead while this window's batches wait
                    for item in self._batches(window, step, codec, reader, vals, offs, recs, planned_at):
                        if not _put(q, item, stop, lambda: reader.fill(self.data.poll_records, 0, idle=0)):
                            return
                    step += len(window.sizes)
        except BaseException as exc:  # handed to the training thread, raised there
            q.put(exc)
        finally:
            self._dead_letters.close()

    def _collect(self, window: ReadWindow, reader: _Reader):
        """The window's records in read order, and each one's planned position."""
        vals, offs, recs, planned_at = [], [], [], []
        base, at = {}, 0
        for p in window.pieces:
            base[p], at = at, at + len(p)
        for piece in sorted(window.pieces):
            n0 = len(offs)
            while not reader.take(piece, vals, offs, recs):
                if not reader.fill(self.data.poll_records, 0.2) and reader.stalled(piece, self.data.stall_timeout_s):
                    at = offs[-1] + 1 if len(offs) > n0 else piece.start
                    raise StreamError(f"no records from {piece.topic}[{piece.partition}] at offset {at} for "
                                      f"{self.data.stall_timeout_s:.0f}s (planned up to {piece.end}); were they "
                                      "deleted by retention, or is the broker down?")
            planned_at.append(base[piece] - piece.start + np.asarray(offs[n0:], dtype=np.int64))
        return vals, offs, recs, np.concatenate(planned_at) if planned_at else np.zeros(0, np.int64)

    def _batches(self, window: ReadWindow, step: int, codec, reader, vals, offs, recs, planned_at) -> list[StreamBatch]:
        """Decode the window in one call (the vectorised decoder's fixed cost is per
        call), put the good rows in planned order, and cut them into its batches."""
        decoded = codec.decode_batch(vals, self.topic.shape, self.topic.dtype, self.num_classes)
        n, order, bounds = len(window), window.order, window.bounds
        rank_in_order = np.empty(n, np.int64)
        rank_in_order[order] = np.arange(n)
        batch_of = lambda pos: np.searchsorted(bounds, rank_in_order[pos], side="right") - 1  # noqa: E731
        bad = [[] for _ in window.sizes]
        tp_ix, planned_offs = window.located
        for pos, err in decoded.errors:    # rare: each bad value goes to its batch and the DLQ
            tp = window.tps[tp_ix[planned_at[pos]]]
            bad[batch_of(planned_at[pos])].append((tp[0], tp[1], offs[pos], err.reason))
            key, headers = reader.consumer.meta(recs[pos])
            self._dead_letters.send(tp, offs[pos], key, vals[pos], headers, err)
        self.bad.add(len(vals), [err.reason for _, err in decoded.errors])
        self._check_bad_fraction()
        row = np.full(n, -1, np.int64)
        row[planned_at[decoded.positions]] = np.arange(len(decoded.positions))
        in_order = row[order]
        good = in_order >= 0
        cuts = np.concatenate([[0], np.cumsum(good)])[bounds]
        images, labels = decoded.images[in_order[good]], decoded.labels[in_order[good]]
        kept = order[good]   # planned positions of the good rows, in batch order
        where = np.stack([np.asarray([tp[1] for tp in window.tps], np.int64)[tp_ix[kept]], planned_offs[kept]], 1) \
            if len(kept) else np.zeros((0, 2), np.int64)
        absent = self._absent(window, planned_at, bounds, order)
        if self.keep_keys:
            inputs = decoded.positions[in_order[good]]
            keys = [reader.consumer.meta(recs[i])[0] for i in inputs.tolist()]
            indices = decoded.indices[in_order[good]]
        out = []
        for j, size in enumerate(window.sizes):
            a, z = cuts[j], cuts[j + 1]
            x = torch.from_numpy(images[a:z])
            if self.pin_memory:
                x = x.pin_memory()
            out.append(StreamBatch(x, torch.from_numpy(labels[a:z]), step + j, size, tuple(bad[j]), absent[j],
                                   where[a:z], keys[a:z] if self.keep_keys else None,
                                   indices[a:z] if self.keep_keys else None))
        return out

    @staticmethod
    def _absent(window: ReadWindow, planned_at: np.ndarray, bounds: np.ndarray, order: np.ndarray) -> list[tuple]:
        """Per batch: planned offsets no record came for (compaction, transaction markers)."""
        if len(planned_at) == len(window):
            return [()] * len(window.sizes)
        have = np.zeros(len(window), bool)
        have[planned_at] = True
        tp_ix, offs = window.located
        out = []
        for j in range(len(window.sizes)):
            pos = order[bounds[j]:bounds[j + 1]]
            lost = pos[~have[pos]]
            out.append(tuple((*window.tps[tp_ix[p]], int(offs[p])) for p in lost))
        return out

    def _check_bad_fraction(self) -> None:
        b = self.bad
        # judge only once enough records were seen for the fraction to mean something
        if b.count and b.seen >= 100 and b.fraction > self.data.max_bad_fraction:
            raise StreamError(f"{b.count} of {b.seen} records are malformed ({dict(b.by_reason)}), more than "
                              f"--max-bad-fraction {self.data.max_bad_fraction}; see the dead-letter topic")


def _put(q: queue.Queue, item, stop: threading.Event, meanwhile: Callable[[], object]) -> bool:
    """Put unless told to stop; while the queue is full, ``meanwhile`` (read ahead
    what the client already fetched, without waiting). When it has nothing to do,
    block on the queue itself, which wakes the moment the step takes a batch (a
    sleep here instead cost a fast consumer most of its rate: ~25k records/s
    where the stream decodes ~150k). False when stopped."""
    while not stop.is_set():
        try:
            q.put_nowait(item)
            return True
        except queue.Full:
            pass
        if meanwhile():
            continue
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            pass
    return False


def to_device(batch: StreamBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 -> float on the device (4x less to copy than float32 on the host);
    float32 topics stay as they are. (N, H, W) -> (N, 1, H, W); HWC -> CHW."""
    non_blocking = device.type == "cuda"
    x = batch.images.to(device, non_blocking=non_blocking)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if x.dim() == 3:            # (N, H, W) -> (N, 1, H, W)
        x = x.unsqueeze(1)
    elif x.dim() == 4:          # (N, H, W, C) -> (N, C, H, W)
        x = x.permute(0, 3, 1, 2)
    return x, batch.labels.to(device, non_blocking=non_blocking)
