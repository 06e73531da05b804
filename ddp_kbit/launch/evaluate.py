"""``--mode evaluate``: a saved model (a run's ``model.pt``, or a checkpoint) on a
test topic, in this process (one reader of the whole topic: evaluation is cheap next
to training, and one process keeps the predictions topic simple). Accuracy, loss,
per-class precision and recall, a confusion-matrix PNG and a JSON report; with
``--predictions-topic`` one record per input: the source record's key; a JSON value
with index, label, prediction and probabilities; headers naming the model and the
source record. Exactly once per input, across kills: a run starts from what the
predictions topic already holds (by source partition and offset) and skips those,
as the dead-letter topics do."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddp_kbit import kafka
from ddp_kbit.config import JobConfig, KafkaConfig
from ddp_kbit.data import manifest as manifests
from ddp_kbit.data.dataset import KafkaDataset
from ddp_kbit.data.source import describe
from ddp_kbit.errors import ConfigError
from ddp_kbit.plots import plot_confusion
from ddp_kbit.progress import Progress
from ddp_kbit.train import checkpoint, usercode
from ddp_kbit.train.models import make_model, parameter_count
from ddp_kbit.train.transforms import Transforms

log = logging.getLogger("ddp_kbit.evaluate")
SRC_PARTITION, SRC_OFFSET = "ddp_kbit.source.partition", "ddp_kbit.source.offset"


def load_model(path: str, spec, shape, num_classes: int) -> tuple[torch.nn.Module, str]:
    """The model at ``path`` (a state_dict, or a checkpoint's model, whose spec wins)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"--model-path {path} does not exist") from None
    except Exception as exc:
        raise ConfigError(f"--model-path {path} is not a model or a checkpoint (loaded with weights_only): "
                          f"{str(exc)[:200]}") from None
    if isinstance(state, dict) and "run" in state and "model" in state:   # a ddp_kbit checkpoint
        saved = checkpoint.load(path)
        spec = saved["run"].get("belongs_to", {}).get("model") or spec
        state = saved["model"]
        if isinstance(spec, str) and usercode.is_spec(spec):
            spec = usercode.parse(spec, "--model")
    state = {k.removeprefix("module."): v for k, v in state.items()}   # saved from DistributedDataParallel
    model = make_model(spec, shape, num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"--model-path {path} does not fit --model {getattr(spec, 'spec', spec)} for "
                          f"{list(shape)} x {num_classes} classes: {str(exc).splitlines()[0][:200]}") from None
    return model.eval(), hashlib.sha256(Path(path).read_bytes()).hexdigest()


def already_predicted(kcfg: KafkaConfig, topic: str) -> set:
    present = kafka.topics(kcfg)
    if topic not in present:
        return set()
    done = set()
    for r in kafka.read_topic(kcfg, topic, present[topic], headers=True, group_id="ddp_kbit.predictions-reader"):
        h = {k: bytes(v).decode(errors="replace") for k, v in (r.headers or [])}
        if h.get(SRC_PARTITION, "").isdigit() and h.get(SRC_OFFSET, "").isdigit():
            done.add((int(h[SRC_PARTITION]), int(h[SRC_OFFSET])))
    return done


def run_evaluate(job: JobConfig, kcfg: KafkaConfig, run_dir: Path, model_path: str, predictions: str | None,
                 limit: int | None = None) -> dict:
    topic = job.data.test_topic or job.inspect.topic
    if not topic:
        raise ConfigError("--mode evaluate needs --test-topic T (or --topic T)")
    if not model_path:
        raise ConfigError("--mode evaluate needs --model-path (a run's model.pt, or a checkpoint)")
    m = describe(kcfg, topic, job.source, write=False)[0] if job.source.described else manifests.resolve(kcfg, topic)
    classes = m.num_classes
    if classes is None:
        raise ConfigError(f"topic {topic} has no manifest, so its class count is unknown; describe it first")
    spec = job.train.model
    spec = usercode.parse(spec, "--model") if usercode.is_spec(spec) else spec
    model, digest = load_model(model_path, spec, m.shape, classes)
    transforms = Transforms([usercode.parse(t, "--transform") for t in job.train.transforms])
    ds = KafkaDataset(m, kafka=kcfg, data=dataclasses.replace(job.data, shuffle="none"),
                      batch_size=job.train.eval_batch_size, num_classes=classes, keep_keys=bool(predictions),
                      source=job.source)
    done = already_predicted(kcfg, predictions) if predictions else set()
    if predictions and predictions not in kafka.topics(kcfg):
        with kafka.make_admin(kcfg) as admin:   # real Kafka may not auto-create topics
            admin.create_topic(predictions, len(m.partitions))
    confusion = np.zeros((classes, classes), np.int64)
    loss_sum, n, written, skipped = 0.0, 0, 0, 0
    producer = kafka.make_producer(kcfg) if predictions else None
    identity = [("ddp_kbit.model.spec", str(getattr(spec, "spec", spec)).encode()),
                ("ddp_kbit.model.sha256", digest.encode()), ("ddp_kbit.source.topic", topic.encode())]
    try:
        with Progress(len(ds), f"evaluate {topic}", unit="batch", enabled=job.general.progress) as bar, \
                torch.no_grad():
            for batch in ds:
                x, y = batch.to("cpu")
                if transforms:
                    x, y = transforms(x, y, False)
                logits = model(x)
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum")) if len(y) else 0.0
                pred = logits.argmax(1)
                np.add.at(confusion, (y.numpy(), pred.numpy()), 1)
                n += len(y)
                if producer is not None:
                    w, s = _predict(producer, predictions, batch, pred, F.softmax(logits, 1), identity, done)
                    written, skipped = written + w, skipped + s
                if limit is not None and n >= limit:
                    break
                bar.update(1)
    finally:
        if producer is not None:
            left = producer.flush(60)
            producer.close()
            if left:
                log.error("%d predictions were not acknowledged", left)
    names = list(m.class_names) if m.class_names else [str(i) for i in range(classes)]
    png = plot_confusion(confusion.tolist(), names, run_dir / "confusion.png", f"{topic}: {n} records")
    return {"mode": "evaluate", "topic": topic, "model": {"path": str(model_path), "spec": str(getattr(spec, "spec", spec)),
                                                          "sha256": digest, "parameters": parameter_count(model)},
            "records": n, **summary(confusion, loss_sum, names), "confusion_png": str(png),
            "bad_records": ds.bad.to_dict() if ds.bad else None,
            "predictions": {"topic": predictions, "written": written, "already_there": skipped} if predictions
            else None}


def _predict(producer, topic, batch, pred, probs, identity, done) -> tuple[int, int]:
    written = skipped = 0
    for i, (p, o) in enumerate(batch.offsets.tolist()):
        if (p, o) in done:
            skipped += 1
            continue
        value = {"index": int(batch.indices[i]), "label": int(batch.labels[i]), "prediction": int(pred[i]),
                 "probabilities": [round(float(v), 6) for v in probs[i]]}
        producer.send(topic, json.dumps(value, separators=(",", ":")).encode(), key=batch.keys[i],
                      headers=[*identity, (SRC_PARTITION, str(p).encode()), (SRC_OFFSET, str(o).encode())])
        done.add((p, o))
        written += 1
    return written, skipped


def summary(confusion: np.ndarray, loss_sum: float, names: list[str]) -> dict:
    """Accuracy, mean loss, and precision and recall per class, from a confusion matrix."""
    n = int(confusion.sum())
    tp = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(0).astype(float), confusion.sum(1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    return {"test_accuracy": float(tp.sum() / n) if n else float("nan"), "test_loss": loss_sum / n if n else float("nan"),
            "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                                 "support": int(actual[i])} for i, name in enumerate(names)},
            "confusion": confusion.tolist()}
