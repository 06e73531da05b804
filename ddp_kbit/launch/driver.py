"""The training driver: topics -> manifests -> run spec -> TorchDistributor,
restarts from the newest checkpoint, and the JSON report."""
from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

from ddp_kbit import kafka
from ddp_kbit.config import DataConfig, FollowConfig, JobConfig, KafkaConfig, PublishConfig, SourceConfig, as_dict
from ddp_kbit.data import manifest
from ddp_kbit.data.dead_letters import dlq_topic, read_dead_letters
from ddp_kbit.data.describe import describe
from ddp_kbit.data.publish import ensure_published
from ddp_kbit.errors import UserError
from ddp_kbit.files import DirectoryLock
from ddp_kbit.launch import spark
from ddp_kbit.launch.metrics import DriverMetrics
from ddp_kbit.launch.spark_errors import exception_line, known_failure
from ddp_kbit.reports import EpochRecord, Final, TrainReport, WindowRecord
from ddp_kbit.train import checkpoint, rundir
from ddp_kbit.train.loop import train_fn
from ddp_kbit.train.spec import RunSpec, build_spec, checkpoint_dir

log = logging.getLogger("ddp_kbit.driver")


def ensure_default_topics(kcfg: KafkaConfig, data: DataConfig, progress: bool) -> dict[str, manifest.Manifest]:
    """The dataset's train/test topics in the training format, published when
    they have no manifest yet (a fresh embedded broker)."""
    pcfg = PublishConfig(dataset=data.dataset, data_dir=data.data_dir, format=data.format or PublishConfig.format,
                         layout=data.layout)
    return ensure_published(kcfg, pcfg, splits=("train", "test"), progress=progress)


def resolve_topics(kcfg: KafkaConfig, data: DataConfig, progress: bool, source: SourceConfig | None = None,
                   embedded: bool = True) -> dict[str, manifest.Manifest]:
    """Manifests of the train and test topics: the default ones (published if missing,
    on the embedded broker only: a user's cluster is never written to unasked), the
    named ones (manifest, else derived from the broker), or, with a source
    description, topics we did not write as described now."""
    if data.default_topics and embedded:
        return ensure_default_topics(kcfg, data, progress)
    if data.default_topics:
        return {split: demo_topic(kcfg, data, split) for split in ("train", "test")}
    if source is not None and source.described:
        return {split: describe(kcfg, data.topic(split), source, write=False)[0] for split in ("train", "test")}
    return {split: manifest.resolve(kcfg, data.topic(split)) for split in ("train", "test")}


def demo_topic(kcfg: KafkaConfig, data: DataConfig, split: str) -> manifest.Manifest:
    """The demo dataset's topic on a broker the user named: there when published, else one line."""
    topic = data.topic(split)
    found = manifest.read_all(kcfg).get(topic)
    if found is None:
        raise UserError(f"no --train-topic given, and the demo topic {topic} is not on {kcfg.bootstrap_servers} (it "
                        "is published unasked only on the embedded broker): name your topics with --train-topic and "
                        f"--test-topic, or publish the demo first: ddp-kbit publish --bootstrap-servers "
                        f"{kcfg.bootstrap_servers}")
    return found


def run_with_restarts(job: JobConfig, spec: RunSpec) -> tuple[tuple[dict, dict], int, list[dict]]:
    """TorchDistributor run; on failure resume from the newest checkpoint, in barrier
    mode on as many ranks as the cluster has slots for now (fewer after a lost worker,
    as many as asked once it is back). Returns the result, the restarts, and every
    attempt's world size and error."""
    restarts, attempts, scfg = 0, [], job.spark
    Path(spec.checkpoint.dir).mkdir(parents=True, exist_ok=True)
    metrics = DriverMetrics(job.metrics.port, spec.checkpoint.dir) if job.metrics.port else None
    try:
        return _attempts(job, spec, scfg, restarts, attempts, metrics)
    finally:
        if metrics is not None:
            metrics.close(Path(spec.run_dir) / "metrics.prom")


