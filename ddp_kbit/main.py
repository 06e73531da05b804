"""ddp_kbit: train PyTorch DDP workers, launched by Spark, straight from Kafka.

    python -m ddp_kbit.main --mode train                  # embedded broker + Fashion-MNIST
    python -m ddp_kbit.main --mode train --distributed    # ranks as Spark barrier tasks
    spark-submit ddp_kbit/main.py --mode train --distributed --bootstrap-servers kafka:9092
    python -m ddp_kbit.main --mode publish                # only make sure the topics exist
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file (spark-submit ddp_kbit/main.py): Python put this folder first on
    # sys.path, where ddp_kbit/kafka would shadow the kafka-python package. Put the
    # folder that holds the package there instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from ddp_kbit import cli, logs  # noqa: E402
from ddp_kbit.config import (  # noqa: E402
    MODELS,
    OPTIMIZERS,
    SCHEDULES,
    CheckpointConfig,
    DataConfig,
    JobConfig,
    SparkConfig,
    TrainConfig,
    as_dict,
)
from ddp_kbit.files import make_run_dir, write_json  # noqa: E402
from ddp_kbit.wire.sample import FORMATS, LAYOUTS  # noqa: E402

MODES = ("train", "publish")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    opt = lambda name, *flags, **kw: cli.option(g, "data", DataConfig, name, *flags, **kw)  # noqa: E731
    opt("dataset", help="dataset published when the default topics are missing")
    opt("data_dir", metavar="PATH", help="where that dataset's files are (fashion-mnist: its Debian package's folder)")
    opt("format", choices=FORMATS, help="wire format of topics without a manifest, and of the default topics "
        "(avro when not given); a manifest's format wins and a contradicting flag is an error")
    opt("layout", choices=LAYOUTS, help="pixels as bytes or a list of ints, for the default topics")
    opt("train_topic", help="train topic (default {dataset}.train.{format})")
    opt("test_topic", help="test topic (default {dataset}.test.{format})")
    opt("max_bad_fraction", type=float, metavar="F",
        help="stop when more than this fraction of records is malformed; bad records go to <topic>.dlq either way")
    opt("prefetch", type=int, metavar="N", help="batches decoded ahead of the step")
    opt("allow_missing_records", action="store_true",
        help="when retention deleted records a manifest covers, train on the rest (counted in the report) "
             "instead of stopping")


def add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    opt = lambda name, *flags, **kw: cli.option(g, "train", TrainConfig, name, *flags, **kw)  # noqa: E731
    opt("model", choices=MODELS, help="network, sized from the manifest")
    opt("epochs", type=int, help="passes over the train topic")
    opt("batch_size", type=int, help="records per step per process")
    opt("eval_batch_size", type=int, help="records per evaluation step per process")
    opt("lr", type=float, help="learning rate")
    opt("optimizer", choices=OPTIMIZERS, help="optimizer")
    opt("momentum", type=float, help="SGD momentum")
    opt("lr_schedule", choices=SCHEDULES, help="learning-rate schedule over all steps")
    opt("weight_decay", type=float, help="L2 weight decay")
    opt("amp", action="store_true", help="mixed precision (CUDA only)")
    opt("grad_accum", type=int, metavar="N", help="batches per optimizer step")
    opt("seed", type=int, help="model init and batch-order seed")
    opt("handlers", "--handler", action="append", metavar="MODULE:FUNCTION",
        help="extra ignite handler, called as FUNCTION(trainer, context) on every rank each epoch; repeatable")
    g = p.add_argument_group("checkpoints and failures")
    opt = lambda name, *flags, **kw: cli.option(g, "checkpoint", CheckpointConfig, name, *flags, **kw)  # noqa: E731
    opt("dir", "--checkpoint-dir", metavar="DIR",
        help="default <run dir>/checkpoints; shared storage on a cluster")
    opt("every", "--checkpoint-every", type=int, metavar="N", help="also checkpoint every N steps (0: epoch ends only)")
    opt("resume", action="store_true", help="resume from the newest checkpoint in --checkpoint-dir")
    opt("max_restarts", type=int, metavar="N", help="re-run from the newest checkpoint after a failure")


def add_spark_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("spark")
    opt = lambda name, *flags, **kw: cli.option(g, "spark", SparkConfig, name, *flags, **kw)  # noqa: E731
    opt("num_processes", type=int, metavar="N", help="DDP processes")
    opt("distributed", action="store_true",
        help="run the processes as Spark barrier tasks on executors (default: local_mode on the driver)")
    opt("gpu", action="store_true", help="one GPU per process (NCCL), pinned memory; loads spark_conf/rapids.conf")
    opt("master", help="Spark master URL (default from spark_conf/spark-defaults.conf: local[N])")
    opt("conf", "--spark-conf", action="append", metavar="KEY=VALUE", help="Spark setting override; repeatable")
    opt("collective_timeout_s", "--collective-timeout", type=float, metavar="S",
        help="a rank gives up on a collective (e.g. a dead peer) after this many seconds")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddp-kbit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=MODES, default="train",
                   help="train (default): stream, train, evaluate, report; publish: only publish the dataset's "
                        "train/test topics when their manifests are missing")
    add_data_args(p)
    add_train_args(p)
    add_spark_args(p)
    cli.add_kafka_args(p)
    cli.add_general_args(p)
    return p


def summarize(report: dict) -> str:
    if report["mode"] != "train":
        return f"topics: {report['topics']}"
    last, final = report["epochs"][-1] if report["epochs"] else {}, report["final"]
    return (f"trained {len(report['epochs'])} epoch(s) on {report['world_size']} process(es): test accuracy "
            f"{final['test_accuracy']:.4f}, test loss {final['test_loss']:.4f}; last epoch "
            f"{last.get('samples_per_s', 0):,.0f} samples/s, data wait {100 * last.get('data_wait_fraction', 0):.1f}%; "
            f"model {final['model']}")


def run(args: argparse.Namespace, job: JobConfig, run_dir: Path) -> dict:
    from ddp_kbit.launch import driver, spark

    with cli.kafka_session(job.kafka, run_dir) as kcfg:
        if args.mode == "publish":
            return driver.run_publish(job, kcfg)
        try:
            return driver.run_training(job, kcfg, run_dir)
        finally:
            spark.stop_session()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    job, _ = cli.config_group(JobConfig, args)
    logs.configure(job.general.log_level, secrets=job.kafka.secrets)
    run_dir = make_run_dir(job.general.run_dir)
    report = run(args, job, run_dir)
    report.setdefault("config", {"kafka": as_dict(job.kafka), "data": as_dict(job.data)})
    path = write_json(job.general.report or run_dir / "report.json", report)
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
