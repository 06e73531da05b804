"""Publish a dataset to a Kafka topic in a v1 wire format, then write its manifest.

    python -m producers.publish --dataset fashion-mnist --split train --format avro \\
        --bootstrap-servers kafka:9092

Sample i goes to partition i % partitions, in index order; acks=all with
idempotence; the manifest is written only after every record was acknowledged.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from ddp_kbit import cli, logs
from ddp_kbit.config import COMPRESSIONS, DATASETS, GeneralConfig, KafkaConfig, PublishConfig, SyntheticConfig, as_dict
from ddp_kbit.data.datasets import load_dataset
from ddp_kbit.data.publish import publish, publish_live
from ddp_kbit.files import make_run_dir, write_json
from ddp_kbit.kafka.broker import reachable
from ddp_kbit.wire.sample import FORMATS, LAYOUTS


@dataclass(frozen=True)
class PublishJob:
    """The publish command's config file sections."""

    general: GeneralConfig = GeneralConfig()
    kafka: KafkaConfig = KafkaConfig()
    publish: PublishConfig = PublishConfig()
    synthetic: SyntheticConfig = SyntheticConfig()


def shape_arg(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be H,W or H,W,C integers, e.g. 32,32,3; got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m producers.publish", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("dataset")
    opt = lambda name, *flags, **kw: cli.option(g, "publish", PublishConfig, name, *flags, **kw)  # noqa: E731
    opt("dataset", choices=DATASETS, help="source dataset")
    opt("data_dir", metavar="PATH", help="folder (or file) holding the dataset; fashion-mnist defaults to "
        "/usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist)")
    opt("split", choices=("train", "test"), help="which split")
    opt("limit", type=int, metavar="N", help="publish only the first N samples")
    syn = lambda name, *flags, **kw: cli.option(g, "synthetic", SyntheticConfig, name, *flags, **kw)  # noqa: E731
    syn("shape", type=shape_arg, metavar="H,W[,C]", help="synthetic dataset: sample shape")
    syn("num_classes", type=int, metavar="K", help="synthetic dataset: classes")
    syn("num_samples", type=int, metavar="N", help="synthetic dataset: samples")
    syn("seed", type=int, help="synthetic dataset: seed")
    g = p.add_argument_group("topic")
    opt = lambda name, *flags, **kw: cli.option(g, "publish", PublishConfig, name, *flags, **kw)  # noqa: E731
    opt("format", choices=FORMATS, help="wire format")
    opt("layout", choices=LAYOUTS, help="pixels as raw bytes or a list of ints")
    opt("topic", help="topic name (default {dataset}.{split}.{format}[.list])")
    opt("partitions", type=int, metavar="N", help="partitions of a new topic")
    opt("compression", choices=COMPRESSIONS, help="producer compression")
    opt("force", action="store_true",
        help="append to a topic that already holds records; the new manifest covers only the new records")
    g = p.add_argument_group("a live producer (demos, --follow)")
    opt = lambda name, *flags, **kw: cli.option(g, "publish", PublishConfig, name, *flags, **kw)  # noqa: E731
    opt("rate", type=float, metavar="R", help="append at R records/s (keys continue the index); a manifest after "
        "each completed pass covers every record acknowledged so far")
    opt("duration_s", "--duration", type=float, metavar="S", help="with --rate: for S seconds, pass after pass")
    opt("repeat", type=int, metavar="K", help="with --rate: K passes over the dataset (default 1)")
    cli.add_kafka_args(p)
    cli.add_general_args(p)
    return p


def _stopping():
    """SIGTERM ends a live producer between records (what was sent is flushed)."""
    import signal

    flag = {"stop": False}
    signal.signal(signal.SIGTERM, lambda *_: flag.update(stop=True))
    return lambda: flag["stop"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    job = cli.config_group(PublishJob, args)
    logs.configure(job.general.log_level, secrets=job.kafka.secrets)
    ds = load_dataset(job.publish.dataset, job.publish.split, job.publish.data_dir, job.publish.limit, job.synthetic)
    run_dir = make_run_dir(job.general.run_dir)
    with reachable(job.kafka, run_dir) as live:
        if job.publish.rate:
            result = publish_live(live, job.publish, ds, job.general.progress, stop=_stopping())
        else:
            result = publish(live, job.publish, ds, job.general.progress)
    if result.manifest is None:
        print(f"published {result.records} records to {result.topic} (no pass completed: no manifest)")
        return 0
    print(f"published {result.records} records to {result.topic} in {result.seconds:.2f}s: "
          f"{result.records_per_s:,.0f} records/s, {result.mb_per_s:.1f} MB/s")
    report = {"mode": "publish", "kafka": as_dict(job.kafka), "publish": as_dict(job.publish),
              "result": result.summary()}
    print(f"report: {write_json(job.general.report or run_dir / 'publish.json', report)}")
    return 0


def cli_entry() -> None:
    sys.exit(cli.run_main(main, prog="publish"))


if __name__ == "__main__":
    cli_entry()
