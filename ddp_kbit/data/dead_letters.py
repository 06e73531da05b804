"""Bad records: counted by reason, forwarded once to ``<topic>.dlq`` with where
they came from and why, and skipped.

Once means once per run, however many epochs read the record and however often the
run restarts: a run starts from what its dead-letter topics already hold
(:func:`already_forwarded`) and adds what its ranks forward along the way."""
from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ddp_kbit import kafka
from ddp_kbit.config import KafkaConfig
from ddp_kbit.errors import ClientError, DecodeError

log = logging.getLogger(__name__)


SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET = "ddp_kbit.source.topic", "ddp_kbit.source.partition", "ddp_kbit.source.offset"


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def already_forwarded(kcfg: KafkaConfig, topics) -> frozenset:
    """(topic, partition, offset) of every source record the topics' DLQs hold."""
    present = kafka.topics(kcfg)
    out = set()
    for topic in topics:
        if dlq_topic(topic) not in present:
            continue
        for rec in kafka.read_topic(kcfg, dlq_topic(topic), present[dlq_topic(topic)], headers=True,
                                    group_id="ddp_kbit.dlq-reader"):
            h = {k: bytes(v).decode(errors="replace") for k, v in (rec.headers or [])}
            if SOURCE_TOPIC in h and h.get(SOURCE_PARTITION, "").isdigit() and h.get(SOURCE_OFFSET, "").isdigit():
                out.add((h[SOURCE_TOPIC], int(h[SOURCE_PARTITION]), int(h[SOURCE_OFFSET])))
    return frozenset(out)


@dataclass
class BadRecords:
    """How many records were read (``seen``) and how many of them were bad, by reason.
    The stream counts as it decodes, for the ``--max-bad-fraction`` stop; the run's
    report counts distinct source records instead (see ``train.records``)."""

    count: int = 0
    seen: int = 0
    by_reason: collections.Counter = field(default_factory=collections.Counter)

    def add(self, seen: int, reasons: list[str]) -> None:
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

    def __init__(self, kcfg: KafkaConfig, producer_factory: Callable | None = None, known: set | None = None):
        self._kcfg = kcfg
        self._factory = producer_factory or (lambda: kafka.make_producer(kcfg))
        self._producer, self._made = None, set()
        self.known = known if known is not None else set()

    def send(self, tp: tuple, offset: int, value: bytes | None, err: DecodeError) -> None:
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
        headers = [(SOURCE_TOPIC, tp[0].encode()), (SOURCE_PARTITION, str(tp[1]).encode()),
                   (SOURCE_OFFSET, str(offset).encode()), ("ddp_kbit.error", str(err).encode()),
                   ("ddp_kbit.error.reason", err.reason.encode())]
        self._producer.send(topic, value if value is not None else b"", key=str(offset).encode(), headers=headers)

    def close(self) -> None:
        if self._producer is not None:
            left = self._producer.flush(30)
            if left:
                log.error("%d dead-letter records were not delivered", left)
            self._producer.close()
            self._producer = None
