"""Bad records: counted by reason, forwarded once to ``<topic>.dlq`` with where
they came from and why, and skipped."""
from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ddp_kbit import kafka
from ddp_kbit.config import KafkaConfig
from ddp_kbit.errors import ClientError, DecodeError

log = logging.getLogger(__name__)


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


@dataclass
class BadRecords:
    """How many records were read (``seen``) and how many of them were bad, by reason."""

    count: int = 0
    seen: int = 0
    by_reason: collections.Counter = field(default_factory=collections.Counter)

    def add(self, seen: int, reasons: list[str]) -> None:
        self.seen += seen
        self.count += len(reasons)
        self.by_reason.update(reasons)

    def __add__(self, other: BadRecords) -> BadRecords:
        return BadRecords(self.count + other.count, self.seen + other.seen, self.by_reason + other.by_reason)

    @property
    def fraction(self) -> float:
        return self.count / self.seen if self.seen else 0.0

    def to_dict(self) -> dict:
        return {"count": self.count, "seen": self.seen, "by_reason": dict(sorted(self.by_reason.items()))}

    @classmethod
    def from_dict(cls, d: dict) -> BadRecords:
        return cls(int(d["count"]), int(d["seen"]), collections.Counter(d["by_reason"]))


class DeadLetters:
    """Forwards bad records to ``<topic>.dlq``; the producer is made on first use."""

    def __init__(self, kcfg: KafkaConfig, producer_factory: Callable | None = None):
        self._kcfg = kcfg
        self._factory = producer_factory or (lambda: kafka.make_producer(kcfg))
        self._producer, self._made = None, set()

    def send(self, tp: tuple, offset: int, value: bytes | None, err: DecodeError) -> None:
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
        headers = [("ddp_kbit.source.topic", tp[0].encode()), ("ddp_kbit.source.partition", str(tp[1]).encode()),
                   ("ddp_kbit.source.offset", str(offset).encode()), ("ddp_kbit.error", str(err).encode()),
                   ("ddp_kbit.error.reason", err.reason.encode())]
        self._producer.send(topic, value if value is not None else b"", key=str(offset).encode(), headers=headers)

    def close(self) -> None:
        if self._producer is not None:
            left = self._producer.flush(30)
            if left:
                log.error("%d dead-letter records were not delivered", left)
            self._producer.close()
            self._producer = None
