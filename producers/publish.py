"""Publish a dataset to a Kafka topic in a v1 wire format, then write its manifest:
``ddp-kbit publish``, under the name it always had.

    python -m producers.publish --dataset fashion-mnist --split train --format avro \\
        --bootstrap-servers kafka:9092

Sample i goes to partition i % partitions, in index order; acks=all with
idempotence; the manifest is written only after every record was acknowledged.
Without --split this entry point publishes the train split (``ddp-kbit publish``:
both).
"""
from __future__ import annotations

import sys

from ddp_kbit import cli, logs
from ddp_kbit.api import publish_job
from ddp_kbit.main import command_parser

PROG = "python -m producers.publish"


def build_parser():
    return command_parser("publish", prog=PROG)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from ddp_kbit.config import PublishJob

    job = cli.config_group(PublishJob, args, base={"publish": {"split": "train"}})
    logs.configure(job.general.log_level, secrets=job.kafka.secrets)
    report = publish_job(job)
    print(report.summary())
    print(f"report: {report['report_path']}")
    return 0


def cli_entry() -> None:
    sys.exit(cli.run_main(main, prog="publish"))


if __name__ == "__main__":
    cli_entry()
