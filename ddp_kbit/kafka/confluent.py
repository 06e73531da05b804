"""confluent-kafka (librdkafka) adapters: the fast client, and the default."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence

import numpy as np

from ddp_kbit.config import KafkaConfig
from ddp_kbit.errors import ClientError
from ddp_kbit.kafka.protocol import TP, Closing, DeliveryReport, Record, drain_polls, short

# librdkafka logs to stderr by default; route it through Python logging so a
# refused connection is one clear error line, not a screenful of retries.
RDKAFKA_LOG = logging.getLogger("librdkafka")
log = logging.getLogger(__name__)


def settings(cfg: KafkaConfig) -> dict:
    conf = {"bootstrap.servers": cfg.bootstrap_servers, "security.protocol": cfg.security_protocol.lower(),
            "socket.timeout.ms": int(cfg.request_timeout_s * 1000), "logger": RDKAFKA_LOG}
    optional = {"sasl.mechanism": cfg.sasl_mechanism, "sasl.username": cfg.sasl_username,
                "sasl.password": cfg.sasl_password, "ssl.ca.location": cfg.ssl_cafile,
                "ssl.certificate.location": cfg.ssl_certfile, "ssl.key.location": cfg.ssl_keyfile,
                "ssl.key.password": cfg.ssl_password}
    conf.update({k: v for k, v in optional.items() if v is not None})
    # secrets included: the log handlers redact them (ddp_kbit.logs)
    log.debug("confluent-kafka settings: %s", {k: v for k, v in conf.items() if k != "logger"})
    return conf


def created(factory, conf: dict, what: str):
    """A librdkafka handle; a setting it refuses (a key it cannot open, say) is one line."""
    try:
        return factory(conf)
    except Exception as exc:   # KafkaException(_INVALID_ARG ...)
        raise ClientError(f"cannot create a Kafka {what}: {short(exc)}") from None


class Producer(Closing):
    def __init__(self, cfg: KafkaConfig, compression: str = "none", measure: bool = False, extra: dict | None = None):
        from confluent_kafka import Producer as _Producer

        conf = settings(cfg)
        conf.update({"enable.idempotence": True, "acks": "all", "compression.type": compression,
                     "linger.ms": 20, "batch.size": 1_000_000, "queue.buffering.max.messages": 500_000,
                     "queue.buffering.max.kbytes": 1_048_576, "message.timeout.ms": 120_000})
        self._stats: dict = {}
        if measure:  # librdkafka's statistics carry the bytes it sent (after compression)
            conf.update({"statistics.interval.ms": 100, "stats_cb": self._on_stats})
        conf.update(extra or {})
        self._p = created(_Producer, conf, "producer")
        self.report = DeliveryReport()

    def _on_stats(self, text: str) -> None:
        self._stats = json.loads(text)

    def wire_bytes(self, timeout: float = 3.0) -> int | None:
        """Bytes sent to the brokers so far (requests included), once the statistics
        cover every acknowledged record; None without ``measure``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._stats.get("txmsgs", -1) < self.report.acked:
            self._p.poll(0.05)
        return self._stats.get("tx_bytes")

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self.report.fail(str(err))
        else:
            self.report.ack(msg.topic(), msg.partition(), msg.offset())

    def send(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None,
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
        self._p.flush(timeout)
        return self.report.pending

    def close(self) -> None:
        self._p.flush(5)


class Consumer(Closing):
    def __init__(self, cfg: KafkaConfig, group_id: str = "ddp_kbit", strict: bool = False, extra: dict | None = None):
        from confluent_kafka import Consumer as _Consumer
        from confluent_kafka import TopicPartition

        conf = settings(cfg)
        # read_committed: aborted transactional records are not training data (stated, though it is
        # librdkafka's default too); commit and abort markers are skipped by the reader as absent
        conf.update({"group.id": group_id, "enable.auto.commit": False, "enable.partition.eof": False,
                     "isolation.level": "read_committed",
                     "auto.offset.reset": "error" if strict else "earliest", "fetch.max.bytes": 64 * 1024 * 1024,
                     "max.partition.fetch.bytes": 16 * 1024 * 1024, "fetch.wait.max.ms": 100,
                     "queued.min.messages": 200_000})
        conf.update(extra or {})
        self._c, self._tp = created(_Consumer, conf, "consumer"), TopicPartition
        self._timeout = cfg.request_timeout_s

    def assign(self, positions: Sequence[tuple[str, int, int]]) -> None:
        self._c.assign([self._tp(t, p, o) for t, p, o in positions])

    def seek(self, topic: str, partition: int, offset: int) -> None:
        try:
            self._c.seek(self._tp(topic, partition, offset))
        except Exception as exc:
            raise ClientError(f"cannot seek {topic}[{partition}] to {offset}: {short(exc)}") from None

    def poll(self, max_records: int = 10_000, timeout: float = 0.5, headers: bool = False) -> list[Record]:
        msgs = self._consume(max_records, timeout)
        return [Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers() if headers else None,
                       m.timestamp()[1] if m.timestamp()[0] else None) for m in msgs]

    def poll_runs(self, max_records: int, timeout: float) -> list[tuple[tuple, list, list, list]]:
        """A poll returns runs of records per partition: only what varies per record
        (offset, value) is taken per record; topic and partition once per run."""
        msgs = self._consume(max_records, timeout)
        if not msgs:
            return []
        parts = np.fromiter([m.partition() for m in msgs], dtype=np.int64, count=len(msgs))
        cuts = [0, *(np.flatnonzero(parts[1:] != parts[:-1]) + 1).tolist(), len(msgs)]
        offs, vals = [m.offset() for m in msgs], [m.value() for m in msgs]
        runs = []
        for a, b in zip(cuts, cuts[1:]):
            run_topic = msgs[a].topic()
            if msgs[b - 1].topic() != run_topic:  # one partition number in two topics: split by topic too
                runs += _split_topics(msgs[a:b], offs[a:b], vals[a:b])
            else:
                runs.append(((run_topic, int(parts[a])), offs[a:b], vals[a:b], msgs[a:b]))
        return runs

    def meta(self, record) -> tuple[bytes | None, list]:
        return record.key(), list(record.headers() or [])

    def _consume(self, max_records: int, timeout: float) -> list:
        """What the client holds now, up to ``max_records``, waiting up to ``timeout``
        only for the first message, like kafka-python's poll (librdkafka's batch
        consume waits out its timeout until it has ``max_records``: with a small
        prefetch queue every poll would wait). Messages without errors; a fatal or
        non-retriable error raises at once."""
        got = self._c.consume(max_records, 0)
        if not got and timeout > 0:
            first = self._c.poll(timeout)
            if first is not None:
                got = [first, *self._c.consume(max_records - 1, 0)] if max_records > 1 else [first]
        msgs = [m for m in got if m.error() is None]
        if len(msgs) != len(got):
            for m in got:
                err = m.error()
                if err is not None and (err.fatal() or not err.retriable()):
                    raise ClientError(f"consume failed on {m.topic()}[{m.partition()}]: {err.str()}")
        return msgs

    def drain(self, count: int, idle_timeout: float = 30.0) -> int:
        """The cheapest honest consume loop (a benchmark's ceiling): ``count`` records
        of the assigned partitions in polls of 20,000, each value's length touched,
        nothing else done per record. Returns the bytes of the values."""
        def poll(n: int) -> tuple[int, int]:
            msgs = self._c.consume(n, 0.5)  # never wait for records that will not come
            return len(msgs), sum([len(m.value() or b"") for m in msgs])

        return drain_polls(poll, count, idle_timeout)

    def list_offsets(self, tps: Iterable[TP]) -> dict[TP, tuple[int, int]]:
        out = {}
        for t, p in tps:
            try:
                out[(t, p)] = self._c.get_watermark_offsets(self._tp(t, p), timeout=self._timeout)
            except Exception as exc:
                raise ClientError(f"cannot read offsets of {t}[{p}]: {short(exc)}") from None
        return out

    def offsets_for_times(self, tps: Iterable[TP], timestamp_ms: int) -> dict[TP, int | None]:
        tps = list(tps)
        try:
            got = self._c.offsets_for_times([self._tp(t, p, timestamp_ms) for t, p in tps], timeout=self._timeout)
        except Exception as exc:
            raise ClientError(f"cannot look up offsets for time {timestamp_ms}: {short(exc)}") from None
        return {(g.topic, g.partition): (g.offset if g.offset >= 0 else None) for g in got}

    def commit(self, offsets: dict[TP, int]) -> None:
        try:
            self._c.commit(offsets=[self._tp(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        except Exception as exc:
            raise ClientError(f"cannot commit offsets: {short(exc)}") from None

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

    def close(self) -> None:
        self._c.close()


def _split_topics(msgs, offs, vals) -> list[tuple[tuple, list, list, list]]:
    runs, start = [], 0
    for i in range(1, len(msgs) + 1):
        if i == len(msgs) or msgs[i].topic() != msgs[start].topic():
            runs.append(((msgs[start].topic(), msgs[start].partition()), offs[start:i], vals[start:i], msgs[start:i]))
            start = i
    return runs


class Admin(Closing):
    def __init__(self, cfg: KafkaConfig):
        from confluent_kafka.admin import AdminClient

        self._a, self._timeout = created(AdminClient, settings(cfg), "admin client"), cfg.request_timeout_s
        self._servers = cfg.bootstrap_servers

    def topics(self) -> dict[str, int]:
        try:
            md = self._a.list_topics(timeout=self._timeout)
        except Exception as exc:
            raise ClientError(f"cannot reach Kafka at {self._servers}: {short(exc)}") from None
        return {name: len(t.partitions) for name, t in md.topics.items() if not name.startswith("__")}

    def create_topic(self, name: str, partitions: int, config: dict | None = None) -> None:
        from confluent_kafka.admin import NewTopic

        fut = self._a.create_topics([NewTopic(name, partitions, 1, config=config or {})])[name]
        try:
            fut.result(self._timeout)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise ClientError(f"cannot create topic {name}: {short(exc)}") from None

    def close(self) -> None:
        pass  # AdminClient holds no connection to close
