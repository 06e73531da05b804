"""Ingest throughput: is the data path ever the bottleneck?

    .venv/bin/python bench/ingest.py [--samples 60000] [--formats avro,protobuf] [--clients confluent]

For each format (bytes layout) and client, on a topic of Fashion-MNIST records:
  raw       records/s of a plain consume loop with the same client (values touched, nothing decoded)
  decode    records/s of KafkaStreamDataset: assign, poll, whole-batch decode into uint8 batches
  ratio     decode / raw                                   (target >= 0.50)
Then, per format with the first client, training samples/s of one process with the
same model, batch size and step closure, fed from Kafka vs from an in-memory tensor:
  ratio     kafka / memory                                 (target >= 0.90)
All rows of one run share the machine; compare ratios, not absolutes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events

from ddp_kbit import kafka
from ddp_kbit.config import DataConfig, KafkaConfig, PublishConfig, TrainConfig
from ddp_kbit.data.datasets import load_dataset
from ddp_kbit.data.partitions import plan_epoch, ranges_to_slices
from ddp_kbit.data.publish import publish
from ddp_kbit.data.stream import KafkaStreamDataset, StreamBatch
from ddp_kbit.kafka.broker import EmbeddedBroker
from ddp_kbit.train.loop import build_optimizer, make_trainer
from ddp_kbit.train.models import build_model


def raw_consume(cfg: KafkaConfig, m, passes: int) -> float:
    """A plain loop over the whole topic ``passes`` times with one consumer."""
    total, seconds = m.record_count, 0.0
    with kafka.make_consumer(cfg, group_id="bench.raw") as consumer:
        for _ in range(passes):
            consumer.assign([(m.topic, p, s) for p, (s, e) in m.partitions.items()])
            t0, got, nbytes = time.perf_counter(), 0, 0
            while got < total:
                _, _, vals, _ = consumer.poll_values(20_000, 0.5)
                got += len(vals)
                nbytes += sum(map(len, vals))  # touch every value, as a consumer would
            seconds += time.perf_counter() - t0
    return total * passes / seconds


def stream_for(cfg: KafkaConfig, m, batch: int) -> KafkaStreamDataset:
    plan = plan_epoch(ranges_to_slices(m.topic, m.partitions), 1, batch)[0]
    return KafkaStreamDataset(cfg, DataConfig(), m, plan)


def decode_consume(cfg: KafkaConfig, m, batch: int, passes: int) -> float:
    """The stream over the whole topic ``passes`` times (a consumer per pass)."""
    t0, n = time.perf_counter(), 0
    for _ in range(passes):
        n += sum(len(b) for b in stream_for(cfg, m, batch))
    assert n == m.record_count * passes, (n, m.record_count)
    return n / (time.perf_counter() - t0)


class _NoState:
    def mark_used(self, batch):
        pass


def train_rate(batches, model_name: str, shape, classes: int, batch: int, warmup: int = 5) -> float:
    """Samples/s of the real step closure over ``batches`` (an iterable of StreamBatch)."""
    torch.manual_seed(0)
    model = build_model(model_name, shape, classes)
    cfg = TrainConfig(batch_size=batch, lr_schedule="none")
    opt, sched = build_optimizer(cfg, model.parameters(), 1000)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    trainer = make_trainer(model, opt, sched, scaler, torch.device("cpu"), cfg.grad_accum, amp=False)
    marks = {}

    @trainer.on(Events.STARTED)
    def _init(engine):
        engine.state.stream, engine.state.global_step = _NoState(), 0

    @trainer.on(Events.ITERATION_COMPLETED)
    def _mark(engine):
        if engine.state.iteration == warmup:
            marks["t0"], marks["n0"] = time.perf_counter(), engine.state.samples

    trainer.run(batches, max_epochs=1, epoch_length=len(batches))
    return (trainer.state.samples - marks["n0"]) / (time.perf_counter() - marks["t0"])


class MemoryBatches:
    """The same batches as the stream would yield, from an in-memory uint8 tensor."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch: int):
        self.x, self.y, self.batch = torch.from_numpy(images), torch.from_numpy(labels), batch

    def __len__(self):
        return (len(self.y) + self.batch - 1) // self.batch

    def __iter__(self):
        for i in range(0, len(self.y), self.batch):
            yield StreamBatch(self.x[i:i + self.batch], self.y[i:i + self.batch], ())


