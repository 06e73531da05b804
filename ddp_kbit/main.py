"""ddp_kbit: train PyTorch DDP workers, launched by Spark, straight from Kafka.

    python -m ddp_kbit.main --mode train                  # embedded broker + Fashion-MNIST
    python -m ddp_kbit.main --mode train --distributed    # ranks as Spark barrier tasks
    spark-submit ddp_kbit/main.py --mode train --distributed --bootstrap-servers kafka:9092
    python -m ddp_kbit.main --mode publish                # only make sure the topics exist
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (spark-submit ddp_kbit/main.py): make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddp_kbit import cli  # noqa: E402
from ddp_kbit.codecs import FORMATS, LAYOUTS  # noqa: E402
from ddp_kbit.config import (OPTIMIZERS, SCHEDULES, SparkConfig, TrainConfig, as_dict, build,  # noqa: E402
                             load_config_file)
from ddp_kbit.models import MODELS  # noqa: E402

log = logging.getLogger("ddp_kbit")
MODES = ("train", "publish")


def add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="dataset published when the default topics are missing (default fashion-mnist)")
    g.add_argument("--format", choices=FORMATS, help="wire format of the topics (default avro)")
    g.add_argument("--layout", choices=LAYOUTS, help="pixels as bytes (default) or a list of ints")
    g.add_argument("--train-topic", help="train topic (default {dataset}.train.{format})")
    g.add_argument("--test-topic", help="test topic (default {dataset}.test.{format})")
    g.add_argument("--max-bad-fraction", type=float, metavar="F",
                   help="stop when more than this fraction of records is malformed (default 0.01); bad records "
                        "go to <topic>.dlq either way")
    g.add_argument("--prefetch", type=int, metavar="N", help="batches decoded ahead of the step (default 4)")
    g = p.add_argument_group("training")
    g.add_argument("--model", choices=MODELS, help="network, sized from the manifest (default cnn)")
    g.add_argument("--epochs", type=int, help="default 5")
    g.add_argument("--batch-size", type=int, help="records per step per process (default 128)")
    g.add_argument("--eval-batch-size", type=int, help="default 1000")
    g.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="default adam")
    g.add_argument("--lr-schedule", choices=SCHEDULES, help="default cosine")
    g.add_argument("--weight-decay", type=float, help="default 0")
    g.add_argument("--amp", action="store_true", default=None, help="mixed precision (CUDA only)")
    g.add_argument("--grad-accum", type=int, metavar="N", help="batches per optimizer step (default 1)")
    g.add_argument("--seed", type=int, help="model init and batch-order seed (default 0)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
    g = p.add_argument_group("checkpoints and failures")
    g.add_argument("--checkpoint-dir", metavar="DIR", help="default <run dir>/checkpoints; shared storage on a cluster")
    g.add_argument("--checkpoint-every", type=int, metavar="N", help="also checkpoint every N steps (default: epochs only)")
    g.add_argument("--resume", action="store_true", default=None, help="resume from the newest checkpoint in --checkpoint-dir")
    g.add_argument("--max-restarts", type=int, metavar="N", help="re-run from the newest checkpoint after a failure (default 0)")
    g.add_argument("--inject-failure-at-step", type=int, metavar="N",
                   help="testing: crash rank 0 once at global step N, to exercise restarts")
    g = p.add_argument_group("spark")
    g.add_argument("--num-processes", type=int, metavar="N", help="DDP processes (default 2)")
    g.add_argument("--distributed", action="store_true", default=None,
                   help="run the processes as Spark barrier tasks on executors (default: local_mode on the driver)")
    g.add_argument("--gpu", action="store_true", default=None,
                   help="one GPU per process (NCCL), pinned memory; loads spark_conf/rapids.conf")
    g.add_argument("--master", help="Spark master URL (default from spark_conf/spark-defaults.conf: local[N])")
    g.add_argument("--spark-conf", action="append", metavar="KEY=VALUE", help="Spark setting override; repeatable")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddp-kbit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=MODES, default="train",
                   help="train (default): stream, train, evaluate, report; publish: only publish the dataset's "
                        "train/test topics when their manifests are missing")
    p.add_argument("--report", metavar="PATH", help="JSON report path (default <run dir>/report.json)")
    add_train_args(p)
    cli.add_kafka_args(p)
    cli.add_common_args(p)
    return p


def configs(args, file_cfg):
    over = vars(args).copy()
    over["conf"] = tuple(args.spark_conf) if args.spark_conf else None
    return (cli.kafka_config(args, file_cfg), build(TrainConfig, file_cfg.get("train"), over),
            build(SparkConfig, file_cfg.get("spark"), over))


def run_publish(kcfg, tcfg: TrainConfig) -> dict:
    from ddp_kbit.driver import ensure_default_topics

    manifests = ensure_default_topics(kcfg, tcfg)
    return {"mode": "publish", "topics": {s: m.topic for s, m in manifests.items()}}


def summarize(report: dict) -> str:
    if report["mode"] != "train":
        return f"topics: {report['topics']}"
    last, final = report["epochs"][-1] if report["epochs"] else {}, report["final"]
    return (f"trained {len(report['epochs'])} epoch(s) on {report['world_size']} process(es): test accuracy "
            f"{final['test_accuracy']:.4f}, test loss {final['test_loss']:.4f}; last epoch "
            f"{last.get('samples_per_s', 0):,.0f} samples/s, data wait {100 * last.get('data_wait_fraction', 0):.1f}%; "
            f"model {final['model']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    file_cfg = load_config_file(args.config)
    level = args.log_level or file_cfg.get("general", {}).get("log_level") or "INFO"
    cli.setup_logging(level)
    kcfg, tcfg, scfg = configs(args, file_cfg)
    run_dir = cli.make_run_dir(args.run_dir)
    try:
        with cli.kafka_session(kcfg, run_dir) as live:
            if args.mode == "publish":
                report = run_publish(live, tcfg)
            else:
                from ddp_kbit.driver import run_training

                report = run_training(live, tcfg, scfg, run_dir, level)
    finally:
        if args.mode == "train":
            from ddp_kbit.spark import stop_session

            stop_session()
    report["config"] = report.get("config") or {"kafka": as_dict(kcfg), "train": as_dict(tcfg)}
    path = cli.write_json(args.report or run_dir / "report.json", report)
    if report["mode"] == "train" and report["epochs"]:
        from ddp_kbit.plots import plot_training

        plot_training(report, path.with_suffix(".png"))
    print(summarize(report))
    print(f"report: {path}")
    return 0


def cli_entry() -> None:
    sys.exit(cli.run_main(main))


if __name__ == "__main__":
    cli_entry()
