"""kafka-python adapters: pure Python, no native library (about 8x slower to
consume than confluent-kafka even with the ``crc32c`` package)."""
from __future__ import annotations

import logging
from collections.abc import Callable

from ddp_kbit.config import KafkaConfig
from ddp_kbit.errors import ClientError
from ddp_kbit.kafka.protocol import TP, Closing, DeliveryReport, Record, drain_polls, short

log = logging.getLogger(__name__)
COMPRESSION = {"none": None, "gzip": "gzip", "lz4": "lz4", "zstd": "zstd", "snappy": "snappy"}


def settings(cfg: KafkaConfig) -> dict:
    conf = {"bootstrap_servers": cfg.bootstrap_servers.split(","), "security_protocol": cfg.security_protocol,
            "request_timeout_ms": int(cfg.request_timeout_s * 1000) + 1000,
            # bounds the version probe too, so an unreachable broker fails within the timeout
            "bootstrap_timeout_ms": int(cfg.request_timeout_s * 1000)}
    optional = {"sasl_mechanism": cfg.sasl_mechanism, "sasl_plain_username": cfg.sasl_username,
                "sasl_plain_password": cfg.sasl_password, "ssl_cafile": cfg.ssl_cafile,
                "ssl_certfile": cfg.ssl_certfile, "ssl_keyfile": cfg.ssl_keyfile, "ssl_password": cfg.ssl_password}
    conf.update({k: v for k, v in optional.items() if v is not None})
    log.debug("kafka-python settings: %s", conf)  # secrets included: the log handlers redact them
    return conf


def connect(factory: Callable, cfg: KafkaConfig, **conf):
    try:
        return factory(**conf)
    except Exception as exc:  # NoBrokersAvailable and friends
        raise ClientError(f"cannot reach Kafka at {cfg.bootstrap_servers}: {short(exc)}") from None


class Producer(Closing):
    def __init__(self, cfg: KafkaConfig, compression: str = "none", measure: bool = False, extra: dict | None = None):
        from kafka import KafkaProducer

        conf = settings(cfg)
        conf.update({"acks": "all", "enable_idempotence": True, "compression_type": COMPRESSION[compression],
                     "linger_ms": 20, "batch_size": 1_000_000, "max_request_size": 8 * 1024 * 1024})
        conf.update(extra or {})
        self._p = connect(KafkaProducer, cfg, **conf)
        self.report = DeliveryReport()
        if measure:
            self._count_batch_bytes()

    def _count_batch_bytes(self) -> None:
        """kafka-python measures each record batch it sends (after compression) but keeps
        only windowed averages; add a running total to the same sensor."""
        from kafka.metrics.stats import Total

        sensors = getattr(getattr(self._p, "_sender", None), "_sensors", None)
        if sensors is not None:
            sensors.batch_size_sensor.add(
                sensors.metrics.metric_name("batch-size-total", "producer-metrics", "bytes of record batches sent"),
                Total())

    def send(self, topic, value, key=None, partition=None, headers=None) -> None:
        fut = self._p.send(topic, value=value, key=key, partition=partition, headers=headers or [])
        self.report.sent += 1
        fut.add_callback(lambda md: self.report.ack(md.topic, md.partition, md.offset))
        fut.add_errback(lambda exc: self.report.fail(repr(exc)))

    def wire_bytes(self) -> int | None:
        """Bytes of the record batches sent so far (after compression), from the
        client's own batch-size sensor; None without ``measure``."""
        total = self._p.metrics().get("producer-metrics", {}).get("batch-size-total")
        return int(total) if total is not None else None

    def flush(self, timeout: float = 120.0) -> int:
        try:
            self._p.flush(timeout)
        except Exception as exc:  # KafkaTimeoutError: the rest did not land
            log.warning("flush: %s", exc)
        return self.report.pending

    def close(self) -> None:
        self._p.close(5)


