"""Publish throughput per format x client, as a ratio to publishing the raw pixel bytes.

    .venv/bin/python bench/publish.py [--samples 20000] [--bootstrap-servers HOST:PORT]

Each row publishes the same Fashion-MNIST samples to a fresh topic through the
project's publisher path (encode + produce + flush, acks=all, idempotent), timed
from the first send to the last acknowledgement. The baseline sends each image's
raw bytes with no encoding, through the same client. Ratios compare rows of one run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ddp_kbit import kafka
from ddp_kbit.config import CLIENTS, KafkaConfig
from ddp_kbit.data.datasets import load_dataset
from ddp_kbit.data.publish import produce_all
from ddp_kbit.kafka.broker import EmbeddedBroker
from ddp_kbit.wire import FORMATS, get_codec


class RawBytes:
    """Baseline: the pixel bytes as the value, nothing else."""

    format = "raw"
    headers: list = []

    def encode_array(self, index, label, array):
        return array.tobytes()


def median_run(cfg, codec, ds, topic, partitions, repeats: int) -> dict:
    runs = sorted((one_run(cfg, codec, ds, f"{topic}.{i}", partitions) for i in range(repeats)),
                  key=lambda r: r["records_per_s"])
    return runs[len(runs) // 2]


def one_run(cfg: KafkaConfig, codec, ds, topic: str, partitions: int) -> dict:
    # A fresh embedded broker per row: tansu's memory store slows as it fills, which
    # would otherwise penalise whichever row runs last.
    broker = None if cfg.bootstrap_servers else EmbeddedBroker().start()
    cfg = cfg if broker is None else cfg.with_servers(broker.bootstrap_servers)
    try:
        with kafka.make_admin(cfg) as admin:
            admin.create_topic(topic, partitions)
        with kafka.make_producer(cfg) as producer:
            nbytes, seconds = produce_all(producer, codec, ds, topic, partitions, progress=False)
    finally:
        if broker:
            broker.stop()
    return {"records_per_s": len(ds) / seconds, "mb_per_s": nbytes / 1e6 / seconds, "bytes_per_record": nbytes / len(ds)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=60000, help="samples per row (default 60000)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="runs per row; the median is shown (default 3)")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--clients", default=",".join(CLIENTS))
    ap.add_argument("--layout", default="bytes", choices=("bytes", "list"))
    ap.add_argument("--bootstrap-servers", help="default: a fresh embedded broker per row")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    ds = load_dataset("fashion-mnist", "train", limit=args.samples)
    rows, stamp = [], int(time.time())
    for client in args.clients.split(","):
        cfg = KafkaConfig(bootstrap_servers=args.bootstrap_servers, client=client)
        base = median_run(cfg, RawBytes(), ds, f"bench.raw.{client}.{stamp}", args.partitions, args.repeats)
        rows.append({"client": client, "format": "raw", **base, "ratio": 1.0})
        for fmt in args.formats.split(","):
            r = median_run(cfg, get_codec(fmt, args.layout), ds, f"bench.{fmt}.{client}.{stamp}", args.partitions,
                           args.repeats)
            rows.append({"client": client, "format": fmt, **r, "ratio": r["records_per_s"] / base["records_per_s"]})
    print(f"publish, {args.samples} Fashion-MNIST samples, layout={args.layout}, {args.partitions} partitions, "
          f"median of {args.repeats}")
    print(f"{'client':<13}{'format':<10}{'records/s':>11}{'MB/s':>8}{'B/rec':>7}{'vs raw':>8}")
    for r in rows:
        print(f"{r['client']:<13}{r['format']:<10}{r['records_per_s']:>11,.0f}{r['mb_per_s']:>8.1f}"
              f"{r['bytes_per_record']:>7.0f}{r['ratio']:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
