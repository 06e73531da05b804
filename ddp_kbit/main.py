"""ddp-kbit: train PyTorch DDP workers, launched by Spark, straight from Kafka.

    ddp-kbit train                      # embedded broker + Fashion-MNIST, 5 epochs
    ddp-kbit train --distributed        # ranks as Spark barrier tasks
    ddp-kbit experiment --iterations 10 # which wire format costs what
    ddp-kbit publish --split test       # a dataset to a topic, with its manifest
    ddp-kbit describe --topic T ...     # a topic we did not write -> its manifest
    ddp-kbit inspect --topic T          # a look at a topic
    ddp-kbit evaluate --model-path runs/x/model.pt --test-topic T
    ddp-kbit broker                     # the embedded broker on its own: prints its address

``python -m ddp_kbit.main --mode train [--distributed]`` (and every ``--mode``) works
as before: ``--mode X`` is the command X. ``spark-submit ddp_kbit/main.py --mode train
--distributed --bootstrap-servers kafka:9092`` on a cluster.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file (spark-submit ddp_kbit/main.py): Python put this folder first on
    # sys.path, where ddp_kbit/kafka would shadow the kafka-python package. Put the
    # folder that holds the package there instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from ddp_kbit import __version__, cli, logs  # noqa: E402
from ddp_kbit.config import (  # noqa: E402
    BrokerJob,
    ExperimentConfig,
    JobConfig,
    PublishJob,
    flag_of,
    flags_of,
    sections_of,
)
from ddp_kbit.errors import EXIT_INTERRUPTED, ConfigError, UserError  # noqa: E402


@dataclass(frozen=True)
class Command:
    """A subcommand: what it does, its config (sections, or (section, fields) for part of one)."""

    help: str
    config: type
    sections: tuple


# the training recipe of the study's train workload (its epochs are --study-epochs)
RECIPE = ("model", "batch_size", "eval_batch_size", "lr", "optimizer", "momentum", "weight_decay", "lr_schedule",
          "amp", "grad_accum", "seed", "label_smoothing", "augment", "transforms")
# the study's Spark settings (its process counts are --study-processes)
STUDY_SPARK = ("master", "distributed", "gpu", "rapids", "conf", "conf_dir", "collective_timeout_s",
               "launch_timeout_s", "ship_package", "secret_file")
COMMANDS = {
    "train": Command("stream, train, evaluate and report (the default command)", JobConfig,
                     ("general", "kafka", "data", "source", "train", "follow", "checkpoint", "metrics", "spark")),
    "experiment": Command("a study of what each wire format (layout, compression, client, shuffle, process count) "
                          "costs, with statistics and plots", JobConfig,
                          ("general", "kafka", "experiment", "data", ("train", RECIPE), ("spark", STUDY_SPARK))),
    "publish": Command("publish a dataset split to a topic, then its manifest (without --split: both splits, each "
                       "when its topic has no manifest yet)", PublishJob, ("general", "kafka", "publish", "synthetic")),
    "describe": Command("read a topic we did not write (--topic and the [source] flags), infer its sample type and "
                        "classes, report bad records, and write its manifest", JobConfig,
                        ("general", "kafka", "source", ("inspect", ("topic", "limit", "scan")))),
    "inspect": Command("a look at --topic: records per partition, labels, bad records, bytes, a PNG grid, "
                       "sample_batch.pt", JobConfig, ("general", "kafka", "source", ("inspect", ("topic", "limit")))),
    "evaluate": Command("a saved model (--model-path) on a test topic: accuracy, per-class precision and recall, a "
                        "confusion matrix, --predictions-topic", JobConfig,
                        ("general", "kafka", "evaluate", ("data", ("test_topic", "max_bad_fraction", "prefetch")),
                         ("train", ("model", "transforms", "eval_batch_size")), "source",
                         ("inspect", ("topic", "limit")))),
    "broker": Command("start the embedded broker and print its address; it runs until Ctrl-C or SIGTERM",
                      BrokerJob, ("general", "broker")),
}


def command_parser(name: str, prog: str | None = None) -> cli.Parser:
    """The parser of one command: only its sections' flags. ``prog``: the whole command
    a user types when it is not ``ddp-kbit NAME`` (``python -m producers.publish``)."""
    cmd = COMMANDS[name]
    p = cli.Parser(prog=prog or f"ddp-kbit {name}", usage="%(prog)s [flags]", description=cmd.help,
                   elsewhere=_elsewhere(name))
    sections = [s if isinstance(s, str) else s[0] for s in cmd.sections]
    cli.add_config_file(p, sections)
    only = {s[0]: set(s[1]) for s in cmd.sections if not isinstance(s, str)}
    cli.add_sections(p, cmd.config, sections, only)
    if name == "experiment":
        from ddp_kbit.experiment import presets

        p.epilog = f"presets (experiments/<name>.toml): {', '.join(presets.available()) or 'none found'}"
    return p


def _elsewhere(name: str) -> dict[str, list[str]]:
    """Flags of the other commands that this one lacks (for "belongs to ...")."""
    mine = set(_flags(name))
    out: dict[str, list[str]] = {}
    for other in COMMANDS:
        if other != name:
            for flag in _flags(other) - mine:
                out.setdefault(flag, []).append(f"`ddp-kbit {other}`")
    return out


def _flags(name: str) -> set[str]:
    cmd = COMMANDS[name]
    parts = sections_of(cmd.config)
    out = set()
    for s in cmd.sections:
        section, only = (s, None) if isinstance(s, str) else s
        out |= {flag_of(f) for f in flags_of(parts[section]) if only is None or f.name in only}
    return out


def top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddp-kbit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"ddp-kbit {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        sub.add_parser(name, help=cmd.help, add_help=False)
    return p


def split_command(argv: list[str]) -> tuple[str | None, list[str]]:
    """(command, its arguments): ``ddp-kbit COMMAND ...``, or the legacy ``--mode COMMAND``
    anywhere; None when neither is given (train, unless only help or the version is asked)."""
    rest, mode, i = [], None, 0
    while i < len(argv):          # every --mode is taken out; the last one wins, as flags do
        a = argv[i]
        if a == "--mode" and i + 1 < len(argv):
            mode, i = argv[i + 1], i + 2
            continue
        if a.startswith("--mode="):
            mode = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    argv = rest
    first = argv[0] if argv and not argv[0].startswith("-") else None
    if first is not None and mode is not None and first != mode:
        raise ConfigError(f"give a command or --mode, not both ({first} and --mode {mode})")
    if first is not None:
        argv = argv[1:]
    name = first or mode
    if name is not None and name not in COMMANDS:
        known = ", ".join(COMMANDS)
        raise ConfigError(f"unknown command {name!r}; commands: {known}"
                          if mode is None else f"--mode must be one of {known}; got {name!r}")
    return name, argv


def job_config(name: str, args: argparse.Namespace):
    """Defaults < (experiment: preset <) config file < flags. The study's own settings
    have their own keys (``[experiment]``, ``--study-*``)."""
    cmd = COMMANDS[name]
    if name != "experiment":
        return cli.config_group(cmd.config, args)
    from ddp_kbit.config import load_config_file
    from ddp_kbit.experiment import presets

    file_cfg = load_config_file(args.config, sections_of(JobConfig))
    preset = cli.overrides(args).get("experiment", {}).get("preset") or \
        file_cfg.get("experiment", {}).get("preset") or ExperimentConfig.preset
    return cli.config_group(JobConfig, args, base={"experiment": presets.load(preset)})


def parse(argv: list[str]) -> tuple[str, argparse.Namespace, object]:
    """The command, its flags, and its config; ``--help``/``--version`` exit here."""
    name, rest = split_command(argv)
    if name is None and (not rest or rest[0] in ("-h", "--help", "--version")) and rest:
        top_parser().parse_args(rest)   # prints the commands, or the version, and exits
    name = name or "train"
    args = command_parser(name).parse_args(rest)
    return name, args, job_config(name, args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name, args, job = parse(argv)
    secrets = tuple(s for part in ("kafka", "source") if hasattr(job, part) for s in getattr(job, part).secrets)
    logs.configure(job.general.log_level, secrets=secrets)
    if name == "broker":
        return serve_broker(job)
    report = run(name, job, argv)
    print(report.summary())
    print(f"report: {report['report_path']}")
    stopped = report.get("stopped")
    if stopped:
        print(f"ddp-kbit: {stop_line(stopped, report)}", file=sys.stderr)
    return EXIT_INTERRUPTED if (stopped or {}).get("by") == "SIGINT" else 0


def run(name: str, job, argv: list[str]):
    """Dispatch to the Python API (the CLI is one of its callers)."""
    from ddp_kbit import api

    if name == "train":
        return api.fit(job)
    if name == "publish":
        return api.publish_job(job)
    return api.run_mode(name, job, command=" ".join(["ddp-kbit", *argv]))


def serve_broker(job) -> int:
    """The embedded broker until Ctrl-C or SIGTERM; its address first, flushed, so a
    script can read it (``KAFKA=$(ddp-kbit broker | head -1)`` in another shell)."""
    import signal
    import threading

    from ddp_kbit.files import make_run_dir
    from ddp_kbit.kafka.broker import EmbeddedBroker

    run_dir = make_run_dir(job.general.run_dir)
    done = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: done.set())
    with EmbeddedBroker(run_dir, host=job.broker.host, port=job.broker.port) as broker:
        print(broker.bootstrap_servers, flush=True)
        print(f"ddp-kbit: embedded broker on {broker.bootstrap_servers} (memory only; log {run_dir}/broker.log); "
              "Ctrl-C stops it", file=sys.stderr, flush=True)
        while not done.wait(0.5):
            if broker.proc is None or broker.proc.poll() is not None:
                raise UserError(f"the embedded broker exited (see {run_dir}/broker.log)")
    return 0


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