class Consumer(Closing):
    def __init__(self, cfg: KafkaConfig, group_id: str = "ddp_kbit", strict: bool = False, extra: dict | None = None):
        from kafka import KafkaConsumer, TopicPartition

        conf = settings(cfg)
        # read_committed: aborted transactional records are not training data (kafka-python reads
        # uncommitted ones by default)
        conf.update({"group_id": group_id, "enable_auto_commit": False, "isolation_level": "read_committed",
                     "auto_offset_reset": "none" if strict else "earliest",
                     "fetch_max_bytes": 64 * 1024 * 1024, "max_partition_fetch_bytes": 16 * 1024 * 1024,
                     "fetch_max_wait_ms": 100, "max_poll_records": 100_000})
        conf.update(extra or {})
        self._c, self._tp = connect(KafkaConsumer, cfg, **conf), TopicPartition

    def assign(self, positions) -> None:
        tps = [self._tp(t, p) for t, p, _ in positions]
        self._c.assign(tps)
        for tp, (_, _, o) in zip(tps, positions):
            self._c.seek(tp, o)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self._c.seek(self._tp(topic, partition), offset)

    def _poll(self, max_records: int, timeout: float) -> dict:
        try:
            return self._c.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        except Exception as exc:  # a client error on the hot path raises at once, in one line
            raise ClientError(f"consume failed: {short(exc)}") from None

    def poll(self, max_records=10_000, timeout=0.5, headers=False) -> list[Record]:
        return [Record(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers) if headers else None,
                       r.timestamp) for recs in self._poll(max_records, timeout).values() for r in recs]

    def poll_runs(self, max_records: int, timeout: float) -> list[tuple[tuple, list, list, list]]:
        """kafka-python already hands records out per partition."""
        return [((tp.topic, tp.partition), [r.offset for r in recs], [r.value for r in recs], recs)
                for tp, recs in self._poll(max_records, timeout).items() if recs]

    def meta(self, record) -> tuple[bytes | None, list]:
        return record.key, list(record.headers or [])

    def drain(self, count: int, idle_timeout: float = 30.0) -> int:
        """The cheapest honest consume loop (a benchmark's ceiling); see the confluent adapter."""
        def poll(n: int) -> tuple[int, int]:
            batches = self._c.poll(timeout_ms=500, max_records=n).values()
            return sum(map(len, batches)), sum([len(r.value or b"") for recs in batches for r in recs])

        return drain_polls(poll, count, idle_timeout)

    def list_offsets(self, tps) -> dict[TP, tuple[int, int]]:
        keys = [self._tp(t, p) for t, p in tps]
        try:
            lo, hi = self._c.beginning_offsets(keys), self._c.end_offsets(keys)
        except Exception as exc:
            raise ClientError(f"cannot read offsets of {[tuple(k) for k in keys]}: {short(exc)}") from None
        return {(k.topic, k.partition): (lo[k], hi[k]) for k in keys}

    def offsets_for_times(self, tps, timestamp_ms: int) -> dict[TP, int | None]:
        keys = [self._tp(t, p) for t, p in tps]
        try:
            got = self._c.offsets_for_times({k: timestamp_ms for k in keys})
        except Exception as exc:
            raise ClientError(f"cannot look up offsets for time {timestamp_ms}: {short(exc)}") from None
        return {(k.topic, k.partition): (got[k].offset if got.get(k) else None) for k in keys}

    def commit(self, offsets: dict[TP, int]) -> None:
        from kafka.structs import OffsetAndMetadata

        try:
            self._c.commit({self._tp(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()})
        except Exception as exc:
            raise ClientError(f"cannot commit offsets: {short(exc)}") from None

    def cached_high(self, topic, partition) -> int | None:
        return self._c.highwater(self._tp(topic, partition))

    def pause(self, tps) -> None:
        self._c.pause(*[self._tp(t, p) for t, p in tps])

    def resume(self, tps) -> None:
        self._c.resume(*[self._tp(t, p) for t, p in tps])

    def position(self, topic, partition) -> int | None:
        return self._c.position(self._tp(topic, partition))

    def close(self) -> None:
        self._c.close()


class Admin(Closing):
    def __init__(self, cfg: KafkaConfig):
        from kafka import KafkaAdminClient

        self._a = connect(KafkaAdminClient, cfg, **settings(cfg))
        self._servers = cfg.bootstrap_servers

    def topics(self) -> dict[str, int]:
        try:
            md = self._a.describe_topics()
        except Exception as exc:
            raise ClientError(f"cannot reach Kafka at {self._servers}: {short(exc)}") from None
        return {t["name"]: len(t["partitions"]) for t in md if not t["name"].startswith("__")}

    def create_topic(self, name, partitions, config=None) -> None:
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        try:
            self._a.create_topics([NewTopic(name, partitions, 1, topic_configs=config or {})])
        except TopicAlreadyExistsError:
            pass
        except Exception as exc:
            raise ClientError(f"cannot create topic {name}: {short(exc)}") from None

    def close(self) -> None:
        self._a.close()
