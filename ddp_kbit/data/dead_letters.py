"""Bad records: counted by reason, forwarded once to ``<topic>.dlq`` and skipped.

A dead letter follows Kafka Connect's convention, which operators' tooling expects:
the source record's own key, value and headers (a tombstone stays a tombstone),
plus headers saying where it came from and why it was refused. A value too large
for the dead-letter topic is dropped, never the record: it is sent without its
value and a header says so and why (training goes on either way).

Once means once per run, however many epochs read the record and however often the
run restarts: a run starts from what its dead-letter topics already hold
(:func:`read_dead_letters`) and adds what its ranks forward along the way."""
from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ddp_kbit import kafka
from ddp_kbit.config import KafkaConfig
from ddp_kbit.errors import ClientError, DecodeError, first_line
from ddp_kbit.wire.sample import BadReason

log = logging.getLogger(__name__)


SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET = "ddp_kbit.source.topic", "ddp_kbit.source.partition", "ddp_kbit.source.offset"
ERROR, ERROR_REASON, VALUE_DROPPED = "ddp_kbit.error", "ddp_kbit.error.reason", "ddp_kbit.value.dropped"
OURS = (SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, ERROR, ERROR_REASON, VALUE_DROPPED)
DEFAULT_MAX_BYTES = 1_000_000   # librdkafka's message.max.bytes and Kafka's default max.message.bytes, about


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


@dataclass(frozen=True)
class DeadLetterIndex:
    """What dead-letter topics hold: every source record forwarded, and those
    forwarded without their value."""

    forwarded: frozenset = frozenset()   # (topic, partition, offset)
    value_dropped: frozenset = frozenset()


def read_dead_letters(kcfg: KafkaConfig, topics) -> DeadLetterIndex:
    """The source records the ``topics``' dead-letter topics hold."""
    present = kafka.topics(kcfg)
    out, dropped = set(), set()
    for topic in topics:
        if dlq_topic(topic) not in present:
            continue
        for rec in kafka.read_topic(kcfg, dlq_topic(topic), present[dlq_topic(topic)], headers=True,
                                    group_id="ddp_kbit.dlq-reader"):
            h = {k: bytes(v).decode(errors="replace") for k, v in (rec.headers or []) if k in OURS}
            if SOURCE_TOPIC in h and h.get(SOURCE_PARTITION, "").isdigit() and h.get(SOURCE_OFFSET, "").isdigit():
                source = (h[SOURCE_TOPIC], int(h[SOURCE_PARTITION]), int(h[SOURCE_OFFSET]))
                out.add(source)
                if VALUE_DROPPED in h:
                    dropped.add(source)
    return DeadLetterIndex(frozenset(out), frozenset(dropped))


def dead_letter_headers(tp: tuple, offset: int, headers: list | None, err: DecodeError) -> list:
    """The source record's headers (ours from an earlier hop replaced), then where
    it came from and why it was refused."""
    kept = [(k, v) for k, v in (headers or []) if k not in OURS]
    return kept + [(SOURCE_TOPIC, tp[0].encode()), (SOURCE_PARTITION, str(tp[1]).encode()),
                   (SOURCE_OFFSET, str(offset).encode()), (ERROR, str(err).encode()[:2000]),
                   (ERROR_REASON, err.reason.encode())]


def record_size(key: bytes | None, value: bytes | None, headers: list) -> int:
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers)


@dataclass
class BadRecords:
    """How many records were read (``seen``) and how many of them were bad, by reason.
    The stream counts as it decodes, for the ``--max-bad-fraction`` stop; the run's
    report counts distinct source records instead (see ``train.records``)."""

    count: int = 0
    seen: int = 0
    by_reason: collections.Counter = field(default_factory=collections.Counter)

    def add(self, seen: int, reasons: list[str]) -> None:
        for r in reasons:
            BadReason(r)   # a reason outside the enum is a bug here, not a new kind of bad record
        self.seen += seen
        self.count += len(reasons)
        self.by_reason.update(reasons)

    @property
    def fraction(self) -> float:
        return self.count / self.seen if self.seen else 0.0

    def to_dict(self) -> dict:
        return {"count": self.count, "seen": self.seen, "by_reason": dict(sorted(self.by_reason.items()))}


class DeadLetters:
    """Forwards bad records to ``<topic>.dlq``, each source record once: ``known``
    (shared with the caller) holds what was already forwarded. The producer is made
    on first use."""

    def __init__(self, kcfg: KafkaConfig, producer_factory: Callable | None = None, known: set | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self._kcfg, self.max_bytes = kcfg, max_bytes
        self._factory = producer_factory or (lambda: kafka.make_producer(kcfg))
        self._producer, self._made = None, set()
        self.known = known if known is not None else set()
        self.sent = 0

    def send(self, tp: tuple, offset: int, key: bytes | None, value: bytes | None, headers: list | None,
             err: DecodeError) -> None:
        """Forward one bad source record (``key``, ``value``, ``headers`` as read) once."""
        if (tp[0], tp[1], offset) in self.known:
            return
        self.known.add((tp[0], tp[1], offset))
        topic = dlq_topic(tp[0])
        if self._producer is None:
            self._producer = self._factory()
        if topic not in self._made and self._kcfg.bootstrap_servers:
            try:  # real Kafka may not auto-create topics
                with kafka.make_admin(self._kcfg) as admin:
                    admin.create_topic(topic, 1)
            except ClientError as exc:
                log.warning("cannot create %s: %s", topic, exc)
            self._made.add(topic)
        self.sent += 1
        out = dead_letter_headers(tp, offset, headers, err)
        if record_size(key, value, out) > self.max_bytes:
            self._send_without_value(topic, key, value, out, f"{len(value)} bytes exceed the dead-letter limit of "
                                     f"{self.max_bytes} bytes (--dlq-max-bytes)")
            return
        try:
            self._producer.send(topic, value, key=key, headers=out)
        except Exception as exc:  # e.g. MSG_SIZE_TOO_LARGE below our limit: the client's is lower
            self._send_without_value(topic, key, value, out, f"{len(value or b'')} bytes refused by the client: "
                                     f"{first_line(exc, 200)}")

    def _send_without_value(self, topic: str, key, value, headers: list, why: str) -> None:
        log.warning("dead letter for %s without its value: %s", topic, why)
        self._producer.send(topic, None, key=key, headers=headers + [(VALUE_DROPPED, why.encode())])

    def close(self) -> None:
        if self._producer is not None:
            left = self._producer.flush(30)
            failed = self._producer.report.failed
            if left or failed:
                log.error("%d dead-letter records were not delivered (%s)", left + failed,
                          self._producer.report.first_error or "timed out")
            self._producer.close()
            self._producer = None
