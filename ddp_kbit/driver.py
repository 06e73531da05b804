"""The training driver: topics -> manifests -> run spec -> TorchDistributor,
restarts from the newest checkpoint, and the JSON report."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ddp_kbit import checkpoint, manifest
from ddp_kbit.cli import UserError
from ddp_kbit.config import KafkaConfig, PublishConfig, SparkConfig, TrainConfig, as_dict
from ddp_kbit.partitions import ranges_to_slices

log = logging.getLogger("ddp_kbit.driver")


def ensure_default_topics(kcfg: KafkaConfig, tcfg: TrainConfig) -> dict[str, manifest.Manifest]:
    """The dataset's train/test topics in the training format, published when
    they have no manifest yet (a fresh embedded broker)."""
    from producers.publish import ensure_published

    pcfg = PublishConfig(dataset=tcfg.dataset, format=tcfg.format, layout=tcfg.layout, progress=tcfg.progress)
    return ensure_published(kcfg, pcfg, splits=("train", "test"))


def resolve_topics(kcfg: KafkaConfig, tcfg: TrainConfig) -> dict[str, manifest.Manifest]:
    """Manifests of the train and test topics: the default ones (published if
    missing), or the named ones (manifest, else derived from the broker)."""
    if tcfg.train_topic is None and tcfg.test_topic is None:
        return ensure_default_topics(kcfg, tcfg)
    return {split: manifest.resolve(kcfg, tcfg.topic(split)) for split in ("train", "test")}


def check_compatible(train: manifest.Manifest, test: manifest.Manifest, tcfg: TrainConfig) -> int:
    if tuple(train.shape) != tuple(test.shape) or train.dtype != test.dtype:
        raise UserError(f"train topic {train.topic} holds {list(train.shape)} {train.dtype} samples but test topic "
                        f"{test.topic} holds {list(test.shape)} {test.dtype}")
    for m in (train, test):
        if m.format != tcfg.format:
            raise UserError(f"topic {m.topic} is {m.format}, not {tcfg.format}; pass --format {m.format}")
    classes = train.num_classes or test.num_classes
    if classes is None:
        raise UserError(f"topic {train.topic} has no manifest, so its class count is unknown; "
                        "publish it with `python -m producers.publish` to get one")
    return classes


def build_spec(kcfg, tcfg, manifests, run_dir: Path, extra: dict):
    from ddp_kbit.train import RunSpec

    train, test = manifests["train"], manifests["test"]
    classes = check_compatible(train, test, tcfg)
    ckpt_dir = Path(tcfg.checkpoint_dir) if tcfg.checkpoint_dir else run_dir / "checkpoints"
    resume_from = None
    if tcfg.resume:
        found = checkpoint.latest(ckpt_dir)
        if found is None:
            raise UserError(f"--resume: no checkpoint in {ckpt_dir}")
        resume_from = str(found)
    return RunSpec(kafka=kcfg, train=tcfg, train_slices=tuple(ranges_to_slices(train.topic, train.partitions)),
                   test_slices=tuple(ranges_to_slices(test.topic, test.partitions)), shape=tuple(train.shape),
                   dtype=train.dtype, num_classes=classes, layout=train.layout, checkpoint_dir=str(ckpt_dir),
                   run_dir=str(run_dir), resume_from=resume_from, extra=extra)


def run_with_restarts(scfg: SparkConfig, spec, max_restarts: int) -> tuple[tuple[dict, dict], int]:
    """TorchDistributor run; on failure resume from the newest checkpoint."""
    from ddp_kbit import spark
    from ddp_kbit.train import train_fn

    restarts = 0
    while True:
        clear_failures(spec.run_dir)
        try:
            return spark.launch(scfg, train_fn, spec), restarts
        except Exception as exc:
            reason = rank_failure(spec.run_dir) or last_line(exc)
            found = checkpoint.latest(spec.checkpoint_dir)
            if restarts >= max_restarts:
                raise UserError(f"training failed after {restarts} restart(s): {reason}") from None
            restarts += 1
            log.warning("training failed (%s); restart %d/%d from %s", reason, restarts, max_restarts,
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


def train_report(kcfg, tcfg, scfg, launched: tuple[dict, dict], restarts: int, dlq_topic: str) -> dict:
    result, where = launched
    return {"mode": "train", "config": {"kafka": as_dict(kcfg), "train": as_dict(tcfg), "spark": as_dict(scfg)},
            "spark": where, "world_size": result["world_size"], "restarts": restarts, "epochs": result["epochs"],
            "final": result["final"], "bad_records": {**result["bad_records"], "dlq_topic": dlq_topic}}


def run_training(kcfg: KafkaConfig, tcfg: TrainConfig, scfg: SparkConfig, run_dir: Path, log_level: str) -> dict:
    manifests = resolve_topics(kcfg, tcfg)
    spec = build_spec(kcfg, tcfg, manifests, run_dir, {"gpu": scfg.gpu, "log_level": log_level})
    log.info("training on %s (%d records, %d partitions), testing on %s; %d processes, %s",
             manifests["train"].topic, manifests["train"].record_count, len(manifests["train"].partitions),
             manifests["test"].topic, scfg.num_processes, "barrier mode" if scfg.distributed else "local mode")
    launched, restarts = run_with_restarts(scfg, spec, tcfg.max_restarts)
    return train_report(kcfg, tcfg, scfg, launched, restarts, f"{manifests['train'].topic}.dlq")
