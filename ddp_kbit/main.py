"""ddp_kbit command line: parse, build configs, dispatch, tear down.

    python -m ddp_kbit.main --mode publish          # broker + Fashion-MNIST topics
    ddp-kbit --mode publish --bootstrap-servers kafka:9092 --format protobuf
"""
from __future__ import annotations

import argparse
import logging
import sys

from ddp_kbit import cli
from ddp_kbit.codecs import FORMATS
from ddp_kbit.config import PublishConfig, as_dict, build, load_config_file

log = logging.getLogger("ddp_kbit")
MODES = ("publish",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddp-kbit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=MODES, default="publish",
                   help="publish: make sure the dataset's train and test topics exist (publishing them "
                        "when their manifests are missing)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="dataset to publish when its topics are missing (default fashion-mnist)")
    g.add_argument("--data-dir", metavar="PATH", help="where the dataset files are")
    g.add_argument("--format", choices=FORMATS, help="wire format of the topics (default avro)")
    g.add_argument("--partitions", type=int, metavar="N", help="partitions of newly published topics (default 4)")
    cli.add_kafka_args(p)
    cli.add_common_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    file_cfg = load_config_file(args.config)
    cli.setup_logging(args.log_level or file_cfg.get("general", {}).get("log_level"))
    kcfg = cli.kafka_config(args, file_cfg)
    pcfg = build(PublishConfig, file_cfg.get("publish"), vars(args))
    run_dir = cli.make_run_dir(args.run_dir)
    with cli.kafka_session(kcfg, run_dir) as live:
        from producers.publish import ensure_published

        manifests = ensure_published(live, pcfg, splits=("train", "test"))
    report = {"mode": args.mode, "kafka": as_dict(kcfg), "publish": as_dict(pcfg),
              "topics": {s: m.topic for s, m in manifests.items()}}
    print(f"report: {cli.write_json(run_dir / 'report.json', report)}")
    return 0


def cli_entry() -> None:
    sys.exit(cli.run_main(main))


if __name__ == "__main__":
    cli_entry()
