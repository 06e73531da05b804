"""Kafka clients by name, and the reads built on them that the rest of the
package shares: reachability, true end offsets, and reading ranges in full.

    with make_consumer(cfg) as consumer:
        bounds = end_offsets(consumer, [(topic, 0)])
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence

from ddp_kbit.config import KafkaConfig
from ddp_kbit.errors import ClientError
from ddp_kbit.kafka import confluent, kafka_python
from ddp_kbit.kafka.protocol import TP, Admin, Record, RecordConsumer, RecordProducer

_ADAPTERS = {"confluent": confluent, "kafka-python": kafka_python}


def make_producer(cfg: KafkaConfig, compression: str = "none", measure: bool = False, **kw) -> RecordProducer:
    """acks=all and idempotence on; a context manager that flushes and closes.
    ``measure``: ``wire_bytes()`` tells the bytes sent after compression."""
    return _ADAPTERS[cfg.client].Producer(cfg, compression, measure, **kw)


def make_consumer(cfg: KafkaConfig, group_id: str = "ddp_kbit", strict: bool = False, **kw) -> RecordConsumer:
    """No auto-commit, and only ever ``assign``ed; a context manager. ``strict``: an
    offset the broker no longer has is an error, never a silent jump to the earliest."""
    return _ADAPTERS[cfg.client].Consumer(cfg, group_id, strict, **kw)


def make_admin(cfg: KafkaConfig) -> Admin:
    return _ADAPTERS[cfg.client].Admin(cfg)


def topics(cfg: KafkaConfig) -> dict[str, int]:
    """Topic -> partition count, or ClientError within ``request_timeout_s``."""
    with make_admin(cfg) as admin:
        return admin.topics()


def end_offsets(consumer: RecordConsumer, tps: Sequence[TP], timeout: float = 10.0) -> dict[TP, tuple[int, int]]:
    """(log start, high watermark) per partition, right on real Kafka *and* tansu.

    ListOffsets(latest) is the high watermark on Kafka, but on tansu it is the base
    offset of the last record batch. A fetch response always carries the true high
    watermark, so: seek to ListOffsets(latest), fetch once per partition, and take
    the larger of the two. Costs one small fetch; never waits on a timeout when the
    partition is empty.
    """
    listed = consumer.list_offsets(tps)
    consumer.assign([(t, p, listed[(t, p)][1]) for t, p in tps])
    deadline = time.monotonic() + timeout
    high: dict[TP, int] = {}
    while len(high) < len(tps):
        consumer.poll(1000, 0.1)
        for t, p in tps:
            h = consumer.cached_high(t, p)
            if h is not None and (t, p) not in high:
                high[(t, p)] = h
        if time.monotonic() > deadline:
            missing = [tp for tp in tps if tp not in high]
            raise ClientError(f"no fetch response for {missing} within {timeout:.0f}s")
    return {tp: (listed[tp][0], max(listed[tp][1], high[tp])) for tp in tps}


def partition_bounds(cfg: KafkaConfig, topic: str, partitions, group_id: str = "ddp_kbit") -> dict[int, tuple[int, int]]:
    """Partition -> (log start, high watermark) of ``topic``'s ``partitions`` (numbers), now."""
    with make_consumer(cfg, group_id=group_id) as consumer:
        bounds = end_offsets(consumer, [(topic, p) for p in partitions])
    return {p: b for (_, p), b in bounds.items()}


def read_all(consumer: RecordConsumer, tps: Sequence[TP], ends: dict[TP, int] | None = None,
             starts: dict[TP, int] | None = None, headers: bool = False, timeout: float = 30.0) -> list[Record]:
    """Every record of ``tps`` from start (default: log start) to end (default: the
    current high watermark). Used for manifests and verification, not training."""
    bounds = end_offsets(consumer, tps) if ends is None or starts is None else {}
    starts = starts or {tp: bounds[tp][0] for tp in tps}
    ends = ends or {tp: bounds[tp][1] for tp in tps}
    todo = {tp for tp in tps if ends[tp] > starts[tp]}
    out: list[Record] = []
    if not todo:
        return out
    consumer.assign([(t, p, starts[(t, p)]) for t, p in todo])
    deadline = time.monotonic() + timeout
    seen: dict[TP, int] = defaultdict(int)
    while todo:
        for r in consumer.poll(10_000, 0.2, headers=headers):
            tp = (r.topic, r.partition)
            if tp in todo and r.offset < ends[tp]:
                out.append(r)
                seen[tp] = r.offset + 1
        for tp in todo:   # past offsets no record comes for (transaction markers): the client's position
            seen[tp] = max(seen[tp], consumer.position(*tp) or 0)
        todo = {tp for tp in todo if seen[tp] < ends[tp]}
        if todo and time.monotonic() > deadline:
            raise ClientError(f"timed out reading {sorted(todo)} up to {[ends[tp] for tp in sorted(todo)]}")
    return out


def read_topic(cfg: KafkaConfig, topic: str, partitions: int | None = None, headers: bool = False,
               group_id: str = "ddp_kbit.reader") -> list[Record]:
    """Every record a topic holds now (all partitions)."""
    if partitions is None:
        partitions = topics(cfg)[topic]
    with make_consumer(cfg, group_id=group_id) as consumer:
        return read_all(consumer, [(topic, p) for p in range(partitions)], headers=headers)
