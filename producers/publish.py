"""Publish a dataset to a Kafka topic in a v1 wire format, then write its manifest.

    python -m producers.publish --dataset fashion-mnist --split train --format avro \\
        --bootstrap-servers kafka:9092

Sample i goes to partition i % partitions, in index order; acks=all with
idempotence; the manifest is written only after every record was acknowledged.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, replace

from ddp_kbit import cli, kafka_io, manifest
from ddp_kbit.codecs import FORMATS, LAYOUTS, get_codec, headers_for
from ddp_kbit.config import COMPRESSIONS, KafkaConfig, PublishConfig, as_dict, build, load_config_file
from ddp_kbit.datasets import DATASETS, Dataset, SyntheticSpec, load_dataset

log = logging.getLogger("producers.publish")


@dataclass(frozen=True)
class PublishResult:
    topic: str
    records: int
    bytes: int
    seconds: float
    manifest: manifest.Manifest

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else float("inf")

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else float("inf")

    def summary(self) -> dict:
        return {"topic": self.topic, "records": self.records, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "records_per_s": round(self.records_per_s, 1), "mb_per_s": round(self.mb_per_s, 3),
                "partitions": {str(p): list(r) for p, r in self.manifest.partitions.items()}}


def check_target(admin, consumer, topic: str, partitions: int, force: bool) -> None:
    """Refuse to mix a new publish into a topic that already holds records (unless
    --force), and refuse a partition count the topic cannot honour."""
    topics = admin.topics()
    if topic not in topics:
        admin.create_topic(topic, partitions)
        return
    if topics[topic] != partitions:
        raise cli.UserError(f"topic {topic} exists with {topics[topic]} partitions, not {partitions}; "
                            f"pass --partitions {topics[topic]} or choose another --topic")
    bounds = kafka_io.end_offsets(consumer, [(topic, p) for p in range(partitions)])
    held = sum(hi - lo for lo, hi in bounds.values())
    if held and not force:
        raise cli.UserError(f"topic {topic} already holds {held} records; pass --force to append "
                            "(the new manifest covers only the new records)")


def produce_all(producer, codec, ds: Dataset, topic: str, partitions: int, progress: bool) -> tuple[int, float]:
    from tqdm import tqdm

    headers = headers_for(codec.format)
    total_bytes, start = 0, time.perf_counter()
    bar = tqdm(total=len(ds), unit="rec", desc=f"publish {topic}", disable=not progress, mininterval=0.5)
    try:
        for i in range(len(ds)):
            value = codec.encode_array(i, int(ds.labels[i]), ds.images[i])
            producer.send(topic, value, key=str(i).encode("ascii"), partition=i % partitions, headers=headers)
            total_bytes += len(value)
            if i % 1000 == 999:
                bar.update(1000)
        bar.update(len(ds) - bar.n)
    finally:
        bar.close()
    pending = producer.flush(300)
    if pending or producer.report.failed:
        lost = pending + producer.report.failed
        raise cli.UserError(f"{lost} of {len(ds)} records did not land in {topic} "
                            f"({producer.report.first_error or 'delivery timed out'}); no manifest written")
    return total_bytes, time.perf_counter() - start


def publish(kcfg: KafkaConfig, pcfg: PublishConfig, ds: Dataset) -> PublishResult:
    topic, codec = pcfg.topic_name, get_codec(pcfg.format, pcfg.layout)
    if pcfg.layout == "list" and ds.images.dtype != "uint8":
        raise cli.UserError(f"the list layout carries uint8 only; {ds.name} is {ds.images.dtype}")
    admin, consumer = kafka_io.make_admin(kcfg), kafka_io.make_consumer(kcfg, group_id="ddp_kbit.publisher")
    try:
        check_target(admin, consumer, topic, pcfg.partitions, pcfg.force)
    finally:
        consumer.close()
        admin.close()
    producer = kafka_io.make_producer(kcfg, pcfg.compression)
    try:
        nbytes, seconds = produce_all(producer, codec, ds, topic, pcfg.partitions, pcfg.progress)
        ranges = {p: tuple(r) for (t, p), r in producer.report.ranges.items() if t == topic}
    finally:
        producer.close()
    found = sum(e - s for s, e in ranges.values())
    if found != len(ds):  # a gap would mean the manifest points at records we did not write
        raise cli.UserError(f"acknowledged offsets cover {found} records, expected {len(ds)}; no manifest written")
    m = manifest.Manifest(topic=topic, dataset=ds.name, split=pcfg.split, format=pcfg.format, layout=pcfg.layout,
                          num_samples=len(ds), shape=ds.shape, dtype=str(ds.images.dtype),
                          num_classes=ds.num_classes, class_names=ds.class_names,
                          partitions=dict(sorted(ranges.items())), compression=pcfg.compression)
    manifest.write(kcfg, m, pcfg.manifest_topic)
    return PublishResult(topic, len(ds), nbytes, seconds, m)


def ensure_published(kcfg: KafkaConfig, pcfg: PublishConfig, splits=("train", "test"),
                     synthetic: SyntheticSpec | None = None) -> dict[str, manifest.Manifest]:
    """The manifest of each split's topic, publishing the split first when its
    topic has no manifest yet (a fresh broker, or a new format)."""
    found = manifest.read_all(kcfg, pcfg.manifest_topic)
    out = {}
    for split in splits:
        cfg = replace(pcfg, split=split, topic=None if len(splits) > 1 else pcfg.topic)
        if cfg.topic_name in found:
            log.info("%s already published (%d records)", cfg.topic_name, found[cfg.topic_name].num_samples)
            out[split] = found[cfg.topic_name]
            continue
        ds = load_dataset(cfg.dataset, split, cfg.data_dir, cfg.limit, synthetic)
        result = publish(kcfg, cfg, ds)
        log.info("published %d records to %s: %.0f records/s", result.records, result.topic, result.records_per_s)
        out[split] = result.manifest
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m producers.publish", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", choices=DATASETS, help="source dataset (default fashion-mnist)")
    g.add_argument("--data-dir", metavar="PATH", help="folder (or file) holding the dataset; fashion-mnist "
                   "defaults to /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist)")
    g.add_argument("--split", choices=("train", "test"), help="default train")
    g.add_argument("--limit", type=int, metavar="N", help="publish only the first N samples")
    g.add_argument("--shape", metavar="H,W[,C]", help="synthetic dataset: sample shape (default 28,28)")
    g.add_argument("--num-classes", type=int, metavar="K", help="synthetic dataset: classes (default 10)")
    g.add_argument("--num-samples", type=int, metavar="N", help="synthetic dataset: samples (default 1000)")
    g.add_argument("--seed", type=int, help="synthetic dataset: seed (default 0)")
    g = p.add_argument_group("topic")
    g.add_argument("--format", choices=FORMATS, help="wire format (default avro)")
    g.add_argument("--layout", choices=LAYOUTS, help="pixels as raw bytes (default) or a list of ints")
    g.add_argument("--topic", help="topic name (default {dataset}.{split}.{format}[.list])")
    g.add_argument("--partitions", type=int, metavar="N", help="partitions of a new topic (default 4)")
    g.add_argument("--compression", choices=COMPRESSIONS, help="producer compression (default none)")
    g.add_argument("--force", action="store_true", default=None,
                   help="append to a topic that already holds records; the new manifest covers only the new records")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    cli.add_kafka_args(p)
    cli.add_common_args(p)
    return p


def synthetic_spec(args, file_cfg: dict) -> SyntheticSpec:
    over = {"shape": tuple(int(d) for d in args.shape.split(",")) if args.shape else None,
            "num_classes": args.num_classes, "num_samples": args.num_samples, "seed": args.seed}
    section = dict(file_cfg.get("synthetic", {}))
    if "shape" in section:
        section["shape"] = tuple(section["shape"])
    return build(SyntheticSpec, section, over)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    file_cfg = load_config_file(args.config)
    cli.setup_logging(args.log_level or file_cfg.get("general", {}).get("log_level"))
    kcfg, pcfg = cli.kafka_config(args, file_cfg), build(PublishConfig, file_cfg.get("publish"), vars(args))
    ds = load_dataset(pcfg.dataset, pcfg.split, pcfg.data_dir, pcfg.limit, synthetic_spec(args, file_cfg))
    run_dir = cli.make_run_dir(args.run_dir)
    with cli.kafka_session(kcfg, run_dir) as live:
        result = publish(live, pcfg, ds)
    print(f"published {result.records} records to {result.topic} in {result.seconds:.2f}s: "
          f"{result.records_per_s:,.0f} records/s, {result.mb_per_s:.1f} MB/s")
    report = {"mode": "publish", "kafka": as_dict(kcfg), "publish": as_dict(pcfg), "result": result.summary()}
    print(f"report: {cli.write_json(run_dir / 'publish.json', report)}")
    return 0


def cli_entry() -> None:
    sys.exit(cli.run_main(main, prog="publish"))


if __name__ == "__main__":
    cli_entry()
