"""One measurement of one condition, where the work really runs: ``publish`` in the
driver through the project's publisher; ``ingest`` and ``train`` inside the
TorchDistributor ranks, through the real stream and the real training path; the
``raw`` and ``memory`` ceilings beside them, with the same client, batches and step."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from ddp_kbit import kafka
from ddp_kbit.config import FOREIGN_SHAPES, CheckpointConfig, DataConfig, KafkaConfig, TrainConfig
from ddp_kbit.data.local_datasets import Dataset
from ddp_kbit.data.manifest import Manifest
from ddp_kbit.data.plan import Shuffle, plan_epoch, ranges_to_slices
from ddp_kbit.data.publish import produce_all
from ddp_kbit.data.stream import KafkaStreamDataset
from ddp_kbit.experiment import shapes
from ddp_kbit.experiment.grid import MEMORY, RAW, Condition
from ddp_kbit.kafka.broker import EmbeddedBroker
from ddp_kbit.train.batches import MemoryBatches
from ddp_kbit.train.loop import RankTrainer
from ddp_kbit.train.spec import RunSpec
from ddp_kbit.wire import get_codec


class RawBytes:
    """The ``raw`` baseline's "codec": the pixel bytes as the value, no encoding."""

    format, headers = RAW, []

    def encode_array(self, index: int, label: int, array: np.ndarray) -> bytes:
        return np.ascontiguousarray(array).tobytes()


def codec_for(cond: Condition):
    if cond.format == RAW:
        return RawBytes()
    if cond.format in FOREIGN_SHAPES:
        return shapes.encoder(cond.format)
    return get_codec(cond.format, cond.layout)


# ------------------------------------------------------------------ driver side
def publish_once(kcfg: KafkaConfig, cond: Condition, ds: Dataset, partitions: int, topic: str) -> dict:
    """Publish ``ds`` to a new topic, timed from the first send to the last
    acknowledgement; one record is sent and acknowledged before the clock starts
    (connection, idempotent-producer id, topic metadata: ~0.5 s paid once per
    producer, which would otherwise dominate small studies). With the embedded
    broker, a fresh broker per measurement (its memory store slows as it fills,
    which would favour early rows)."""
    broker = None if kcfg.bootstrap_servers else EmbeddedBroker().start()
    cfg = replace(kcfg, client=cond.client)
    cfg = cfg if broker is None else cfg.with_servers(broker.bootstrap_servers)
    try:
        with kafka.make_admin(cfg) as admin:
            admin.create_topic(topic, partitions)
        with kafka.make_producer(cfg, cond.compression, measure=True) as producer:
            producer.send(topic, b"warm-up", partition=0)
            producer.flush(30)
            before = producer.wire_bytes() or 0
            value_bytes, seconds = produce_all(producer, codec_for(cond), ds, topic, partitions, progress=False)
            wire = (producer.wire_bytes() or 0) - before
    finally:
        if broker is not None:
            broker.stop()
    n = len(ds)
    return {"records": n, "seconds": seconds, "records_per_s": n / seconds, "mb_per_s": value_bytes / 1e6 / seconds,
            "bytes_per_record": wire / n if wire else value_bytes / n}


# ------------------------------------------------------------------ rank side
@dataclass(frozen=True)
class RankSide:
    """What every rank needs to measure the rank-side conditions (picklable)."""

    kafka: KafkaConfig
    data: DataConfig
    train: TrainConfig
    topics: dict                 # (format, layout, compression) -> Manifest; (raw, bytes, compression) too
    test_topics: dict            # the same keys -> the test split's Manifest (train workload)
    value_bytes: dict            # the same keys -> mean value bytes per record
    images: np.ndarray | None    # memory baselines: the records, as the topics hold them
    labels: np.ndarray | None
    num_classes: int
    run_dir: str
    collective_timeout_s: float
    passes: int = 1              # reads of the whole topic per ingest measurement
    use_gpu: bool = False        # --gpu: one GPU per rank, pinned host batches


def measure_rank(side: RankSide, cond: Condition, rank: int, world: int, device, round_dir: str) -> dict:
    """This rank's part of one measurement: records, seconds, and extras."""
    if cond.workload == "train":
        return train_memory(side, rank, world, device, round_dir) if cond.format == MEMORY else \
            train_kafka(side, cond, rank, world, device, round_dir)
    if cond.format == MEMORY:
        return ingest_memory(side, rank, world)
    key = (cond.format, cond.layout, cond.compression)
    topic, cfg, data = side.topics[key], replace(side.kafka, client=cond.client), data_for(side, cond)
    plan = plan_epoch(ranges_to_slices(topic.topic, topic.partitions), world, side.train.batch_size, side.train.seed,
                      0, Shuffle.of(data))[rank]
    t0, records = time.perf_counter(), 0
    for _ in range(side.passes):   # each pass with its own consumer, as each epoch of training
        records += raw_drain(cfg, plan) if cond.format == RAW else \
            stream_drain(cfg, data, topic, plan, side.use_gpu)
    seconds = time.perf_counter() - t0
    return {"records": records, "seconds": seconds, "bytes": records * side.value_bytes[key]}


