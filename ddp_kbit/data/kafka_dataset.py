"""KafkaDataset: a topic as an ``IterableDataset`` for any torch.distributed loop
(torchrun, a TorchDistributor function of your own, Lightning) and for ddp_kbit's
own training ranks.

    ds = KafkaDataset("fashion-mnist.train.avro", bootstrap_servers="kafka:9092", batch_size=128)
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in ds:                 # batch.images (uint8 N x H x W), batch.labels (int64 N)
            x, y = batch.to(device)      # float N x C x H x W on the device, and the labels
            ...
            ds.mark_used(batch)          # after the optimizer step (or leave it out: see below)

Guarantees, as in ``--mode train``: every offset of the epoch's snapshot is read by
exactly one rank, once; every rank gets the same number of batches; bad records
are counted by reason, dead-lettered once and skipped.

Rank and world size come from ``torch.distributed`` when it is initialised (else
the ``rank``/``world_size`` arguments, else 0 of 1). ``set_epoch(e)`` plans epoch
``e``: every rank must call it (it is a collective when torch.distributed is
initialised: the ranks share which bad records were already dead-lettered).
Iterating again without ``set_epoch`` goes on where the state is: the rest of the
epoch if it was interrupted, else the next epoch.

Resume (the StatefulDataLoader protocol): ``state_dict()`` holds the epoch and the
offsets of the batches used in it, for *every* rank (each rank can compute its peers'
batches: the plan is pure and all ranks take the same number of steps), so saving
it from rank 0 alongside the model is enough, and ``load_state_dict`` on any number
of ranks plans exactly the rest. Used means: every batch yielded, until you call
``mark_used`` for the first time; from then on, only the batches you marked (call
it after the optimizer step, so a checkpoint never claims a batch that was only
fetched).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset

from ddp_kbit.config import DataConfig, KafkaConfig, SourceConfig
from ddp_kbit.data import manifest as manifests
from ddp_kbit.data.dead_letters import read_dead_letters
from ddp_kbit.data.describe import describe
from ddp_kbit.data.plan import (
    RankPlan,
    Shuffle,
    Slice,
    merge_slices,
    plan_epoch,
    ranges_to_slices,
    slices_from_json,
    slices_to_json,
    subtract,
)
from ddp_kbit.data.stream import KafkaStreamDataset, StreamBatch
from ddp_kbit.errors import ConfigError, StreamError

log = logging.getLogger(__name__)
STATE_VERSION = 2   # 2: used ranges as [[start, end], ...] per partition (1 is read too)


class KafkaDataset(IterableDataset):
    def __init__(self, topic: str | manifests.Manifest, bootstrap_servers: str | None = None, batch_size: int = 128,
                 *, rank: int | None = None, world_size: int | None = None, seed: int = 0, shuffle: str | None = None,
                 kafka: KafkaConfig | None = None, data: DataConfig | None = None, num_classes: int | None = None,
                 pin_memory: bool = False, forwarded: set | None = None, source: SourceConfig | None = None,
                 slices: list[Slice] | None = None, new_from: dict[int, int] | None = None, keep_keys: bool = False):
        """``topic``: a name (its manifest is read, else ranges come from the broker) or a
        :class:`Manifest`. ``kafka``/``data``: full connection and stream settings
        (``bootstrap_servers``, ``shuffle`` override theirs). ``forwarded``: bad records
        already dead-lettered, shared and added to (default: what the DLQ holds now).
        ``source``: how to read a topic we did not write, when it has no manifest that
        says so (see ``--mode describe``); its registry credentials are used either way.
        ``slices``: plan these offsets instead of the manifest's ranges (a window of
        continuous training); ``new_from``: partition -> the window's first new offset
        (the slices before it are rehearsal, counted apart)."""
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be > 0; got {batch_size}")
        kafka = kafka or KafkaConfig()
        if bootstrap_servers:
            kafka = kafka.with_servers(bootstrap_servers)
        if not kafka.bootstrap_servers:
            raise ConfigError("KafkaDataset needs bootstrap_servers (or a KafkaConfig that names them)")
        data = data or DataConfig()
        if shuffle is not None:
            data = dataclasses.replace(data, shuffle=shuffle)
        self.missing: list = []
        if isinstance(topic, str):   # a Manifest is taken as checked (the training driver did)
            found = describe(kafka, topic, source, write=False)[0] if source is not None and source.described \
                else manifests.resolve(kafka, topic)
            topic, self.missing = manifests.check_on_broker(kafka, found, data.allow_missing_records)
        self.source, self._slices, self.keep_keys = source, slices, keep_keys
        self.new_from = new_from
        self.manifest = topic
        self.kafka, self.data, self.batch_size, self.seed = kafka, data, batch_size, seed
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.num_classes = num_classes if num_classes is not None else self.manifest.num_classes
        self.pin_memory = pin_memory
        self.forwarded = forwarded if forwarded is not None else \
            set(read_dead_letters(kafka, [self.manifest.topic]).forwarded)
        self.epoch, self._used_before = 0, []   # offsets of this epoch used before the current plan
        self._plans: list[RankPlan] | None = None
        self._stream: KafkaStreamDataset | None = None
        self._yielded, self._manual = 0, False

    # ---------------------------------------------------------------- planning
    @property
    def slices(self) -> list[Slice]:
        if self._slices is not None:
            return list(self._slices)
        return ranges_to_slices(self.manifest.topic, self.manifest.partitions)

    @property
    def new_slices(self) -> list[Slice]:
        """What this dataset covers for committed offsets and lag: its own slices, or a
        window's new records (the ones at or after each partition's window start)."""
        return self.slices if self.new_from is None else \
            [s for s in self.slices if s.partition in self.new_from and s.start >= self.new_from[s.partition]]

    @property
    def shuffle(self) -> Shuffle:
        return Shuffle.of(self.data)

    def plans(self) -> list[RankPlan]:
        """Every rank's plan for the rest of the current epoch."""
        if self._plans is None:
            rest = subtract(self.slices, self._used_before)
            self._plans = plan_epoch(rest, self.world_size, self.batch_size, self.seed, self.epoch, self.shuffle)
        return self._plans

    @property
    def plan(self) -> RankPlan:
        return self.plans()[self.rank]

    def __len__(self) -> int:
        """Batches of this rank in what is left of the current epoch."""
        return self.plan.num_batches - self.steps

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._start_epoch(epoch, [])
        self._share_forwarded()

    def _start_epoch(self, epoch: int, used: list[Slice]) -> None:
        self.epoch, self._used_before, self._plans = epoch, merge_slices(used), None
        self._stream, self._yielded = None, 0

    def _share_forwarded(self) -> None:
        import torch.distributed as dist

        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            every: list = [None] * self.world_size
            dist.all_gather_object(every, self.forwarded)
            self.forwarded |= set().union(*every)

    # ---------------------------------------------------------------- iteration
    @property
    def steps(self) -> int:
        """Batches of the current plan used (marked, or yielded until the first mark)."""
        if self._stream is None:
            return 0
        return self._stream.steps if self._manual else self._yielded

    def stream(self) -> KafkaStreamDataset:
        """The stream of the current plan (made on first use)."""
        if self._stream is None:
            self._stream = KafkaStreamDataset(self.kafka, self.data, self.manifest, self.plan,
                                              num_classes=self.num_classes, pin_memory=self.pin_memory,
                                              forwarded=self.forwarded, auth=self.source, keep_keys=self.keep_keys)
        return self._stream

    def __iter__(self) -> Iterator[StreamBatch]:
        if self._stream is not None and self.steps >= self.plan.num_batches:
            self._start_epoch(self.epoch + 1, [])   # the epoch is done: the next one
        elif self._stream is not None and self.steps:
            self._start_epoch(self.epoch, self.used())   # interrupted: the rest of this epoch
        stream = self.stream()
        for batch in stream:
            self._yielded = batch.step + 1
            yield batch

    def mark_used(self, batch: StreamBatch) -> None:
        """Call after the optimizer step that consumed ``batch`` (batches in order)."""
        if self._stream is None:
            raise StreamError("mark_used before iterating")
        self._manual = True
        self._stream.mark_used(batch)

    # ---------------------------------------------------------------- resume
    def used(self) -> list[Slice]:
        """Offsets of the current epoch used by *every* rank so far."""
        steps = self.steps
        return merge_slices([*self._used_before, *[s for pl in self.plans() for s in pl.used(steps)]])

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "topic": self.manifest.topic,
                "ranges": {str(p): list(r) for p, r in sorted(self.manifest.partitions.items())},
                "epoch": self.epoch, "used": slices_to_json(self.used())}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") not in (1, STATE_VERSION):
            raise StreamError(f"KafkaDataset state version {state.get('version')!r}; this one reads {STATE_VERSION}")
        ranges = {str(p): list(r) for p, r in sorted(self.manifest.partitions.items())}
        if state["topic"] != self.manifest.topic or state["ranges"] != ranges:
            raise StreamError(f"KafkaDataset state is for {state['topic']} {state['ranges']}, not "
                              f"{self.manifest.topic} {ranges}")
        used = slices_from_json(self.manifest.topic, state["used"]) if state["version"] == STATE_VERSION else \
            [Slice(self.manifest.topic, int(p), a, b) for p, flat in state["used"].items()   # 0.2's flat lists
             for a, b in zip(flat[::2], flat[1::2])]
        self._start_epoch(int(state["epoch"]), used)
        self._manual = False

    def resume(self, epoch: int, used: list[Slice]) -> None:
        """Go on with ``epoch`` minus the offsets ``used`` in it (ddp_kbit's checkpoints)."""
        self._start_epoch(epoch, used)

    # ---------------------------------------------------------------- accounting
    @property
    def consumed(self):
        """This rank's used ranges of the current plan, with their good records."""
        return self._stream.consumed if self._stream is not None else []

    @property
    def bad(self):
        return self._stream.bad if self._stream is not None else None

    @property
    def dead_lettered(self) -> int:
        return self._stream.dead_lettered if self._stream is not None else 0

    @property
    def used_bad(self) -> list:
        return self._stream.used_bad if self._stream is not None else []

    @property
    def used_absent(self) -> list:
        return self._stream.used_absent if self._stream is not None else []

    @property
    def wait_seconds(self) -> float:
        return self._stream.wait_seconds if self._stream is not None else 0.0


def _rank_and_world(rank: int | None, world: int | None) -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        r, w = dist.get_rank(), dist.get_world_size()
        if (rank is not None and rank != r) or (world is not None and world != w):
            raise ConfigError(f"rank {rank}/world_size {world} given, but torch.distributed says {r}/{w}")
        return r, w
    r, w = rank or 0, world or 1
    if not 0 <= r < w:
        raise ConfigError(f"rank must be within 0..world_size-1; got rank {r} of {w}")
    return r, w


def batches_as_pairs(ds: KafkaDataset, device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` float pairs on ``device``, for loops that want tuples."""
    for batch in ds:
        yield batch.to(device)
