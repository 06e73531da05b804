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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddp_kbit import kafka
from ddp_kbit.config import JobConfig, KafkaConfig, TrainConfig
from ddp_kbit.data import manifest as manifests
from ddp_kbit.data.describe import describe
from ddp_kbit.data.kafka_dataset import KafkaDataset
from ddp_kbit.errors import ConfigError, first_line
from ddp_kbit.plots import plot_confusion
from ddp_kbit.progress import Progress
from ddp_kbit.train import checkpoint, usercode
from ddp_kbit.train.modelcard import code_entry, code_from, digest, make_card, read_card, same_code
from ddp_kbit.train.models import make_model, parameter_count, spec_name
from ddp_kbit.train.transforms import Transforms

log = logging.getLogger("ddp_kbit.evaluate")
SRC_PARTITION, SRC_OFFSET = "ddp_kbit.source.partition", "ddp_kbit.source.offset"
MODEL_DIGEST = "ddp_kbit.model.digest"   # weights + model and transform specs: exactly once per model


@dataclass(frozen=True)
class SavedModel:
    """A model ready to evaluate: the module, what it was trained with, and which model it is."""

    model: torch.nn.Module
    spec: object              # a built-in name or a CodeRef
    transforms: Transforms
    card: dict
    digest: str               # weights + model and transform specs (ddp_kbit.train.modelcard.digest)
    sha256: str               # of the file


def weights_and_card(path: str) -> tuple[dict, dict | None]:
    """The state_dict at ``path`` (a run's model.pt, or a checkpoint's model) and its
    card (model.json beside it, or the checkpoint's own)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"--model-path {path} does not exist") from None
    except Exception as exc:
        raise ConfigError(f"--model-path {path} is not a model or a checkpoint (loaded with weights_only): "
                          f"{first_line(exc, 200)}") from None
    if isinstance(state, dict) and "run" in state and "model" in state:   # a ddp_kbit checkpoint
        run = checkpoint.load(path)["run"]
        card = run.get("card") or None
        spec = run.get("belongs_to", {}).get("model")
        if card is None and spec:   # a checkpoint of 0.2: its model spec only
            card = {"model": {"spec": spec, "builtin": ":" not in spec}, "transforms": []}
        state = state["model"]
    else:
        card = read_card(path)
    return {k.removeprefix("module."): v for k, v in state.items()}, card   # saved from DDP or not


def chosen(job: JobConfig, card: dict | None) -> tuple[object, list]:
    """The model spec and transforms: the card's, unless flags name others (a warning
    when they differ); one line when the card names Python functions and no flag does."""
    flag_model = job.train.model if job.train.model != TrainConfig.model else None
    flags_t = [usercode.parse(t, "--transform") for t in job.train.transforms]
    as_spec = lambda m: usercode.parse(m, "--model") if usercode.is_spec(m) else m  # noqa: E731
    if card is None:   # a bare state_dict: the flags are all there is
        return as_spec(flag_model or TrainConfig.model), flags_t
    if flag_model:
        model = as_spec(flag_model)
        if not same_code(code_entry(model), card["model"]):
            log.warning("--model %s, although the model was trained as %s", flag_model, card["model"]["spec"])
    else:
        model = code_from(card["model"], "--model")
    trained = [t["spec"] for t in card["transforms"]]
    if flags_t:
        if [t.spec for t in flags_t] != trained:
            log.warning("--transform %s, although the model was trained with %s", ", ".join(t.spec for t in flags_t),
                        ", ".join(trained) or "none")
        return model, flags_t
    return model, [code_from(t, "--transform") for t in card["transforms"]]


def load_model(path: str, job: JobConfig, shape, num_classes: int) -> SavedModel:
    """The model at ``path`` as it was trained (see ``chosen``), checked against the topic."""
    state, card = weights_and_card(path)
    try:
        spec, refs = chosen(job, card)
    except ConfigError as exc:
        raise ConfigError(f"--model-path {path}: {exc}") from None
    if card and card.get("input"):
        want = card["input"]["fields"]["image"]
        if list(want["shape"]) != list(shape) or card["label"]["num_classes"] != num_classes:
            raise ConfigError(f"--model-path {path} takes {want['shape']} samples of {card['label']['num_classes']} "
                              f"classes; the test topic holds {list(shape)} samples of {num_classes}")
    model = make_model(spec, shape, num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise ConfigError(f"--model-path {path} does not fit --model {spec_name(spec)} for {list(shape)} x "
                          f"{num_classes} classes: {state_mismatch(model.state_dict(), state)}") from None
    base = card if card and card.get("input") else \
        make_card(spec, refs, shape=shape, dtype="", num_classes=num_classes, class_names=None, train_topic="")
    used = {**base, "model": code_entry(spec), "transforms": [code_entry(t) for t in refs]}
    return SavedModel(model.eval(), spec, Transforms(refs), used, digest(state, used),
                      hashlib.sha256(Path(path).read_bytes()).hexdigest())


def state_mismatch(want: dict, got: dict) -> str:
    """How two state_dicts differ, whole but short: missing, unexpected and reshaped keys."""
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    shaped = [f"{k} {list(got[k].shape)} in the file, {list(want[k].shape)} in the model" for k in want
              if k in got and hasattr(got[k], "shape") and tuple(got[k].shape) != tuple(want[k].shape)]
    parts = [f"{len(v)} {what} (e.g. {'; '.join(v[:2])})" for what, v in
             (("missing", missing), ("unexpected", extra), ("of another shape", shaped)) if v]
    return "; ".join(parts) or "the weights do not load"


def already_predicted(kcfg: KafkaConfig, topic: str, model_digest: str) -> set:
    """(partition, offset) of the inputs this model already has a prediction for;
    another model's predictions neither block nor count."""
    present = kafka.topics(kcfg)
    if topic not in present:
        return set()
    done = set()
    for r in kafka.read_topic(kcfg, topic, present[topic], headers=True, group_id="ddp_kbit.predictions-reader"):
        h = {k: bytes(v).decode(errors="replace") for k, v in (r.headers or [])}
        if h.get(MODEL_DIGEST) != model_digest:
            continue
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
    saved = load_model(model_path, job, m.shape, classes)
    model, transforms = saved.model, saved.transforms
    ds = KafkaDataset(m, kafka=kcfg, data=dataclasses.replace(job.data, shuffle="none"),
                      batch_size=job.train.eval_batch_size, num_classes=classes, keep_keys=bool(predictions),
                      source=job.source)
    done = already_predicted(kcfg, predictions, saved.digest) if predictions else set()
    if predictions and predictions not in kafka.topics(kcfg):
        with kafka.make_admin(kcfg) as admin:   # real Kafka may not auto-create topics
            admin.create_topic(predictions, len(m.partitions))
    confusion = np.zeros((classes, classes), np.int64)
    loss_sum, n, written, skipped = 0.0, 0, 0, 0
    producer = kafka.make_producer(kcfg) if predictions else None
    identity = [("ddp_kbit.model.spec", spec_name(saved.spec).encode()), ("ddp_kbit.model.sha256", saved.sha256.encode()),
                (MODEL_DIGEST, saved.digest.encode()), ("ddp_kbit.source.topic", topic.encode())]
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
    return {"mode": "evaluate", "topic": topic, "model": {"path": str(model_path), "spec": spec_name(saved.spec),
                                                          "transforms": [t["spec"] for t in saved.card["transforms"]],
                                                          "sha256": saved.sha256, "digest": saved.digest,
                                                          "parameters": parameter_count(model)},
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