def _attempts(job: JobConfig, spec: RunSpec, scfg, restarts: int, attempts: list, metrics):
    while True:
        if metrics is not None:
            metrics.world.set(scfg.num_processes)
        rundir.clear(spec.run_dir)
        rundir.stop_file(spec.checkpoint.dir).unlink(missing_ok=True)
        # what the DLQs already hold (an earlier attempt's forwards): never forwarded twice
        spec = replace(spec, dead_lettered=read_dead_letters(spec.kafka, [spec.train_topic.topic,
                                                                          spec.test_topic.topic]).forwarded)
        try:
            launched = spark.launch(scfg, train_fn, spec, stop_file=str(rundir.stop_file(spec.checkpoint.dir)),
                                    log_path=str(rundir.ranks_log(spec.run_dir)))
            attempts.append({"attempt": restarts, "world_size": scfg.num_processes, "error": None})
            return launched, restarts, attempts
        except UserError:
            raise   # e.g. no slots within --launch-timeout: nothing a restart would change
        except Exception as exc:
            # the launcher's whole error (Spark and torchrun output) for whoever wants more than one line
            (Path(spec.run_dir) / f"launch-error.attempt{restarts}.txt").write_text(str(exc))
            reason = describe_failure(str(exc), rundir.failures(spec.run_dir), rundir.started_ranks(spec.run_dir),
                                      rundir.stalled(spec.run_dir))
            if "No module named 'ddp_kbit'" in reason:
                reason += " (the executors' Python lacks the package: pass --ship-package)"
            attempts.append({"attempt": restarts, "world_size": scfg.num_processes, "error": reason})
            if restarts >= job.checkpoint.max_restarts or rundir.stop_file(spec.checkpoint.dir).exists() \
                    or rundir.final(spec.run_dir):
                raise UserError(f"training failed after {restarts} restart(s): {reason} (the ranks' whole output: "
                                f"{rundir.ranks_log(spec.run_dir)})") from None
            found = checkpoint.latest_readable(spec.checkpoint.dir)
            restarts += 1
            if metrics is not None:
                metrics.restarts.inc()
            log.warning("training failed (%s); restart %d/%d from %s", reason, restarts, job.checkpoint.max_restarts,
                        found or "the beginning")
            if scfg.distributed:  # elastic: the slots the cluster has now
                scfg = replace(scfg, num_processes=spark.available_ranks(job.spark))
                log.warning("restart %d runs on %d rank(s)", restarts, scfg.num_processes)
            spec = replace(spec, resume_from=str(found) if found else None)


_BLOCK = re.compile(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)[^\n]*?(?:\((SIG[A-Z0-9]+)\))?[ \t]*\n")
_ROOT = "Root Cause (first observed failure)"
_BARRIER = re.compile(r"barrier task ResultTask\(\d+, (\d+)\) finished unsuccessfully")


def describe_failure(text: str, failures: dict[int, str], started: set[int] = frozenset(),
                     stalled: dict[int, str] | None = None) -> str:
    """Which rank failed first and how (its own error, the signal or exit code that
    ended it, or that it stopped responding), then what the other ranks said.
    ``text``: the launcher's error, which carries torchrun's failure summary;
    ``failures``: the ranks' own lines; ``started``: ranks that began but never
    finished (a rank killed outright leaves no line of its own); ``stalled``: notes
    of ranks a peer found alive but making no progress (stopped, hung)."""
    hung = {r: line for r, line in (stalled or {}).items() if r not in failures}
    if hung:   # everybody else waited for it: it comes first, whatever torchrun saw first
        first = min(hung)
        return hung[first] + "".join(f"; then {line}" for line in list(failures.values())[:2])
    how = {int(m.group(1)): (int(m.group(2)), m.group(3)) for m in _BLOCK.finditer(text)}
    root_at = text.find(_ROOT)
    root = _BLOCK.search(text, root_at) if root_at >= 0 else None
    barrier = _BARRIER.search(text)   # barrier mode: the task (= rank) Spark saw fail first
    silent = sorted(started - set(failures))
    if root is not None and (int(root.group(1)) in failures or int(root.group(1)) in silent):
        first = int(root.group(1))
    elif barrier is not None and (int(barrier.group(1)) in failures or int(barrier.group(1)) in silent):
        first = int(barrier.group(1))
    elif silent:
        first = silent[0]
    elif failures:
        first = next(iter(failures))
    else:
        return last_line(text)
    head = failures.get(first) or _how_it_ended(first, *how.get(first, (None, None)))
    others = [line for r, line in failures.items() if r != first and not _AFTERMATH.search(line)]
    return head + "".join(f"; then {line}" for line in others[:2])


# a peer's collective failing because the first rank is gone says nothing new
_AFTERMATH = re.compile(r"Connection (closed|reset) by peer|stopped at once by a second signal|Broken pipe")


def _how_it_ended(rank: int, code: int | None, signame: str | None) -> str:
    if signame or (code is not None and code < 0):
        return f"rank {rank} was killed by {signame or f'signal {-code}'} (exit code {code})"
    if code is not None:
        return f"rank {rank} exited with code {code} without a Python error"
    return f"rank {rank} died without a Python error (killed by a signal such as SIGKILL, or out of memory)"


_PY_ERROR = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)):\s*(.*)$")


def last_line(text: str) -> str:
    """The most telling line of a launcher's error: a known Spark failure's line, else
    the last Python exception line (``ModuleNotFoundError: ...``), else the JVM's
    exception line; never a Java frame or Spark's own wrapper."""
    known = known_failure(text)
    if known:
        return known
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    python = [ln for ln in lines if _PY_ERROR.match(ln) and not ln.startswith(("org.", "java.", "scala.", "py4j."))]
    for ln in reversed(python):
        return ln[:500]
    jvm = exception_line(text)
    if jvm:
        return jvm[:500]
    plain = [ln for ln in lines if not ln.startswith(("at ", "..."))]
    return (plain[-1] if plain else "unknown failure")[:500]


