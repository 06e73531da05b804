"""KafkaStreamDataset: one rank's planned batches, read straight from Kafka.

``assign`` + position per partition (never a consumer group), large polls, whole
batch decode, and a bounded background prefetch so Kafka I/O and decoding overlap
the training step. It yields ``StreamBatch``es of uint8 images (scaled to float on
the device). Batches are fixed by offsets in the plan; ``mark_used`` records the
offsets of batches that went into an optimizer step, so a checkpoint never claims
records that were only prefetched. Bad records are counted by reason, forwarded
to ``<topic>.dlq`` and skipped.
"""
from __future__ import annotations

import bisect
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset

from ddp_kbit import kafka
from ddp_kbit.config import DataConfig, KafkaConfig
from ddp_kbit.data.dead_letters import BadRecords, DeadLetters
from ddp_kbit.data.manifest import Manifest
from ddp_kbit.data.partitions import ConsumedRange, RankPlan, Slice, merge_consumed
from ddp_kbit.errors import StreamError
from ddp_kbit.wire import get_codec

log = logging.getLogger(__name__)


@dataclass
class StreamBatch:
    images: torch.Tensor     # uint8 (N, *shape)
    labels: torch.Tensor     # int64 (N,)
    used: tuple[Slice, ...]  # the offsets this batch covers (bad records and gaps included)
    good: tuple[int, ...] = ()  # per slice of ``used``: records that decoded and were trained on
    bad_records: tuple[tuple[str, int, int, str], ...] = ()  # (topic, partition, offset, reason)
    missing: int = 0         # planned offsets the log does not hold (compaction, transaction markers)

    def __len__(self) -> int:
        return len(self.labels)


class _PartitionBuffers:
    """Records read ahead, per partition, as parallel offset/value lists in offset
    order (slices and bisects, no per-record Python work); a partition whose
    buffer is full is paused so an idle one cannot fill memory."""

    def __init__(self, consumer, limit: int, span: dict[tuple, tuple[int, int]]):
        """``span``: per partition, the first and one past the last planned offset."""
        self.consumer, self.limit, self.span = consumer, limit, span
        self.offs: dict[tuple, list] = collections.defaultdict(list)
        self.vals: dict[tuple, list] = collections.defaultdict(list)
        self.head: dict[tuple, int] = collections.defaultdict(int)  # first not yet handed out
        self.paused: set[tuple] = set()
        self.next: dict[tuple, int] = {}  # one past the last offset handed out, per partition
        self.last_record = time.monotonic()

    def outstanding(self) -> int:
        """Planned records not yet received from the partitions being read: a poll
        asks for no more, so the last poll of a slice returns at once instead of
        waiting out its timeout for records that will never come."""
        n = 0
        for tp, (start, end) in self.span.items():
            if tp not in self.paused:
                offs = self.offs[tp]
                n += max(0, end - (offs[-1] + 1 if offs else start))
        return n

    def fill(self, max_records: int, timeout: float) -> int:
        want = max(1, min(max_records, self.outstanding()))
        runs = self.consumer.poll_runs(want, timeout)
        if not runs:
            return 0
        self.last_record = time.monotonic()
        got = 0
        for tp, offs, vals in runs:
            self.offs[tp].extend(offs)
            self.vals[tp].extend(vals)
            got += len(vals)
        full = {tp for tp in self.offs if len(self.offs[tp]) - self.head[tp] >= self.limit} - self.paused
        if full:
            self.consumer.pause(full)
            self.paused |= full
        return got

    def take(self, piece: Slice, out_vals: list, out_offs: list) -> bool:
        """Move ``piece``'s records into out lists; True once the piece is complete."""
        tp = piece.tp
        offs, vals, h = self.offs[tp], self.vals[tp], self.head[tp]
        lo = bisect.bisect_left(offs, piece.start, h)   # earlier offsets belong to no piece of this plan
        hi = bisect.bisect_left(offs, piece.end, lo)
        out_vals.extend(vals[lo:hi])
        out_offs.extend(offs[lo:hi])
        if hi > h:
            self.next[tp] = offs[hi - 1] + 1
        self.head[tp] = hi
        if hi > 65536 and hi * 2 > len(offs):  # drop what was handed out, now and then
            del offs[:hi], vals[:hi]
            self.head[tp] = hi = 0
        if tp in self.paused and len(offs) - hi < self.limit // 2:
            self.consumer.resume([tp])
            self.paused.discard(tp)
        # complete when a later record is already buffered or the last one was handed out
        return hi < len(offs) or self.next.get(tp, -1) >= piece.end