def data_for(side: RankSide, cond: Condition) -> DataConfig:
    """The stream settings of a condition: its shuffle (a study may compare plans)."""
    return side.data if cond.shuffle in ("-", side.data.shuffle) else replace(side.data, shuffle=cond.shuffle)


def stream_drain(cfg: KafkaConfig, data: DataConfig, topic: Manifest, plan, pin_memory: bool = False) -> int:
    """The real stream into training batches, no model."""
    return sum(len(b) for b in KafkaStreamDataset(cfg, data, topic, plan, pin_memory=pin_memory))


def raw_drain(cfg: KafkaConfig, plan) -> int:
    """The cheapest honest loop with the same client and settings as the stream:
    the rank's planned records in polls of 20,000, each value's length touched, no
    decoding and none of the stream's own per-poll work. (A slice that ends inside a
    partition may read a few records past it in the last poll; it counts as planned.)"""
    want = sum(len(s) for s in plan.slices)
    with kafka.make_consumer(cfg, group_id="ddp_kbit.experiment.raw") as consumer:
        consumer.assign([(t, p, start) for (t, p), (start, _) in plan.span().items()])
        consumer.drain(want)
    return want


def _rank_share(side: RankSide, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(side.labels) // world
    x, y = side.images[rank * n:(rank + 1) * n], side.labels[rank * n:(rank + 1) * n]
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))


def ingest_memory(side: RankSide, rank: int, world: int) -> dict:
    x, y = _rank_share(side, rank, world)
    t0, records = time.perf_counter(), 0
    for _ in range(side.passes):
        records += sum(len(b) for b in MemoryBatches(x, y, side.train.batch_size))
    return {"records": records, "seconds": time.perf_counter() - t0,
            "bytes": side.passes * x.numel() * x.element_size()}


def train_memory(side: RankSide, rank: int, world: int, device, round_dir: str) -> dict:
    """The same trainer (model, optimizer, step, checkpoints) with in-memory batches
    as its source: the no-Kafka ceiling of the train workload."""
    x, y = _rank_share(side, rank, world)
    spec = _spec(side, side.kafka, next(iter(side.topics.values())), None, round_dir)
    rt = RankTrainer(spec, rank, world, device, batches=MemoryBatches(x, y, side.train.batch_size))
    t0 = time.perf_counter()
    for epoch in range(side.train.epochs):
        rt.train_epoch(epoch, evaluate=False)
    return {"records": len(y) * side.train.epochs, "seconds": time.perf_counter() - t0}


def _spec(side: RankSide, kcfg: KafkaConfig, topic: Manifest, test: Manifest | None, round_dir: str,
          data: DataConfig | None = None) -> RunSpec:
    return RunSpec(kafka=kcfg, data=data or side.data, train=side.train, checkpoint=_checkpoint_cfg(round_dir),
                   train_topic=topic, test_topic=test, num_classes=side.num_classes, run_dir=side.run_dir,
                   model=side.train.model, progress=False, collective_timeout_s=side.collective_timeout_s,
                   use_gpu=side.use_gpu)


def train_kafka(side: RankSide, cond: Condition, rank: int, world: int, device, round_dir: str) -> dict:
    """The real training path (RankTrainer: stream, ignite engine, checkpoints,
    evaluation) for the configured epochs."""
    key = (cond.format, cond.layout, cond.compression)
    spec = _spec(side, replace(side.kafka, client=cond.client), side.topics[key], side.test_topics[key], round_dir,
                 data_for(side, cond))
    rt = RankTrainer(spec, rank, world, device)
    for epoch in range(side.train.epochs):
        rt.train_epoch(epoch)
    hist = rt.run.history                        # every rank holds the world's figures
    seconds = sum(e["seconds"] for e in hist)    # training only, evaluation left out
    wait = sum(e["data_wait_fraction"] * e["seconds"] for e in hist) / max(seconds, 1e-9)
    # the world's samples on rank 0 only, so that summing ranks gives the world's rate
    return {"records": sum(e["samples"] for e in hist) if rank == 0 else 0, "seconds": seconds,
            "data_wait_fraction": wait, "test_accuracy": rt.final_eval["val_accuracy"]}


def _checkpoint_cfg(directory: str) -> CheckpointConfig:
    return CheckpointConfig(dir=directory, keep=1)