def train_report(job: JobConfig, kcfg: KafkaConfig, launched: tuple[dict, dict], restarts: int, dlq: str,
                 missing: list, attempts: list, value_dropped: int = 0) -> TrainReport:
    """The typed report of a run, from what the ranks returned and where they ran."""
    result, where = launched
    ranks = result.get("ranks", [])
    where = {**where, "ranks": ranks}
    if ranks:  # from the launch (Spark session included) to the last rank's start
        where["startup_s"] = round(max(r["started_at"] for r in ranks) - where["launched_at"], 2)
    config = {"kafka": as_dict(kcfg), "data": as_dict(job.data), "train": as_dict(job.train),
              "checkpoint": as_dict(job.checkpoint), "spark": as_dict(job.spark), "follow": as_dict(job.follow),
              "source": as_dict(job.source)}
    stopped = result.get("stopped")
    if stopped:   # the driver's signal is the one a user sent
        stopped = {**stopped, "by": where.get("stopped_by") or stopped["by"]}
    follows = "windows" in result
    return TrainReport(
        config=config, spark=where, world_size=result["world_size"], restarts=restarts,
        epochs=[EpochRecord.from_dict(e) for e in result["epochs"]], final=Final(**result["final"]),
        model=result["model"], bad_records={**result["bad_records"], "dlq_topic": dlq, "dlq_value_dropped": value_dropped},
        missing_records=missing, attempts=attempts,
        windows=[WindowRecord.from_dict(w) for w in result["windows"]] if follows else None,
        follow=result.get("follow"), stopped=stopped)


def follow_start(kcfg: KafkaConfig, m: manifest.Manifest, cfg: FollowConfig) -> dict[int, int]:
    """Partition -> the first offset a --follow run trains: the log start (earliest),
    the high watermark now (latest), the end of the manifest's snapshot (manifest),
    or the first offset at or after a time (offsets_for_times)."""
    parts = kafka.topics(kcfg).get(m.topic)
    if parts is None:
        raise UserError(f"topic {m.topic} does not exist on {kcfg.bootstrap_servers}")
    bounds = kafka.partition_bounds(kcfg, m.topic, range(parts), group_id="ddp_kbit.follow-start")
    if cfg.start_at == "earliest":
        return {p: lo for p, (lo, _) in bounds.items()}
    if cfg.start_at == "latest":
        return {p: hi for p, (_, hi) in bounds.items()}
    if cfg.start_at == "manifest":
        return {p: max(bounds[p][0], m.partitions.get(p, (0, bounds[p][0]))[1]) for p in bounds}
    with kafka.make_consumer(kcfg, group_id="ddp_kbit.follow-start") as consumer:
        found = consumer.offsets_for_times([(m.topic, p) for p in bounds], cfg.start_time_ms())
    return {p: found[(m.topic, p)] if found[(m.topic, p)] is not None else bounds[p][1] for p in bounds}


def run_training(job: JobConfig, kcfg: KafkaConfig, run_dir: Path, model=None, transforms=()) -> TrainReport:
    """``kcfg``: the job's Kafka config with reachable servers (the embedded broker's, if any)."""
    embedded = not job.kafka.bootstrap_servers
    with DirectoryLock(checkpoint_dir(job, run_dir)):   # one run at a time per checkpoint directory, first
        manifests, missing = {}, []
        for split, m in resolve_topics(kcfg, job.data, job.general.progress, job.source, embedded).items():
            if job.train.follow and split == "train":
                manifests[split] = m   # a followed topic grows past its manifest: the broker says what is there
                continue
            manifests[split], gone = manifest.check_on_broker(kcfg, m, job.data.allow_missing_records)
            missing += gone
        spec = build_spec(job, kcfg, manifests, run_dir, model, transforms)
        if job.train.follow:
            spec = replace(spec, follow=job.follow, follow_start=follow_start(kcfg, manifests["train"], job.follow))
            log.info("following %s from %s", spec.train_topic.topic, spec.follow_start)
        log.info("training on %s (%d records, %d partitions), testing on %s; %d processes, %s",
                 manifests["train"].topic, manifests["train"].record_count, len(manifests["train"].partitions),
                 manifests["test"].topic, job.spark.num_processes,
                 "barrier mode" if job.spark.distributed else "local mode")
        launched, restarts, attempts = run_with_restarts(job, spec)
    dropped = read_dead_letters(kcfg, [spec.train_topic.topic]).value_dropped
    in_run = sum(1 for t, p, o in dropped if spec.train_topic.partitions.get(p, (0, 0))[0] <= o
                 < spec.train_topic.partitions.get(p, (0, 0))[1])
    return train_report(job, kcfg, launched, restarts, dlq_topic(manifests["train"].topic), missing, attempts,
                        in_run)
