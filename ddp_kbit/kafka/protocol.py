"""What the rest of the package knows of a Kafka client: records, delivery
reports and the three roles (producer, consumer, admin). The confluent-kafka and
kafka-python adapters implement these; nothing above ``ddp_kbit.kafka`` names
either library. Every adapter is a context manager that closes its connection."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ddp_kbit.errors import ClientError, first_line

TP = tuple  # (topic, partition)


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list | None = None
    timestamp_ms: int | None = None   # the record's (create or log-append) time


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

    def ranges_of(self, topic: str) -> dict[int, tuple[int, int]]:
        """Partition -> (first, last+1) acknowledged in ``topic``."""
        return {p: tuple(r) for (t, p), r in self.ranges.items() if t == topic}

    @property
    def pending(self) -> int:
        return self.sent - self.acked - self.failed


def drain_polls(poll: Callable[[int], tuple[int, int]], count: int, idle_timeout: float) -> int:
    """The loop of every adapter's ``drain``: ``poll(n)`` consumes up to ``n`` records
    and returns (records, bytes of their values); polls of at most 20,000 until
    ``count`` records came. Returns the bytes; an error after ``idle_timeout`` s without records."""
    got = nbytes = 0
    last = time.monotonic()
    while got < count:
        n, b = poll(min(20_000, count - got))
        if n:
            got, nbytes, last = got + n, nbytes + b, time.monotonic()
        elif time.monotonic() - last > idle_timeout:
            raise ClientError(f"no records for {idle_timeout:.0f}s after {got} of {count}")
    return nbytes


class Closing:
    """``with adapter:`` closes the connection on exit, exceptions included."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RecordProducer(Protocol):
    report: DeliveryReport

    def send(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None,
             headers: list | None = None) -> None: ...

    def flush(self, timeout: float = 120.0) -> int:
        """Wait for every delivery report; returns how many records are still unacknowledged."""

    def wire_bytes(self) -> int | None:
        """Bytes the acknowledged records took on the wire (after compression), if measured."""

    def close(self) -> None: ...


class RecordConsumer(Protocol):
    def assign(self, positions: Sequence[tuple[str, int, int]]) -> None:
        """Read these (topic, partition, offset)s from now on; never a consumer group."""

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read an assigned partition from ``offset`` on (what was fetched beyond is dropped)."""

    def poll(self, max_records: int = 10_000, timeout: float = 0.5, headers: bool = False) -> list[Record]: ...

    def poll_runs(self, max_records: int, timeout: float) -> list[tuple[tuple, list, list, list]]:
        """Hot path: ``[((topic, partition), offsets, values, records), ...]``, one entry per
        run of records from one partition, in the order received; ``records`` are the
        client's own record objects, kept only so :meth:`meta` can read a bad record's
        key and headers (for the dead-letter topic) without any per-record work here."""

    def meta(self, record) -> tuple[bytes | None, list]:
        """(key, headers) of one of the client's record objects from :meth:`poll_runs`."""

    def drain(self, count: int, idle_timeout: float = 30.0) -> int:
        """Benchmark ceiling: consume ``count`` records touching each value's length; the values' bytes."""

    def list_offsets(self, tps: Iterable[TP]) -> dict[TP, tuple[int, int]]: ...

    def offsets_for_times(self, tps: Iterable[TP], timestamp_ms: int) -> dict[TP, int | None]:
        """The first offset whose timestamp is at or after ``timestamp_ms`` (None: none is)."""

    def commit(self, offsets: dict[TP, int]) -> None:
        """Store committed offsets (next offset to read) for this consumer's group, for
        lag tools; never read back by training."""

    def cached_high(self, topic: str, partition: int) -> int | None: ...

    def pause(self, tps: Iterable[TP]) -> None: ...

    def resume(self, tps: Iterable[TP]) -> None: ...

    def position(self, topic: str, partition: int) -> int | None: ...

    def close(self) -> None: ...


class Admin(Protocol):
    def topics(self) -> dict[str, int]:
        """Topic -> partition count (internal topics left out)."""

    def create_topic(self, name: str, partitions: int, config: dict | None = None) -> None: ...

    def close(self) -> None: ...


def short(exc: BaseException) -> str:
    """One line: KafkaError's own text, else the exception's first line."""
    first = exc.args[0] if exc.args else None
    if hasattr(first, "str") and callable(first.str):
        return first.str()
    return first_line(exc)
