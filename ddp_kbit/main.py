"""ddp_kbit: train PyTorch DDP workers, launched by Spark, straight from Kafka.

    python -m ddp_kbit.main --mode train                  # embedded broker + Fashion-MNIST
    python -m ddp_kbit.main --mode train --distributed    # ranks as Spark barrier tasks
    spark-submit ddp_kbit/main.py --mode train --distributed --bootstrap-servers kafka:9092
    python -m ddp_kbit.main --mode publish                # only make sure the topics exist
    python -m ddp_kbit.main --mode experiment --iterations 10   # which wire format costs what
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
    CLIENTS,
    COMPRESSIONS,
    FOREIGN_SHAPES,
    MODELS,
    OPTIMIZERS,
    SCHEDULES,
    SHUFFLES,
    WORKLOADS,
    CheckpointConfig,
    DataConfig,
    EvaluateConfig,
    ExperimentConfig,
    FollowConfig,
    InspectConfig,
    JobConfig,
    MetricsConfig,
    SourceConfig,
    SparkConfig,
    TrainConfig,
    build_group,
    load_config_file,
    sections_of,
)
from ddp_kbit.errors import EXIT_INTERRUPTED  # noqa: E402
from ddp_kbit.experiment import presets  # noqa: E402
from ddp_kbit.wire.sample import FORMATS, LAYOUTS  # noqa: E402

MODES = ("train", "publish", "experiment", "describe", "inspect", "evaluate")


def names(allowed):
    """argparse type: a comma-separated list of names, each one of ``allowed``."""
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [x for x in items if x not in allowed]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"{', '.join(bad) or 'nothing'} not in {', '.join(allowed)}")
        return items
    return parse


def counts(text: str) -> tuple[int, ...]:
    """argparse type: one positive integer, or several separated by commas."""
    try:
        items = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,M,...; got {text!r}") from None
    if not items or min(items) < 1:
        raise argparse.ArgumentTypeError(f"process counts must be >= 1; got {text!r}")
    return items


def add_data_args(p: argparse.ArgumentParser) -> None:
    opt = cli.options(p, "data", "data", DataConfig)
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
    opt("shuffle", choices=SHUFFLES, help="window: each epoch, chunks of every partition are dealt to the ranks in a "
        "seeded order and a window of records is permuted into batches (training quality does not depend on the "
        "order producers wrote); none: batches of neighbouring offsets, for comparison")
    opt("shuffle_chunk", type=int, metavar="N", help="offsets per chunk: one seek and one contiguous read each")
    opt("shuffle_window", type=int, metavar="N", help="records read, decoded and permuted together per rank")
    opt("dlq_max_bytes", type=int, metavar="N", help="a bad record larger than this goes to the dead-letter topic "
        "without its value (a header says why), so a huge record cannot stop training")
    opt("allow_missing_records", action="store_true",
        help="when retention deleted records a manifest covers, train on the rest (counted in the report) "
             "instead of stopping")


def shape_arg(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be H,W or H,W,C integers, e.g. 28,28; got {text!r}") from None


def add_source_args(p: argparse.ArgumentParser) -> None:
    opt = cli.options(p, "topics we did not write ([source]; --mode describe writes a manifest from these)",
                      "source", SourceConfig)
    opt("value_format", choices=FORMATS, help="the values' format (without it, topics follow wire contract v1)")
    opt("value_schema", metavar="FILE", help="Avro .avsc or Protobuf .proto of the values (with a registry: the "
        "reader schema)")
    opt("value_message", metavar="NAME", help="the Protobuf message in --value-schema")
    opt("image_field", metavar="PATH", help="where the image is: bytes, base64 text, a flat or nested list "
        "(a dotted path reaches into nested records, e.g. features.pixels)")
    opt("label_field", metavar="PATH", help="where the label is: an int, or a string of --classes")
    opt("shape", type=shape_arg, metavar="H,W[,C]", help="image shape (inferred by describe when it can be)")
    opt("dtype", choices=("uint8", "float32"), help="image type (inferred by describe)")
    opt("num_classes", type=int, metavar="K", help="class count (inferred by describe)")
    opt("classes", type=lambda t: tuple(c.strip() for c in t.split(",")), metavar="A,B,...",
        help="class names, in class-index order, for string labels")
    opt("framing", choices=("none", "confluent"), help="confluent: Schema Registry wire format (magic byte, schema "
        "id, for Protobuf message indexes) before each value")
    opt("schema_registry", metavar="URL", help="Schema Registry that resolves the framing's schema ids")
    opt("registry_user", metavar="USER", help="Schema Registry basic-auth user")
    opt("registry_password", metavar="PASSWORD", help="Schema Registry basic-auth password (never logged)")
    opt = cli.options(p, "reading a topic (--mode describe, --mode inspect)", "inspect", InspectConfig)
    opt("topic", help="the topic to describe or inspect")
    opt("limit", type=int, metavar="N", help="records to read (describe: a sample of 1000 by default; inspect: all)")
    opt("scan", action="store_true", help="describe: read every record, not a sample")
    opt = cli.options(p, "evaluating a saved model (--mode evaluate)", "evaluate", EvaluateConfig)
    opt("model_path", metavar="PATH", help="a run's model.pt (with --model for its spec) or a checkpoint")
    opt("predictions_topic", metavar="TOPIC", help="one record per input: its key; JSON index, label, prediction, "
        "probabilities; headers naming the model and the source record (exactly once, across reruns)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    opt = cli.options(p, "training", "train", TrainConfig)
    opt("model", metavar="NAME|MODULE:FUNCTION|PATH.py:FUNCTION",
        help=f"network: built-in {', '.join(MODELS)}, or your own FUNCTION(shape, num_classes) -> torch.nn.Module "
             "(a file is sent with the run, so executors need not have it); sized from the manifest")
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
    opt("seed", type=int, help="model init, shuffle and augmentation seed")
    opt("label_smoothing", type=float, metavar="F", help="label smoothing of the cross-entropy loss")
    opt("augment", action="store_true", help="built-in augmentation of image batches on the device: random crop "
        "after 2-pixel padding and horizontal flip (training only)")
    opt("transforms", "--transform", action="append", metavar="MODULE:FUNCTION|PATH.py:FUNCTION",
        help="batch transform FUNCTION(images, labels, train) -> (images, labels) on the device after the uint8 -> "
             "float scaling (train=False in evaluation; a 'generator' keyword gets a seeded torch.Generator); "
             "repeatable, applied in order")
    opt("handlers", "--handler", action="append", metavar="MODULE:FUNCTION|PATH.py:FUNCTION",
        help="extra ignite handler, called as FUNCTION(trainer, context) on every rank each epoch; repeatable")
    opt = cli.options(p, "checkpoints and failures", "checkpoint", CheckpointConfig)
    opt("dir", "--checkpoint-dir", metavar="DIR",
        help="default <run dir>/checkpoints; shared storage on a cluster")
    opt("every", "--checkpoint-every", type=int, metavar="N", help="also checkpoint every N steps (0: epoch ends only)")
    opt("resume", action="store_true", help="resume from the newest checkpoint in --checkpoint-dir")
    opt("max_restarts", type=int, metavar="N", help="re-run from the newest checkpoint after a failure")


def add_follow_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("continuous training (--follow; [follow])")
    cli.option(g, "train", TrainConfig, "follow", action="store_true",
               help="keep training on new records as they arrive, in windows planned like epochs (each record once); "
                    "stops at --max-windows, --until-idle, SIGTERM or Ctrl-C, after a checkpoint and a snapshot")
    opt = lambda name, *flags, **kw: cli.option(g, "follow", FollowConfig, name, *flags, **kw)  # noqa: E731
    opt("start_at", metavar="WHEN", help="earliest (what is there, then new records), latest (only new ones), "
        "manifest (after the manifest's snapshot), or an ISO 8601 time (offsets_for_times)")
    opt("window_records", type=int, metavar="N", help="a window closes at N new records...")
    opt("window_seconds", type=float, metavar="S", help="...or S seconds after it opened, with at least one record")
    opt("until_idle_s", "--until-idle", type=float, metavar="S", help="stop after S seconds without new records "
        "(what arrived since the last window is trained first)")
    opt("max_windows", type=int, metavar="N", help="stop after N windows")
    opt("replay_fraction", type=float, metavar="F", help="mix F x the window's size of older records into each "
        "window (rehearsal against forgetting; counted apart from new records)")
    opt("publish_model", metavar="DIR", help="after each window: DIR/model-<window>.pt and DIR/latest.json (atomic)")
    opt("model_topic", metavar="TOPIC", help="also a small record on TOPIC pointing at each snapshot")
    opt("publish_tolerance", type=float, metavar="F", help="publish only when the window's accuracy is at most F "
        "below the last published one")
    opt("prequential", "--no-prequential", action="store_false",
        help="do not score each batch before its step (prequential, test-then-train accuracy)")


def add_metrics_args(p: argparse.ArgumentParser) -> None:
    opt = cli.options(p, "operating a run ([metrics])", "metrics", MetricsConfig)
    opt("port", "--metrics-port", type=int, metavar="P", help="serve Prometheus metrics: the driver's /metrics on P "
        "gathers every rank's (rank r also serves its own on P+1+r); off by default")
    opt("commit_group", metavar="GROUP", help="after each checkpoint, commit the trained offsets to this consumer "
        "group so lag tools see the run (default ddp_kbit.<train topic>; none: off); never read back: checkpoints "
        "are the source of truth")


def add_spark_args(p: argparse.ArgumentParser) -> None:
    opt = cli.options(p, "spark", "spark", SparkConfig)
    opt("num_processes", type=int, metavar="N", help="DDP processes (--mode experiment: see --study-processes)")
    opt("distributed", action="store_true",
        help="run the processes as Spark barrier tasks on executors (default: local_mode on the driver)")
    opt("gpu", action="store_true", help="one GPU per process (NCCL), pinned memory; loads spark_conf/gpu.conf "
        "(GPU scheduling: one GPU address per rank). A rank that sees no CUDA device is an error, never a silent CPU run")
    opt("rapids", action="store_true", help="also load spark_conf/rapids.conf: the RAPIDS Accelerator for the Spark "
        "SQL side of a pipeline (not the torch ranks); needs the rapids-4-spark jar on Spark's classpath")
    opt("conf_dir", "--spark-conf-dir", metavar="DIR", help="read spark-defaults.conf, gpu.conf and rapids.conf from "
        "DIR instead of the shipped ones")
    opt("master", help="Spark master URL (default from spark_conf/spark-defaults.conf: local[N])")
    opt("conf", "--spark-conf", action="append", metavar="KEY=VALUE", help="Spark setting override; repeatable")
    opt("collective_timeout_s", "--collective-timeout", type=float, metavar="S",
        help="a rank gives up on a collective (e.g. a dead peer) after this many seconds")
    opt("launch_timeout_s", "--launch-timeout", type=float, metavar="S",
        help="--distributed: fail, naming the slots requested and available, when the cluster cannot run "
             "every rank at once within this many seconds")
    opt("ship_package", "--ship-package", action="store_true",
        help="send this package (a zip) with each launch, for executors whose Python does not have ddp_kbit")
    opt("secret_file", "--spark-secret-file", metavar="FILE",
        help="a file holding the RPC authentication secret of a standalone cluster (spark.authenticate); "
             "`python -m ddp_kbit.main_cluster up` writes one, and a run against the master it recorded uses it "
             "without this flag")


def add_experiment_args(p: argparse.ArgumentParser) -> None:
    opt = cli.options(p, "experiment (--mode experiment; a preset sets these, flags override it)", "experiment", ExperimentConfig)
    found = presets.available()
    opt("preset", metavar="NAME|FILE", help=f"study preset: {', '.join(found) or 'none found'} "
        f"(experiments/<name>.toml), or a .toml file of your own")
    opt("formats", type=names(FORMATS + FOREIGN_SHAPES), metavar="F[,F...]",
        help=f"wire formats ({', '.join(FORMATS)}), and topics we did not write ({', '.join(FOREIGN_SHAPES)})")
    opt("shuffles", type=names(SHUFFLES), metavar="S[,S...]", help="the stream's plans to compare (window, none)")
    opt("layouts", type=names(LAYOUTS), metavar="L[,L...]", help="pixel layouts (bytes, list)")
    opt("compressions", type=names(COMPRESSIONS), metavar="C[,C...]",
        help=f"producer compressions ({', '.join(COMPRESSIONS)})")
    opt("clients", type=names(CLIENTS), metavar="C[,C...]", help=f"Kafka clients ({', '.join(CLIENTS)})")
    opt("workloads", type=names(WORKLOADS), metavar="W[,W...]",
        help="publish (the publisher, in the driver), ingest (the stream into batches, in the ranks), "
             "train (the real training path); raw and memory baselines are added")
    opt("iterations", type=int, metavar="N", help="measured iterations per condition, interleaved round-robin")
    opt("warmup", type=int, metavar="N", help="extra iterations first, recorded as warmup and left out of the statistics")
    opt("limit", "--study-limit", type=int, metavar="N", help="records per topic (default the whole split)")
    opt("num_processes", "--study-processes", type=counts, metavar="N[,M...]",
        help="process counts the study measures, one launch each")
    opt("epochs", "--study-epochs", type=int, metavar="N", help="epochs of the study's train workload")
    opt("passes", type=int, metavar="N", help="reads of the whole topic per ingest measurement, a consumer each "
        "(more records per measurement, less noise)")
    opt("output_dir", metavar="DIR", help="where results.csv, summary.csv, results.json, plots and report.md go "
        "(default <run dir>/experiment)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddp-kbit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=MODES, default="train",
                   help="train (default): stream, train, evaluate, report; publish: only publish the dataset's "
                        "train/test topics when their manifests are missing; experiment: a study of what each "
                        "wire format (layout, compression, client, process count) costs, with statistics and plots; "
                        "describe: read a topic we did not write (--topic and the [source] flags), infer its sample "
                        "type and classes, report bad records, and write its manifest; inspect: a look at --topic "
                        "(records per partition, labels, bad records, bytes, a PNG grid, sample_batch.pt); "
                        "evaluate: --model-path on --test-topic (accuracy, per-class precision/recall, a confusion "
                        "matrix, --predictions-topic)")
    add_data_args(p)
    add_train_args(p)
    add_follow_args(p)
    add_metrics_args(p)
    add_spark_args(p)
    add_experiment_args(p)
    add_source_args(p)
    cli.add_kafka_args(p)
    cli.add_general_args(p)
    return p


def job_config(args: argparse.Namespace) -> JobConfig:
    """Defaults < (experiment: preset <) config file < flags. The study's own
    settings have their own keys (``[experiment]``, ``--study-*``)."""
    file_cfg = load_config_file(args.config, sections_of(JobConfig))
    over = cli.overrides(args)
    if args.mode == "experiment":
        study = over.get("experiment", {})
        preset = study.get("preset") or file_cfg.get("experiment", {}).get("preset") or ExperimentConfig.preset
        file_cfg = {**file_cfg, "experiment": {**presets.load(preset), **file_cfg.get("experiment", {})}}
    return build_group(JobConfig, file_cfg, over)


def summarize(report: dict) -> str:
    if report["mode"] == "experiment":
        failed = f"; {report['failed']} failed (see results.csv)" if report["failed"] else ""
        return "\n".join([report["table"], "", *report["verdicts"], "",
                          f"{report['rows']} measurements{failed}; study: {report['files']['report_md']}"])
    if report["mode"] == "inspect":
        return "\n".join(report["findings"]["summary"])
    if report["mode"] == "evaluate":
        pred = report["predictions"]
        return (f"{report['topic']}: test accuracy {report['test_accuracy']:.4f}, test loss {report['test_loss']:.4f} "
                f"on {report['records']} records; confusion matrix {report['confusion_png']}"
                + (f"; {pred['written']} predictions written to {pred['topic']} ({pred['already_there']} already "
                   "there)" if pred else ""))
    if report["mode"] == "describe":
        f = report["findings"]
        bad = ", ".join(f"{n} {r}" for r, n in f["bad"].items()) or "none"
        return (f"{f['topic']}: {f['good']} of {f['records_read']} records read are {f['shape']} {f['dtype']} "
                f"samples of {f['num_classes']} classes; bad: {bad}; manifest "
                f"{'written' if f['manifest_written'] else 'not written'}")
    if report["mode"] != "train":
        return f"topics: {report['topics']}"
    if "windows" in report:
        w = report["windows"]
        last = w[-1] if w else {}
        behind = (last.get("lag") or {}).get("records_behind_at_end")
        stopped = report["spark"].get("stopped_by")
        return (f"followed {report['config']['data'].get('train_topic')} for {len(w)} window(s) on "
                f"{report['world_size']} process(es): {sum(x['new_records'] for x in w)} new records trained once "
                f"each{', stopped by ' + stopped if stopped else ''}; last window "
                f"{last.get('samples_per_s', 0):,.0f} samples/s, prequential accuracy "
                f"{last.get('prequential_accuracy') or 0:.4f}, records behind {behind}")
    last, final = report["epochs"][-1] if report["epochs"] else {}, report["final"]
    return (f"trained {len(report['epochs'])} epoch(s) on {report['world_size']} process(es): test accuracy "
            f"{final['test_accuracy']:.4f}, test loss {final['test_loss']:.4f}; last epoch "
            f"{last.get('samples_per_s', 0):,.0f} samples/s, data wait {100 * last.get('data_wait_fraction', 0):.1f}%; "
            f"model {final['model']}")


def run(args: argparse.Namespace, job: JobConfig, argv: list[str]) -> dict:
    """Dispatch to the Python API (the CLI is one of its callers)."""
    from ddp_kbit import api

    if args.mode == "train":
        return api.fit(job)
    command = " ".join(["python -m ddp_kbit.main", *argv])
    return api.run_mode(args.mode, job, command=command)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    job = job_config(args)
    logs.configure(job.general.log_level, secrets=job.kafka.secrets + job.source.secrets)
    report = run(args, job, argv)
    print(summarize(report))
    print(f"report: {report['report_path']}")
    stopped = report.get("stopped")
    if stopped:
        print(f"ddp-kbit: {stop_line(stopped, report)}", file=sys.stderr)
    return EXIT_INTERRUPTED if (stopped or {}).get("by") == "SIGINT" else 0


def stop_line(stopped: dict, report: dict) -> str:
    """Where a graceful stop left the run, and the command's flags that go on from there."""
    unit = "window" if "window" in stopped else "epoch"
    where = f"after {unit} {stopped[unit]}" if stopped.get("step") is None else \
        f"after step {stopped['step']} of {unit} {stopped[unit]}"
    given = report.get("config", {}).get("checkpoint", {}).get("dir")
    ckpt = stopped.get("checkpoint")
    resume = "--resume" if given or not ckpt else f"--resume --checkpoint-dir {Path(ckpt).parent}"
    return f"stopped by {stopped['by']} {where}; `{resume}` continues"


def cli_entry() -> None:
    sys.exit(cli.run_main(main))


if __name__ == "__main__":
    cli_entry()
