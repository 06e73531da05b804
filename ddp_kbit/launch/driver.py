"""The training driver: topics -> manifests -> run spec -> TorchDistributor,
restarts from the newest checkpoint, and the JSON report."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ddp_kbit.config import DataConfig, JobConfig, KafkaConfig, PublishConfig, as_dict
from ddp_kbit.data import manifest
from ddp_kbit.data.dead_letters import dlq_topic
from ddp_kbit.data.publish import ensure_published
from ddp_kbit.errors import UserError
from ddp_kbit.launch import spark
from ddp_kbit.train import checkpoint
from ddp_kbit.train.loop import RunSpec, train_fn

log = logging.getLogger("ddp_kbit.driver")


def ensure_default_topics(kcfg: KafkaConfig, data: DataConfig, progress: bool) -> dict[str, manifest.Manifest]:
    """The dataset's train/test topics in the training format, published when
    they have no manifest yet (a fresh embedded broker)."""
    pcfg = PublishConfig(dataset=data.dataset, data_dir=data.data_dir, format=data.format or PublishConfig.format,
                         layout=data.layout)
    return ensure_published(kcfg, pcfg, splits=("train", "test"), progress=progress)


def resolve_topics(kcfg: KafkaConfig, data: DataConfig, progress: bool) -> dict[str, manifest.Manifest]:
    """Manifests of the train and test topics: the default ones (published if
    missing), or the named ones (manifest, else derived from the broker)."""
    if data.default_topics:
        return ensure_default_topics(kcfg, data, progress)
    return {split: manifest.resolve(kcfg, data.topic(split)) for split in ("train", "test")}


def check_compatible(train: manifest.Manifest, test: manifest.Manifest, data: DataConfig) -> int:
    """The manifests are the source of truth; a flag that contradicts one is the
    error. Returns the class count."""
    if tuple(train.shape) != tuple(test.shape) or train.dtype != test.dtype:
        raise UserError(f"train topic {train.topic} holds {list(train.shape)} {train.dtype} samples but test topic "
                        f"{test.topic} holds {list(test.shape)} {test.dtype}")
    for m in (train, test):
        if data.format is not None and m.format != data.format:
            raise UserError(f"topic {m.topic} is {m.format} (its {m.source} says so), but --format {data.format} "
                            "was given; leave --format out or name another topic")
    classes = train.num_classes or test.num_classes
    if classes is None:
        raise UserError(f"topic {train.topic} has no manifest, so its class count is unknown; "
                        "publish it with `python -m producers.publish` to get one")
    return classes


def build_spec(job: JobConfig, kcfg: KafkaConfig, manifests: dict, run_dir: Path) -> RunSpec:
    train, test = manifests["train"], manifests["test"]
    classes = check_compatible(train, test, job.data)
    ckpt_dir = Path(job.checkpoint.dir).expanduser().resolve() if job.checkpoint.dir else run_dir / "checkpoints"
    found = checkpoint.latest(ckpt_dir)
    if job.checkpoint.resume and found is None:
        raise UserError(f"--resume: no checkpoint in {ckpt_dir}")
    if not job.checkpoint.resume and found is not None:
        raise UserError(f"checkpoint directory {ckpt_dir} already holds checkpoints ({found.name}); pass --resume "
                        "to continue from them, or choose another --checkpoint-dir")
    return RunSpec(kafka=kcfg, data=job.data, train=job.train,
                   checkpoint=replace(job.checkpoint, dir=str(ckpt_dir)), train_topic=train, test_topic=test,
                   num_classes=classes, run_dir=str(run_dir), log_level=job.general.log_level,
                   progress=job.general.progress, use_gpu=job.spark.gpu,
                   resume_from=str(found) if job.checkpoint.resume else None)


def run_with_restarts(job: JobConfig, spec: RunSpec) -> tuple[tuple[dict, dict], int]:
    """TorchDistributor run; on failure resume from the newest checkpoint."""
    restarts = 0
    while True:
        clear_failures(spec.run_dir)
        try:
            return spark.launch(job.spark, train_fn, spec), restarts
        except Exception as exc:
            reason = rank_failure(spec.run_dir) or last_line(exc)
            if restarts >= job.checkpoint.max_restarts:
                raise UserError(f"training failed after {restarts} restart(s): {reason}") from None
            found = checkpoint.latest(spec.checkpoint.dir)
            restarts += 1
            log.warning("training failed (%s); restart %d/%d from %s", reason, restarts, job.checkpoint.max_restarts,
                        found or "the beginning")
            spec = replace(spec, resume_from=str(found) if found else None)


def clear_failures(run_dir: str) -> None:
    for f in Path(run_dir).glob("failure.rank*.txt"):
        f.unlink(missing_ok=True)


def rank_failure(run_dir: str) -> str | None:
    """The first failure a rank wrote (others usually fail because it did)."""
    found = sorted(Path(run_dir).glob("failure.rank*.txt"), key=lambda f: f.stat().st_mtime)
    return found[0].read_text().strip().splitlines()[0][:500] if found else None


def last_line(exc: BaseException) -> str:
    """The most telling line of a worker failure: its final exception line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln:
            return ln[:500]
    return (lines[-1] if lines else type(exc).__name__)[:500]


def train_report(job: JobConfig, kcfg: KafkaConfig, launched: tuple[dict, dict], restarts: int, dlq: str) -> dict:
    result, where = launched
    config = {"kafka": as_dict(kcfg), "data": as_dict(job.data), "train": as_dict(job.train),
              "checkpoint": as_dict(job.checkpoint), "spark": as_dict(job.spark)}
    return {"mode": "train", "config": config, "spark": where, "world_size": result["world_size"],
            "restarts": restarts, "epochs": result["epochs"], "final": result["final"],
            "bad_records": {**result["bad_records"], "dlq_topic": dlq}}


def run_training(job: JobConfig, kcfg: KafkaConfig, run_dir: Path) -> dict:
    """``kcfg``: the job's Kafka config with reachable servers (the embedded broker's, if any)."""
    manifests = resolve_topics(kcfg, job.data, job.general.progress)
    spec = build_spec(job, kcfg, manifests, run_dir)
    log.info("training on %s (%d records, %d partitions), testing on %s; %d processes, %s",
             manifests["train"].topic, manifests["train"].record_count, len(manifests["train"].partitions),
             manifests["test"].topic, job.spark.num_processes, "barrier mode" if job.spark.distributed else "local mode")
    launched, restarts = run_with_restarts(job, spec)
    return train_report(job, kcfg, launched, restarts, dlq_topic(manifests["train"].topic))


def run_publish(job: JobConfig, kcfg: KafkaConfig) -> dict:
    manifests = ensure_default_topics(kcfg, job.data, job.general.progress)
    return {"mode": "publish", "topics": {s: m.topic for s, m in manifests.items()}}
