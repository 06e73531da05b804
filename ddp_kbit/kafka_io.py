"""Kafka clients (confluent-kafka, kafka-python) behind one small interface.

Everything above this module speaks ``RecordProducer`` / ``RecordConsumer`` /
``Admin``; only here do the two libraries' names and quirks appear. Consumers
only ever ``assign`` (never broker-side groups): the embedded broker never hands
out group assignments, and training owns its offsets anyway.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple, Sequence

from ddp_kbit.config import KafkaConfig

log = logging.getLogger(__name__)


class ClientError(RuntimeError):
    """A Kafka failure worth one clear line to the user (unreachable, missing topic...)."""


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list | None = None


TP = tuple  # (topic, partition)


@dataclass
class DeliveryReport:
    """What the broker acknowledged: first/last offset per partition, and failures."""

    sent: int = 0
    acked: int = 0
    failed: int = 0
    first_error: str | None = None
    ranges: dict = field(default_factory=dict)  # (topic, partition) -> [first, last+1]

    def ack(self, topic: str, partition: int, offset: int) -> None:
        self.acked += 1
        r = self.ranges.get((topic, partition))
        if r is None:
            self.ranges[(topic, partition)] = [offset, offset + 1]
        else:
            r[0], r[1] = min(r[0], offset), max(r[1], offset + 1)

    def fail(self, error: str) -> None:
        self.failed += 1
        self.first_error = self.first_error or error

    @property
    def pending(self) -> int:
        return self.sent - self.acked - self.failed


# ------------------------------------------------------------------ settings
# librdkafka logs to stderr by default; route it through Python logging so a
# refused connection is one clear error line, not a screenful of retries.
RDKAFKA_LOG = logging.getLogger("librdkafka")


def confluent_settings(cfg: KafkaConfig) -> dict:
    conf = {"bootstrap.servers": cfg.bootstrap_servers, "security.protocol": cfg.security_protocol.lower(),
            "socket.timeout.ms": int(cfg.request_timeout_s * 1000), "logger": RDKAFKA_LOG}
    optional = {"sasl.mechanism": cfg.sasl_mechanism, "sasl.username": cfg.sasl_username,
                "sasl.password": cfg.sasl_password, "ssl.ca.location": cfg.ssl_cafile,
                "ssl.certificate.location": cfg.ssl_certfile, "ssl.key.location": cfg.ssl_keyfile,
                "ssl.key.password": cfg.ssl_password}
    conf.update({k: v for k, v in optional.items() if v is not None})
    return conf


def kafka_python_settings(cfg: KafkaConfig) -> dict:
    conf = {"bootstrap_servers": cfg.bootstrap_servers.split(","), "security_protocol": cfg.security_protocol,
            "request_timeout_ms": int(cfg.request_timeout_s * 1000) + 1000,
            # bounds the version probe too, so an unreachable broker fails within the timeout
            "bootstrap_timeout_ms": int(cfg.request_timeout_s * 1000)}
    optional = {"sasl_mechanism": cfg.sasl_mechanism, "sasl_plain_username": cfg.sasl_username,
                "sasl_plain_password": cfg.sasl_password, "ssl_cafile": cfg.ssl_cafile,
                "ssl_certfile": cfg.ssl_certfile, "ssl_keyfile": cfg.ssl_keyfile, "ssl_password": cfg.ssl_password}
    conf.update({k: v for k, v in optional.items() if v is not None})
    return conf


# ------------------------------------------------------------------ confluent
class ConfluentProducer:
    def __init__(self, cfg: KafkaConfig, compression: str = "none", extra: dict | None = None):
        from confluent_kafka import Producer

        conf = confluent_settings(cfg)
        conf.update({"enable.idempotence": True, "acks": "all", "compression.type": compression,
                     "linger.ms": 20, "batch.size": 1_000_000, "queue.buffering.max.messages": 500_000,
                     "queue.buffering.max.kbytes": 1_048_576, "message.timeout.ms": 120_000})
        conf.update(extra or {})
        self._p = Producer(conf)
        self.report = DeliveryReport()

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self.report.fail(str(err))
        else:
            self.report.ack(msg.topic(), msg.partition(), msg.offset())

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None,
             headers: list | None = None) -> None:
        kwargs = {"partition": partition} if partition is not None else {}
        while True:
            try:
                self._p.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery, **kwargs)
                break
            except BufferError:  # local queue full: serve delivery callbacks, then retry
                self._p.poll(0.05)
        self.report.sent += 1
        self._p.poll(0)

    def flush(self, timeout: float = 120.0) -> int:
        """Wait for every delivery report; returns how many records are still unacknowledged."""
        self._p.flush(timeout)
        return self.report.pending

    def close(self) -> None:
        self._p.flush(5)


class ConfluentConsumer:
    def __init__(self, cfg: KafkaConfig, group_id: str = "ddp_kbit", extra: dict | None = None):
        from confluent_kafka import Consumer, TopicPartition

        conf = confluent_settings(cfg)
        conf.update({"group.id": group_id, "enable.auto.commit": False, "enable.partition.eof": False,
                     "auto.offset.reset": "earliest", "fetch.max.bytes": 64 * 1024 * 1024,
                     "max.partition.fetch.bytes": 16 * 1024 * 1024, "fetch.wait.max.ms": 100,
                     "queued.min.messages": 200_000})
        conf.update(extra or {})
        self._c, self._tp = Consumer(conf), TopicPartition
        self._timeout = cfg.request_timeout_s

    def assign(self, positions: Sequence[tuple[str, int, int]]) -> None:
        self._c.assign([self._tp(t, p, o) for t, p, o in positions])

    def poll(self, max_records: int = 10_000, timeout: float = 0.5, headers: bool = False) -> list[Record]:
        out = []
        for m in self._c.consume(max_records, timeout):
            err = m.error()
            if err is not None:
                if err.fatal() or not err.retriable():
                    raise ClientError(f"consume failed on {m.topic()}[{m.partition()}]: {err.str()}")
                continue
            out.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                              m.headers() if headers else None))
        return out

    def poll_values(self, max_records: int, timeout: float):
        """Hot path for the stream: parallel lists, no per-record tuple."""
        msgs = [m for m in self._c.consume(max_records, timeout) if m.error() is None]
        return ([m.partition() for m in msgs], [m.offset() for m in msgs], [m.value() for m in msgs],
                [m.topic() for m in msgs])

    def list_offsets(self, tps: Iterable[TP]) -> dict[TP, tuple[int, int]]:
        out = {}
        for t, p in tps:
            try:
                out[(t, p)] = self._c.get_watermark_offsets(self._tp(t, p), timeout=self._timeout)
            except Exception as exc:
                raise ClientError(f"cannot read offsets of {t}[{p}]: {exc}") from None
        return out

    def cached_high(self, topic: str, partition: int) -> int | None:
        lo, hi = self._c.get_watermark_offsets(self._tp(topic, partition), cached=True)
        return hi if hi >= 0 else None

    def pause(self, tps: Iterable[TP]) -> None:
        self._c.pause([self._tp(t, p) for t, p in tps])

    def resume(self, tps: Iterable[TP]) -> None:
        self._c.resume([self._tp(t, p) for t, p in tps])

    def position(self, topic: str, partition: int) -> int | None:
        o = self._c.position([self._tp(topic, partition)])[0].offset
        return o if o >= 0 else None

    def commit(self, offsets: dict[TP, int]) -> None:
        self._c.commit(offsets=[self._tp(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)

    def close(self) -> None:
        self._c.close()


class ConfluentAdmin:
    def __init__(self, cfg: KafkaConfig):
        from confluent_kafka.admin import AdminClient

        self._a, self._timeout = AdminClient(confluent_settings(cfg)), cfg.request_timeout_s
        self._servers = cfg.bootstrap_servers

    def topics(self) -> dict[str, int]:
        try:
            md = self._a.list_topics(timeout=self._timeout)
        except Exception as exc:
            raise ClientError(f"cannot reach Kafka at {self._servers}: {_short(exc)}") from None
        return {name: len(t.partitions) for name, t in md.topics.items() if not name.startswith("__")}

    def create_topic(self, name: str, partitions: int, config: dict | None = None) -> None:
        from confluent_kafka.admin import NewTopic

        fut = self._a.create_topics([NewTopic(name, partitions, 1, config=config or {})])[name]
        try:
            fut.result(self._timeout)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise ClientError(f"cannot create topic {name}: {_short(exc)}") from None

    def close(self) -> None:
        pass


# ------------------------------------------------------------------ kafka-python
_KP_COMPRESSION = {"none": None, "gzip": "gzip", "lz4": "lz4", "zstd": "zstd", "snappy": "snappy"}


class KafkaPythonProducer:
    def __init__(self, cfg: KafkaConfig, compression: str = "none", extra: dict | None = None):
        from kafka import KafkaProducer

        conf = kafka_python_settings(cfg)
        conf.update({"acks": "all", "enable_idempotence": True, "compression_type": _KP_COMPRESSION[compression],
                     "linger_ms": 20, "batch_size": 1_000_000,
                     "max_request_size": 8 * 1024 * 1024})
        conf.update(extra or {})
        self._p = _kafka_python_call(KafkaProducer, cfg, **conf)
        self.report = DeliveryReport()

    def send(self, topic, value, key=None, partition=None, headers=None) -> None:
        fut = self._p.send(topic, value=value, key=key, partition=partition, headers=headers or [])
        self.report.sent += 1
        fut.add_callback(lambda md: self.report.ack(md.topic, md.partition, md.offset))
        fut.add_errback(lambda exc: self.report.fail(repr(exc)))

    def flush(self, timeout: float = 120.0) -> int:
        try:
            self._p.flush(timeout)
        except Exception as exc:  # KafkaTimeoutError: the rest did not land
            log.warning("flush: %s", exc)
        return self.report.pending

    def close(self) -> None:
        self._p.close(5)


class KafkaPythonConsumer:
    def __init__(self, cfg: KafkaConfig, group_id: str = "ddp_kbit", extra: dict | None = None):
        from kafka import KafkaConsumer, TopicPartition

        conf = kafka_python_settings(cfg)
        conf.update({"group_id": group_id, "enable_auto_commit": False, "auto_offset_reset": "earliest",
                     "fetch_max_bytes": 64 * 1024 * 1024, "max_partition_fetch_bytes": 16 * 1024 * 1024,
                     "fetch_max_wait_ms": 100, "max_poll_records": 100_000})
        conf.update(extra or {})
        self._c, self._tp = _kafka_python_call(KafkaConsumer, cfg, **conf), TopicPartition

    def assign(self, positions) -> None:
        tps = [self._tp(t, p) for t, p, _ in positions]
        self._c.assign(tps)
        for tp, (_, _, o) in zip(tps, positions):
            self._c.seek(tp, o)

    def poll(self, max_records=10_000, timeout=0.5, headers=False) -> list[Record]:
        got = self._c.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        return [Record(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers) if headers else None)
                for recs in got.values() for r in recs]

    def poll_values(self, max_records: int, timeout: float):
        recs = [r for rs in self._c.poll(timeout_ms=int(timeout * 1000), max_records=max_records).values() for r in rs]
        return [r.partition for r in recs], [r.offset for r in recs], [r.value for r in recs], [r.topic for r in recs]

    def list_offsets(self, tps) -> dict[TP, tuple[int, int]]:
        keys = [self._tp(t, p) for t, p in tps]
        try:
            lo, hi = self._c.beginning_offsets(keys), self._c.end_offsets(keys)
        except Exception as exc:
            raise ClientError(f"cannot read offsets of {[tuple(k) for k in keys]}: {_short(exc)}") from None
        return {(k.topic, k.partition): (lo[k], hi[k]) for k in keys}

    def cached_high(self, topic, partition) -> int | None:
        return self._c.highwater(self._tp(topic, partition))

    def pause(self, tps) -> None:
        self._c.pause(*[self._tp(t, p) for t, p in tps])

    def resume(self, tps) -> None:
        self._c.resume(*[self._tp(t, p) for t, p in tps])

    def position(self, topic, partition) -> int | None:
        return self._c.position(self._tp(topic, partition))

    def commit(self, offsets) -> None:
        from kafka.structs import OffsetAndMetadata

        self._c.commit({self._tp(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()})

    def close(self) -> None:
        self._c.close()


class KafkaPythonAdmin:
    def __init__(self, cfg: KafkaConfig):
        from kafka import KafkaAdminClient

        self._a = _kafka_python_call(KafkaAdminClient, cfg, **kafka_python_settings(cfg))
        self._servers = cfg.bootstrap_servers

    def topics(self) -> dict[str, int]:
        try:
            md = self._a.describe_topics()
        except Exception as exc:
            raise ClientError(f"cannot reach Kafka at {self._servers}: {_short(exc)}") from None
        return {t["name"]: len(t["partitions"]) for t in md if not t["name"].startswith("__")}

    def create_topic(self, name, partitions, config=None) -> None:
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        try:
            self._a.create_topics([NewTopic(name, partitions, 1, topic_configs=config or {})])
        except TopicAlreadyExistsError:
            pass
        except Exception as exc:
            raise ClientError(f"cannot create topic {name}: {_short(exc)}") from None

    def close(self) -> None:
        self._a.close()


def _kafka_python_call(factory: Callable, cfg: KafkaConfig, **conf):
    try:
        return factory(**conf)
    except Exception as exc:  # NoBrokersAvailable and friends
        raise ClientError(f"cannot reach Kafka at {cfg.bootstrap_servers}: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    """One line: KafkaError's own text, else the exception's first line."""
    first = exc.args[0] if exc.args else None
    if hasattr(first, "str") and callable(first.str):
        return first.str()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# ------------------------------------------------------------------ factories
_BACKENDS = {
    "confluent": (ConfluentProducer, ConfluentConsumer, ConfluentAdmin),
    "kafka-python": (KafkaPythonProducer, KafkaPythonConsumer, KafkaPythonAdmin),
}


def make_producer(cfg: KafkaConfig, compression: str = "none", **kw):
    return _BACKENDS[cfg.client][0](cfg, compression, **kw)


def make_consumer(cfg: KafkaConfig, group_id: str = "ddp_kbit", **kw):
    return _BACKENDS[cfg.client][1](cfg, group_id, **kw)


def make_admin(cfg: KafkaConfig):
    return _BACKENDS[cfg.client][2](cfg)


def check_reachable(cfg: KafkaConfig) -> dict[str, int]:
    """Topic -> partition count, or ClientError within ``request_timeout_s``.
    Probed with confluent's admin client when available: it honours the timeout."""
    admin = make_admin(cfg)
    try:
        return admin.topics()
    finally:
        admin.close()


# ------------------------------------------------------------------ end offsets
def end_offsets(consumer, tps: Sequence[TP], timeout: float = 10.0) -> dict[TP, tuple[int, int]]:
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


def read_all(consumer, tps: Sequence[TP], ends: dict[TP, int] | None = None, starts: dict[TP, int] | None = None,
             headers: bool = False, timeout: float = 30.0) -> list[Record]:
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
        todo = {tp for tp in todo if seen[tp] < ends[tp]}
        if todo and time.monotonic() > deadline:
            raise ClientError(f"timed out reading {sorted(todo)} up to {[ends[tp] for tp in sorted(todo)]}")
    return out