class KafkaStreamDataset(IterableDataset):
    """Iterating yields this rank's planned batches for one epoch, then stops."""

    def __init__(self, kafka_cfg: KafkaConfig, data: DataConfig, topic: Manifest, plan: RankPlan,
                 num_classes: int | None = None, pin_memory: bool = False, forwarded: set | None = None,
                 consumer_factory: Callable | None = None, producer_factory: Callable | None = None):
        """``forwarded``: (topic, partition, offset) of bad records already in a DLQ;
        shared, and added to as this stream forwards more."""
        super().__init__()
        self.kafka, self.data, self.topic, self.plan = kafka_cfg, data, topic, plan
        self.num_classes, self.pin_memory = num_classes, pin_memory
        self._consumer_factory = consumer_factory or (
            lambda: kafka.make_consumer(kafka_cfg, group_id="ddp_kbit.train", strict=True))
        self._dead_letters = DeadLetters(kafka_cfg, producer_factory, forwarded)
        self.consumed: list[ConsumedRange] = []  # ranges used in optimizer steps, with their good records
        self.used_bad: list[tuple[str, int, int, str]] = []  # bad records of batches used in steps
        self.used_missing = 0
        self.bad = BadRecords()  # as decoded (read-ahead included): for the --max-bad-fraction stop
        self.wait_seconds = 0.0

    def __len__(self) -> int:
        return len(self.plan.batches)

    def plan_batch_size(self) -> int:
        return sum(len(s) for s in self.plan.batches[0]) if self.plan.batches else 1

    def mark_used(self, batch: StreamBatch) -> None:
        """Call after the optimizer step that consumed ``batch``."""
        used = [ConsumedRange(s.topic, s.partition, s.start, s.end, n, self.plan.rank)
                for s, n in zip(batch.used, batch.good)]
        self.consumed = merge_consumed([*self.consumed, *used])
        self.used_bad.extend(batch.bad_records)
        self.used_missing += batch.missing

    # ---------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[StreamBatch]:
        if torch.utils.data.get_worker_info() is not None:
            raise StreamError("KafkaStreamDataset reads its planned offsets with its own prefetch thread; "
                              "DataLoader worker processes would each read the same records. Iterate it directly, "
                              "or use DataLoader(dataset, batch_size=None, num_workers=0)")
        batches = self.plan.batches
        if not batches:
            return
        q: queue.Queue = queue.Queue(maxsize=max(1, self.data.prefetch))
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(batches, q, stop), daemon=True, name="kafka-prefetch")
        worker.start()
        try:
            for _ in range(len(batches)):
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

    def _produce(self, batches, q: queue.Queue, stop: threading.Event) -> None:
        try:
            with self._consumer_factory() as consumer:
                span = self.plan.span()
                consumer.assign([(t, p, start) for (t, p), (start, _) in span.items()])
                bufs = _PartitionBuffers(consumer, self.data.buffer_records, span)
                codec = get_codec(self.topic.format, self.topic.layout)
                per_group = max(1, self.data.decode_records // max(1, self.plan_batch_size()))
                for g in range(0, len(batches), per_group):
                    for item in self._read_group(batches[g:g + per_group], bufs, codec):
                        if not _put(q, item, stop):
                            return
        except BaseException as exc:  # handed to the training thread, raised there
            q.put(exc)
        finally:
            self._dead_letters.close()

    def _read_group(self, group, bufs: _PartitionBuffers, codec) -> list[StreamBatch]:
        """Read several planned batches, decode them in one call (the vectorised
        decoder's fixed cost is per call), then split them again."""
        vals, offs, bounds = [], [], [0]
        good = [[0] * len(batch) for batch in group]    # records received, then good, per piece
        piece_ends, pieces = [], []                     # where each piece's values end; its (batch, piece)
        for b, batch in enumerate(group):
            for i, piece in enumerate(batch):
                _check_order(bufs, piece)
                n0 = len(vals)
                while not bufs.take(piece, vals, offs):
                    if not bufs.fill(self.data.poll_records, 0.2):
                        self._check_stall(bufs, piece, offs[n0:])
                good[b][i] = len(vals) - n0
                piece_ends.append(len(vals))
                pieces.append((b, i))
            bounds.append(len(vals))
        decoded = codec.decode_batch(vals, self.topic.shape, self.topic.dtype, self.num_classes)
        missing = [sum(len(p) for p in batch) - (bounds[b + 1] - bounds[b]) for b, batch in enumerate(group)]
        bad_records = [[] for _ in group]
        for pos, err in decoded.errors:   # rare: find each bad value's piece by bisection
            b, i = pieces[bisect.bisect_right(piece_ends, pos)]
            good[b][i] -= 1
            piece = group[b][i]
            bad_records[b].append((piece.topic, piece.partition, offs[pos], err.reason))
            self._dead_letters.send(piece.tp, offs[pos], vals[pos], err)
        self.bad.add(len(vals), [err.reason for _, err in decoded.errors])
        self._check_bad_fraction()
        # good rows are in input order, so each batch's rows are one contiguous run
        cuts = np.searchsorted(decoded.positions, bounds)
        out = []
        for b, batch in enumerate(group):
            a, z = cuts[b], cuts[b + 1]
            images = torch.from_numpy(np.ascontiguousarray(decoded.images[a:z]))
            if self.pin_memory:
                images = images.pin_memory()
            out.append(StreamBatch(images, torch.from_numpy(decoded.labels[a:z].copy()), batch, tuple(good[b]),
                                   tuple(bad_records[b]), missing[b]))
        return out

    def _check_stall(self, bufs: _PartitionBuffers, piece: Slice, got_offsets: list) -> None:
        if time.monotonic() - bufs.last_record < self.data.stall_timeout_s:
            return
        pos = bufs.consumer.position(*piece.tp)
        if pos is not None and pos >= piece.end:
            return  # the rest of the piece is a gap in the log (compaction, markers)
        at = got_offsets[-1] + 1 if got_offsets else piece.start
        raise StreamError(f"no records from {piece.topic}[{piece.partition}] at offset {at} for "
                          f"{self.data.stall_timeout_s:.0f}s (planned up to {piece.end}); were they deleted by "
                          "retention, or is the broker down?")

    def _check_bad_fraction(self) -> None:
        b = self.bad
        # judge only once enough records were seen for the fraction to mean something
        if b.count and b.seen >= 100 and b.fraction > self.data.max_bad_fraction:
            raise StreamError(f"{b.count} of {b.seen} records are malformed ({dict(b.by_reason)}), more than "
                              f"--max-bad-fraction {self.data.max_bad_fraction}; see the dead-letter topic")


def _check_order(bufs: _PartitionBuffers, piece: Slice) -> None:
    """Each partition is read once, front to back: a piece that starts before what was
    already handed out could only come back empty, so it is an error, never a silent gap."""
    done = bufs.next.get(piece.tp, piece.start)
    if piece.start < done:
        raise StreamError(f"the plan goes back in {piece.topic}[{piece.partition}]: offsets [{piece.start}, "
                          f"{piece.end}) after offset {done - 1} was read; plans must read each partition front to back")


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put unless told to stop; False when stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def to_device(batch: StreamBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 -> float on the device (4x less to copy than float32 on the host)."""
    non_blocking = device.type == "cuda"
    x = batch.images.to(device, non_blocking=non_blocking)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if x.dim() == 3:            # (N, H, W) -> (N, 1, H, W)
        x = x.unsqueeze(1)
    elif x.dim() == 4:          # (N, H, W, C) -> (N, C, H, W)
        x = x.permute(0, 3, 1, 2)
    return x, batch.labels.to(device, non_blocking=non_blocking)