def median(xs):
    return sorted(xs)[len(xs) // 2]


def train_row(cfg: KafkaConfig, args, ds, m, fmt: str) -> dict:
    """Same model, batch size and step closure; batches from memory, then from Kafka."""
    n = args.train_samples
    sub = {p: (s, s + n // args.partitions) for p, (s, e) in m.partitions.items()}
    small = m.__class__(**{**m.__dict__, "partitions": sub})
    mems, kafs = [], []
    for _ in range(args.repeats):  # interleaved: machine drift hits both alike
        mems.append(train_rate(MemoryBatches(ds.images[:n], ds.labels[:n], args.batch_size), args.model,
                               ds.shape, ds.num_classes, args.batch_size))
        kafs.append(train_rate(stream_for(cfg, small, args.batch_size), args.model, ds.shape, ds.num_classes,
                               args.batch_size))
    mem, kaf = median(mems), median(kafs)
    print(f"  train {fmt:<9} memory {mem:>8,.0f}/s  kafka {kaf:>8,.0f}/s  ratio {kaf / mem:.2f}", flush=True)
    return {"client": cfg.client, "format": fmt, "memory_per_s": mem, "kafka_per_s": kaf, "ratio": kaf / mem}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=60000, help="records per topic (default 60000)")
    ap.add_argument("--train-samples", type=int, default=12800, help="records per training row (default 12800)")
    ap.add_argument("--formats", default="json,avro,protobuf,bson")
    ap.add_argument("--clients", default="confluent,kafka-python")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per row; the median is shown")
    ap.add_argument("--passes", type=int, default=3, help="reads of the whole topic per consume measurement")
    ap.add_argument("--skip-train", action="store_true", help="only the consume/decode rows")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    ds = load_dataset("fashion-mnist", "train", limit=args.samples)
    rows, train_rows = [], []
    for fmt in args.formats.split(","):
        # A fresh broker per format: tansu's memory store slows down as it fills.
        with EmbeddedBroker() as broker:
            base = KafkaConfig(bootstrap_servers=broker.bootstrap_servers)
            m = publish(base, PublishConfig(format=fmt, topic=f"ingest.{fmt}", partitions=args.partitions), ds,
                        progress=False).manifest
            for client in args.clients.split(","):
                cfg = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, client=client)
                raws, decs = [], []
                for _ in range(args.repeats):  # interleaved, so drift hits both alike
                    raws.append(raw_consume(cfg, m, args.passes))
                    decs.append(decode_consume(cfg, m, args.batch_size, args.passes))
                raw, dec = median(raws), median(decs)
                rows.append({"client": client, "format": fmt, "raw_per_s": raw, "decode_per_s": dec,
                             "ratio": dec / raw})
                print(f"  {client:<13}{fmt:<9} raw {raw:>10,.0f}/s  decode {dec:>10,.0f}/s  ratio {dec / raw:.2f}",
                      flush=True)
            if not args.skip_train:
                train_rows.append(train_row(base.with_servers(broker.bootstrap_servers), args, ds, m, fmt))
    print(f"\nconsume + decode into batches, {args.samples} Fashion-MNIST records x {args.passes} passes, bytes layout, "
          f"batch {args.batch_size}, median of {args.repeats}")
    print(f"{'client':<13}{'format':<10}{'raw rec/s':>12}{'decode rec/s':>14}{'ratio':>7}")
    for r in rows:
        print(f"{r['client']:<13}{r['format']:<10}{r['raw_per_s']:>12,.0f}{r['decode_per_s']:>14,.0f}{r['ratio']:>7.2f}")
    if train_rows:
        print(f"\ntraining, one process, model {args.model}, batch {args.batch_size}, {args.train_samples} samples, "
              f"median of {args.repeats}")
        print(f"{'client':<13}{'format':<10}{'memory/s':>10}{'kafka/s':>10}{'ratio':>7}")
        for r in train_rows:
            print(f"{r['client']:<13}{r['format']:<10}{r['memory_per_s']:>10,.0f}{r['kafka_per_s']:>10,.0f}{r['ratio']:>7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"ingest": rows, "train": train_rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
