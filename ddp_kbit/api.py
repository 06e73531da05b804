"""The Python API: what ``ddp-kbit`` does, callable from Python (the CLI is a thin
caller of these). Re-exported by :mod:`ddp_kbit`:

    from ddp_kbit import KafkaDataset, fit, publish

``fit`` and ``publish`` take the same settings as the command line, as keyword
arguments named like the config fields (``epochs=2``, ``train_topic="t"``,
``bootstrap_servers="kafka:9092"``, ``checkpoint_dir=...``), whole sections as dicts
(``train={"lr": 3e-4}``), or a :class:`~ddp_kbit.config.JobConfig`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ddp_kbit.config import (
    JobConfig,
    KafkaConfig,
    PublishConfig,
    PublishJob,
    as_dict,
    build,
    build_group,
    flag_keys,
    sections_of,
)
from ddp_kbit.data.kafka_dataset import KafkaDataset
from ddp_kbit.errors import ConfigError
from ddp_kbit.files import make_run_dir, write_json
from ddp_kbit.kafka.broker import reachable
from ddp_kbit.reports import DescribeReport, InspectReport, PublishReport, Report, TrainReport
from ddp_kbit.train.spec import check_local_inputs

# where a field name found in several sections goes (the study's own keys need experiment={...})
SEARCH = ("general", "kafka", "data", "train", "checkpoint", "spark", "source", "follow")


def job_from(config: JobConfig | None = None, **fields: Any) -> JobConfig:
    """A JobConfig from ``config`` (default: the defaults) with ``fields`` on top,
    validated like the command line's flags (one ConfigError naming the field).
    A keyword is a field's name (``epochs``), its flag's (``checkpoint_dir`` for
    ``--checkpoint-dir``), or a whole section as a dict (``train={"lr": 3e-4}``)."""
    base = {name: dataclasses.asdict(getattr(config or JobConfig(), name)) for name in sections_of(JobConfig)}
    parts, by_flag = sections_of(JobConfig), flag_keys(JobConfig)
    names = {s: {f.name for f in dataclasses.fields(parts[s])} for s in parts}
    over: dict[str, dict] = {}
    for key, value in fields.items():
        if key in parts and (isinstance(value, dict) or not any(key in names[s] for s in SEARCH)):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}= takes a dict of [{key}] settings; got {type(value).__name__}")
            over.setdefault(key, {}).update(value)
            continue
        section = next((s for s in SEARCH if key in names[s]), None)
        name = key
        if section is None and key in by_flag:
            section, name = by_flag[key]
        if section is None:
            known = sorted({n for s in SEARCH for n in names[s]} | set(by_flag))
            raise ConfigError(f"unknown setting {key!r}; known: {', '.join(known)}")
        over.setdefault(section, {})[name] = value
    return build_group(JobConfig, base, over)


def fit(config: JobConfig | None = None, *, model=None, transforms=(), **fields: Any) -> TrainReport:
    """The whole ``--mode train`` path: topics (the embedded broker and the default
    dataset when no ``bootstrap_servers``), TorchDistributor ranks, checkpoints,
    evaluation; returns the report (also written to ``<run dir>/report.json``, with
    ``report.png``).

    ``model``: a built-in name, ``"MODULE:FUNCTION"``, ``"PATH.py:FUNCTION"``, or a
    function ``(shape, num_classes) -> torch.nn.Module`` (it must pickle: defined in
    a module, or in ``__main__``, which cloudpickle sends by value). ``transforms``:
    specs or functions ``(images, labels, train) -> (images, labels)``, after those
    of the config. A Spark session that is already active is used and left running;
    one this call starts is stopped at the end."""
    from ddp_kbit.launch import driver, spark

    if isinstance(model, str):
        fields = {**fields, "model": model}
        model = None
    job = job_from(config, **fields)
    check_local_inputs(job, model, transforms)   # code, files, GPUs, the master, settings: before Kafka
    spark.preflight(job.spark)                          # or Spark is touched
    run_dir = make_run_dir(job.general.run_dir)
    with reachable(job.kafka, run_dir) as kcfg, spark.session_scope():
        report = driver.run_training(job, kcfg, run_dir, model=model, transforms=tuple(transforms))
    return write_report(job, run_dir, report)


def publish_job(job: PublishJob) -> PublishReport:
    """``ddp-kbit publish``: one split to its topic (strict: a topic that holds records
    needs ``force``), a live producer with ``rate``, or without ``split`` both splits,
    each only when its topic has no manifest yet (the demo topics)."""
    from ddp_kbit.data.local_datasets import load_dataset
    from ddp_kbit.data.publish import ensure_published, publish_live
    from ddp_kbit.data.publish import publish as publish_dataset

    pcfg = job.publish
    run_dir = make_run_dir(job.general.run_dir)
    # the dataset is read before any broker is reached or started: a bad file is its own one line
    ds = None if pcfg.split is None else load_dataset(pcfg.dataset, pcfg.split, pcfg.data_dir, pcfg.limit,
                                                      job.synthetic)
    with reachable(job.kafka, run_dir) as kcfg:
        if ds is None:
            found = ensure_published(kcfg, pcfg, synthetic=job.synthetic, progress=job.general.progress)
            results = {split: {"topic": m.topic, "records": m.record_count, "published": True} for split, m in
                       found.items()}
        else:
            run = publish_live(kcfg, pcfg, ds, job.general.progress, stop=stopping()) if pcfg.rate else \
                publish_dataset(kcfg, pcfg, ds, job.general.progress)
            results = {pcfg.split: run.summary() if run.manifest is not None else
                       {"topic": run.topic, "records": run.records, "manifest": None}}
    report = PublishReport(as_dict(job.kafka), as_dict(pcfg), results,
                           results[pcfg.split] if pcfg.split is not None else None)
    path = write_json(job.general.report or run_dir / "publish.json", report.to_dict())
    return dataclasses.replace(report, report_path=str(path))


def stopping():
    """SIGTERM ends a live producer between records (what was sent is flushed)."""
    import signal
    import threading

    flag = {"stop": False}
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: flag.update(stop=True))
    return lambda: flag["stop"]


def run_mode(mode: str, job: JobConfig, command: str = "") -> Report:
    """The other modes of ``ddp-kbit``: ``publish`` (the default topics), ``experiment``
    (a study), ``describe`` (a foreign topic's manifest), ``inspect`` (a look at a
    topic), ``evaluate`` (a saved model on a test topic)."""
    from ddp_kbit.launch import spark

    check_mode(mode, job)
    run_dir = make_run_dir(job.general.run_dir)
    with reachable(job.kafka, run_dir) as kcfg, spark.session_scope():
        if mode == "describe":
            report = describe(job, kcfg)
        elif mode == "inspect":
            from ddp_kbit.data.inspect import inspect_topic

            report = InspectReport(inspect_topic(kcfg, job.inspect.topic, run_dir, job.inspect.limit, job.source))
        elif mode == "evaluate":
            from ddp_kbit.train.evaluate import run_evaluate

            report = run_evaluate(job, kcfg, run_dir, job.evaluate.model_path, job.evaluate.predictions_topic,
                                  job.inspect.limit)
        elif mode == "experiment":
            from ddp_kbit.experiment.runner import run_study

            report = run_study(job, kcfg, run_dir, embedded=not job.kafka.bootstrap_servers, command=command)
        else:
            raise ConfigError(f"unknown mode {mode!r}")
    return write_report(job, run_dir, report)


def check_mode(mode: str, job: JobConfig) -> None:
    """What a mode requires, checked before Kafka or Spark is touched."""
    if mode in ("describe", "inspect") and not job.inspect.topic:
        raise ConfigError(f"{mode} needs --topic T")
    if mode == "evaluate":
        if not (job.data.test_topic or job.inspect.topic):
            raise ConfigError("evaluate needs --test-topic T (or --topic T)")
        if not job.evaluate.model_path:
            raise ConfigError("evaluate needs --model-path (a run's model.pt, or a checkpoint)")
        if not Path(job.evaluate.model_path).exists():
            raise ConfigError(f"--model-path {job.evaluate.model_path} does not exist")


def describe(job: JobConfig, kcfg: KafkaConfig) -> DescribeReport:
    from ddp_kbit.data.describe import describe as describe_topic

    _, findings = describe_topic(kcfg, job.inspect.topic, job.source, scan=job.inspect.scan,
                                 limit=job.inspect.limit or 1000)
    return DescribeReport(findings)


def publish(dataset: str = "fashion-mnist", *, bootstrap_servers: str | None = None, kafka: KafkaConfig | None = None,
            progress: bool = False, **fields: Any) -> dict:
    """Publish a dataset split to a topic in a v1 wire format, then its manifest
    (``producers.publish`` from Python). ``fields``: :class:`PublishConfig`'s
    (``split``, ``format``, ``layout``, ``topic``, ``partitions``, ``compression``,
    ``limit``, ``force``, ``data_dir``). Returns the publish summary."""
    from ddp_kbit.data.local_datasets import load_dataset
    from ddp_kbit.data.publish import publish as publish_dataset

    fields.setdefault("split", "train")
    kcfg = kafka or KafkaConfig()
    if bootstrap_servers:
        kcfg = kcfg.with_servers(bootstrap_servers)
    if not kcfg.bootstrap_servers:
        raise ConfigError("publish needs bootstrap_servers: an embedded broker would be gone when the call returns")
    pcfg = build(PublishConfig, {}, {"dataset": dataset, **fields}, where="publish")
    ds = load_dataset(pcfg.dataset, pcfg.split, pcfg.data_dir, pcfg.limit)
    return publish_dataset(kcfg, pcfg, ds, progress).summary()


def write_report(job: JobConfig, run_dir: Path, report: Report) -> Report:
    """The report as ``report.json`` (``--report``), and ``report.png`` of a training run."""
    if getattr(report, "config", "") is None:
        report = dataclasses.replace(report, config={"kafka": as_dict(job.kafka), "data": as_dict(job.data)})
    path = write_json(job.general.report or run_dir / "report.json", report.to_dict())
    report = dataclasses.replace(report, report_path=str(path))
    if isinstance(report, TrainReport) and report.windows:
        from ddp_kbit.plots import plot_windows

        plot_windows(report.to_dict(), path.with_suffix(".png"))
    elif isinstance(report, TrainReport) and report.epochs:
        from ddp_kbit.plots import plot_training

        plot_training(report.to_dict(), path.with_suffix(".png"))
    return report


__all__ = ["KafkaDataset", "fit", "job_from", "publish"]
