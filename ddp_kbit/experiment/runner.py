"""A study from start to end: topics, interleaved rounds of measurements, then
statistics, plots and the report.

Iterations are interleaved round-robin across conditions (A it1, B it1, ...,
A it2, ...), so drift and background load hit every condition alike. ``publish``
rounds run in the driver; the rank-side rounds (``ingest``, ``train`` and their
baselines) run inside one TorchDistributor launch per process count (one launch
per round when the study compares process counts, so those interleave too).
Every measurement is appended to ``results.csv`` at once; a failed one is recorded
with its error and the study goes on.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from ddp_kbit import kafka
from ddp_kbit.config import FOREIGN_SHAPES, ExperimentConfig, JobConfig, KafkaConfig, PublishConfig
from ddp_kbit.data import manifest
from ddp_kbit.data.local_datasets import load_dataset
from ddp_kbit.data.publish import produce_all, publish
from ddp_kbit.errors import first_line
from ddp_kbit.experiment import grid, measure, report, results, shapes, stats
from ddp_kbit.experiment.grid import RANK_SIDE, RAW, Condition
from ddp_kbit.files import write_json
from ddp_kbit.launch import spark
from ddp_kbit.progress import Progress
from ddp_kbit.reports import ExperimentReport
from ddp_kbit.train import dist
from ddp_kbit.train.rank import start_rank
from ddp_kbit.wire.foreign import FOREIGN

log = logging.getLogger("ddp_kbit.experiment")


@dataclass(frozen=True)
class RankTask:
    """One launch's work, sent to every rank."""

    side: measure.RankSide
    conditions: tuple[Condition, ...]
    rounds: tuple[tuple[int, bool], ...]   # (iteration, warmup)
    results_csv: str
    output_dir: str
    log_level: str


def experiment_fn(task: RankTask) -> None:
    """Each rank's main: measure this launch's conditions round by round; rank 0
    writes a row per condition and iteration, with rates summed over ranks."""
    rank, world, device = start_rank(task.side.use_gpu, task.side.collective_timeout_s, task.log_level,
                                     task.side.kafka.secrets)
    try:
        for iteration, warm in task.rounds:
            for cond in task.conditions:
                where = f"{task.output_dir}/checkpoints/{cond.label.replace(' ', '_')}.it{iteration}"
                try:
                    mine, err = measure.measure_rank(task.side, cond, rank, world, device, where), ""
                except Exception as exc:  # recorded, and the study goes on
                    mine, err = None, error_text(exc)
                parts = dist.gather((mine, err))
                if rank == 0:
                    results.append_row(task.results_csv, cond, iteration, warm, combine(parts))
    finally:
        dist.teardown()


def error_text(exc: Exception) -> str:
    """A failed measurement's ``error`` cell: the exception's type and first line."""
    return f"{type(exc).__name__}: {first_line(exc, 300, '')}"


def combine(parts: list[tuple[dict | None, str]]) -> dict:
    """Every rank's part of one measurement -> the row's values (rates sum over ranks)."""
    errors = [e for _, e in parts if e]
    if errors:
        return {"error": errors[0]}
    mine = [m for m, _ in parts]
    rates = [m["records"] / m["seconds"] if m["seconds"] else 0.0 for m in mine]
    row = {"records": sum(m["records"] for m in mine), "seconds": max(m["seconds"] for m in mine),
           "records_per_s": sum(rates), "rank_records_per_s": ";".join(f"{r:.0f}" for r in rates)}
    if all("bytes" in m for m in mine):
        row["mb_per_s"] = sum(m["bytes"] / m["seconds"] for m in mine if m["seconds"]) / 1e6
        row["bytes_per_record"] = sum(m["bytes"] for m in mine) / max(row["records"], 1)
    for key in ("data_wait_fraction", "test_accuracy"):
        if key in mine[0]:
            row[key] = mine[0][key]
    return row


# ------------------------------------------------------------------ topics
def study_topic(dataset: str, split: str, key: tuple, n: int, partitions: int) -> str:
    fmt, layout, comp = key
    return f"ddp_kbit.experiment.{dataset}.{split}.{fmt}.{layout}.{comp}.n{n}.p{partitions}"


def ensure_topic(kcfg: KafkaConfig, cfg: ExperimentConfig, key: tuple, ds, split: str, known: dict):
    """The topic of (format, layout, compression) holding ``ds``: an existing one whose
    manifest says the same dataset, split, format, layout, compression and size, else
    published now. ``raw`` topics (pixel bytes, no manifest) are reused by name and size."""
    fmt, layout, comp = key
    name = study_topic(ds.name, split, key, len(ds), cfg.partitions)
    if fmt == RAW:
        return ensure_raw_topic(kcfg, name, key, ds, split, cfg.partitions)
    if fmt in FOREIGN_SHAPES:
        return ensure_foreign_topic(kcfg, name, fmt, ds, split, cfg.partitions, comp, known)
    for m in known.values():
        if (m.dataset, m.split, m.format, m.layout, m.compression, m.num_samples, len(m.partitions)) == \
                (ds.name, split, fmt, layout, comp, len(ds), cfg.partitions):
            log.info("reusing %s for %s/%s/%s", m.topic, fmt, layout, comp)
            return m
    log.info("publishing %d %s records to %s", len(ds), fmt, name)
    pcfg = PublishConfig(dataset=ds.name, split=split, format=fmt, layout=layout, topic=name,
                         partitions=cfg.partitions, compression=comp, force=True)
    return publish(kcfg, pcfg, ds, progress=False).manifest


