"""What a rank trains on: any :class:`BatchSource`. The train topic as a
:class:`~ddp_kbit.data.kafka_dataset.KafkaDataset` is one; :class:`MemoryBatches`
(in-memory tensors, the experiment's ceiling) is another; the same trainer runs both."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch

from ddp_kbit.data.stream import StreamBatch


class BatchSource(Protocol):
    """Planned batches of one pass, with what the checkpoints and stats need."""

    consumed: list        # ConsumedRanges of the batches used in steps
    used_bad: list        # (topic, partition, offset, reason) of those batches
    used_absent: list     # (topic, partition, offset) planned but never delivered
    wait_seconds: float   # how long the step waited for data

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[StreamBatch]: ...

    def resume(self, epoch: int, used: list) -> None:
        """Plan ``epoch`` minus the offsets ``used`` in it."""

    def mark_used(self, batch: StreamBatch) -> None:
        """``batch`` went into an optimizer step."""


class MemoryBatches:
    """Batches from in-memory tensors: the same batches (and the same trainer) as the
    Kafka stream, without Kafka."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch: int):
        self.x, self.y, self.batch = images, labels, batch
        self.consumed, self.used_bad, self.used_absent, self.wait_seconds = [], [], [], 0.0

    def __len__(self) -> int:
        return (len(self.y) + self.batch - 1) // self.batch

    def __iter__(self) -> Iterator[StreamBatch]:
        for k, i in enumerate(range(0, len(self.y), self.batch)):
            yield StreamBatch(self.x[i:i + self.batch], self.y[i:i + self.batch], step=k)

    def resume(self, epoch: int, used: list) -> None:
        pass

    def mark_used(self, batch: StreamBatch) -> None:   # nothing to track: memory has no offsets
        pass