def ensure_foreign_topic(kcfg: KafkaConfig, name: str, shape: str, ds, split: str, partitions: int, comp: str,
                         known: dict):
    """A topic of one of a user's shapes (our producer not involved in the values) and
    its foreign manifest, as ``--mode describe`` would write it; reused by name and size."""
    if name in known and known[name].num_samples == len(ds):
        return known[name]
    with kafka.make_admin(kcfg) as admin:
        admin.create_topic(name, partitions)
    classes = tuple(ds.class_names) if ds.class_names else ()
    with kafka.make_producer(kcfg, comp) as producer:
        produce_all(producer, shapes.encoder(shape, classes), ds, name, partitions, progress=False)
        bounds = producer.report.ranges_of(name)
    source = shapes.source_of(shape, ds.shape, str(ds.images.dtype), ds.num_classes, classes)
    m = manifest.Manifest(topic=name, dataset=ds.name, split=split, format=FOREIGN, layout="foreign",
                          num_samples=len(ds), shape=ds.shape, dtype=str(ds.images.dtype), num_classes=ds.num_classes,
                          class_names=ds.class_names, partitions=dict(sorted(bounds.items())), compression=comp,
                          schema=manifest.FOREIGN_SCHEMA, description=source.to_dict())
    manifest.write(kcfg, m)
    return m


def ensure_raw_topic(kcfg: KafkaConfig, name: str, key, ds, split: str, partitions: int):
    bounds = kafka.partition_bounds(kcfg, name, range(partitions)) if name in kafka.topics(kcfg) else {}
    if sum(hi - lo for lo, hi in bounds.values()) != len(ds):
        with kafka.make_admin(kcfg) as admin:
            admin.create_topic(name, partitions)
        with kafka.make_producer(kcfg, key[2]) as producer:
            produce_all(producer, measure.RawBytes(), ds, name, partitions, progress=False)
            bounds = producer.report.ranges_of(name)
    return manifest.Manifest(topic=name, dataset=ds.name, split=split, format=RAW, layout="bytes",
                             num_samples=len(ds), shape=ds.shape, dtype=str(ds.images.dtype),
                             num_classes=ds.num_classes, class_names=None,
                             partitions=dict(sorted(bounds.items())), compression=key[2])


def mean_value_bytes(kcfg: KafkaConfig, m, sample: int = 500) -> float:
    """Mean value size of a topic's first records (what MB/s counts)."""
    p = min(m.partitions)
    lo, hi = m.partitions[p]
    with kafka.make_consumer(kcfg) as consumer:
        recs = kafka.read_all(consumer, [(m.topic, p)], starts={(m.topic, p): lo},
                              ends={(m.topic, p): min(hi, lo + sample)})
    return sum(len(r.value or b"") for r in recs) / max(len(recs), 1)


def rank_side(job: JobConfig, kcfg: KafkaConfig, conditions: list[Condition], ds, run_dir: Path) -> measure.RankSide:
    cfg = job.experiment
    keys = grid.topics_needed(conditions)
    keys += sorted({(RAW, "bytes", c.compression) for c in conditions if c.format == RAW and c.workload == "ingest"})
    known = manifest.read_all(kcfg)
    topics = {k: ensure_topic(kcfg, cfg, k, ds, "train", known) for k in keys}
    test_topics = {}
    if any(c.workload == "train" and c.uses_kafka for c in conditions):
        test = load_dataset(job.data.dataset, "test", job.data.data_dir, min(10_000, max(1000, len(ds) // 6)))
        test_topics = {k: ensure_topic(kcfg, cfg, k, test, "test", known) for k in keys if k[0] != RAW}
    memory = any(c.format == grid.MEMORY for c in conditions)
    return measure.RankSide(
        kafka=kcfg, data=job.data, train=replace(job.train, epochs=cfg.epochs), topics=topics, test_topics=test_topics,
        value_bytes={k: mean_value_bytes(kcfg, m) for k, m in topics.items()},
        images=ds.images if memory else None, labels=ds.labels if memory else None, num_classes=ds.num_classes,
        run_dir=str(run_dir), collective_timeout_s=job.spark.collective_timeout_s, passes=cfg.passes,
        use_gpu=job.spark.gpu)


# ------------------------------------------------------------------ rounds
def rounds_of(cfg: ExperimentConfig) -> list[tuple[int, bool]]:
    return [(i + 1, i < cfg.warmup) for i in range(cfg.warmup + cfg.iterations)]


def publish_rounds(kcfg: KafkaConfig, conds: list[Condition], ds, cfg: ExperimentConfig, csv: Path,
                   progress: bool) -> None:
    rounds = rounds_of(cfg)
    with Progress(len(rounds) * len(conds), "publish measurements", enabled=progress) as bar:
        for iteration, warm in rounds:
            for cond in conds:
                topic = f"ddp_kbit.experiment.publish.{cond.format}.{cond.compression}.{cond.client}.{time.time_ns()}"
                try:
                    values = measure.publish_once(kcfg, cond, ds, cfg.partitions, topic)
                except Exception as exc:
                    values = {"error": error_text(exc)}
                results.append_row(csv, cond, iteration, warm, values)
                bar.update(1)


def rank_rounds(job: JobConfig, side: measure.RankSide, conds: list[Condition], csv: Path, out: Path) -> None:
    cfg = job.experiment
    rounds = rounds_of(cfg)
    by_np: dict[int, list[Condition]] = {}
    for c in conds:
        by_np.setdefault(c.num_processes, []).append(c)
    chunks = [rounds] if len(by_np) == 1 else [[r] for r in rounds]   # interleave process counts by round
    for chunk in chunks:
        for np_, group in by_np.items():
            task = RankTask(side, tuple(group), tuple(chunk), str(csv), str(out), job.general.log_level)
            try:
                spark.launch(replace(job.spark, num_processes=np_), experiment_fn, task)
            except Exception as exc:  # the launch itself failed: what it did not measure is recorded as failed
                reason = first_line(exc, 300)
                log.error("launch with %d process(es) failed: %s", np_, reason)
                record_missing(csv, group, chunk, f"launch failed: {reason}")


def record_missing(csv: Path, conds, rounds, error: str) -> None:
    done = set()
    if csv.exists():
        rows = pd.read_csv(csv, keep_default_na=False)
        n = len(grid.COLUMNS)
        done = {(Condition(*r[:n]), int(r[n])) for r in rows[[*grid.COLUMNS, "iteration"]].itertuples(index=False)}
    for iteration, warm in rounds:
        for cond in conds:
            if (cond, iteration) not in done:
                results.append_row(csv, cond, iteration, warm, {"error": error})


# ------------------------------------------------------------------ the study
def run_study(job: JobConfig, kcfg: KafkaConfig, run_dir: Path, embedded: bool, command: str) -> ExperimentReport:
    cfg = job.experiment
    out = Path(cfg.output_dir).expanduser().resolve() if cfg.output_dir else run_dir / "experiment"
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "results.csv"
    conditions = grid.build(cfg)
    env = results.environment("embedded tansu" if embedded else "external", kcfg.bootstrap_servers)
    study = {"preset": cfg.preset, "description": cfg.description, "command": command,
             "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg).items()},
             "conditions": [c.as_row() | {"label": c.label} for c in conditions]}
    write_json(out / "results.json", {"study": study, "environment": env})
    log.info("study %s: %d conditions x %d iterations (+%d warmup) -> %s", cfg.preset, len(conditions),
             cfg.iterations, cfg.warmup, out)
    ds = load_dataset(job.data.dataset, "train", job.data.data_dir, cfg.limit)
    publish_conds = [c for c in conditions if c.workload == "publish"]
    if publish_conds:
        publish_rounds(kcfg, publish_conds, ds, cfg, csv, job.general.progress)
    rank_conds = [c for c in conditions if c.workload in RANK_SIDE]
    if rank_conds:
        rank_rounds(job, rank_side(job, kcfg, rank_conds, ds, run_dir), rank_conds, csv, out)
    return finish(out, study, env, cfg)


def finish(out: Path, study: dict, env: dict, cfg: ExperimentConfig) -> ExperimentReport:
    rows = pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""])
    rows["error"] = rows["error"].fillna("")
    summary = stats.summarize(rows, cfg.seed, cfg.confidence)
    summary.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    made = report.make_plots(rows, summary, out)
    verdicts = stats.verdicts(summary)
    text = report.markdown(study, env, summary, verdicts, made, cfg)
    (out / "report.md").write_text(text)
    files = {"results_csv": str(out / "results.csv"), "summary_csv": str(out / "summary.csv"),
             "report_md": str(out / "report.md"), "plots": [str(p) for p in made]}
    write_json(out / "results.json", {"study": study, "environment": env, "files": files,
                                      "summary": summary.to_dict("records"), "verdicts": verdicts})
    return ExperimentReport(str(out), files, len(rows), int((rows["error"] != "").sum()), report.table(summary),
                            verdicts)
