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

import torch
import torch.nn.functional as F
from ignite.engine import Events

from ddp_kbit import kafka
from ddp_kbit.config import JobConfig, KafkaConfig, TrainConfig
from ddp_kbit.data import manifest as manifests
from ddp_kbit.data.describe import describe
from ddp_kbit.data.kafka_dataset import KafkaDataset
from ddp_kbit.errors import ConfigError, first_line
from ddp_kbit.plots import plot_confusion
from ddp_kbit.progress import Progress
from ddp_kbit.reports import EvaluateReport
from ddp_kbit.train import checkpoint, usercode
from ddp_kbit.train.engines import make_evaluator
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
                 limit: int | None = None) -> EvaluateReport:
    """The saved model on the test topic, through ignite's evaluator and metrics
    (accuracy, loss, confusion matrix, per-class precision and recall); predictions
    written by a handler as each batch is scored."""
    topic = job.data.test_topic or job.inspect.topic
    m = describe(kcfg, topic, job.source, write=False)[0] if job.source.described else manifests.resolve(kcfg, topic)
    classes = m.num_classes
    if classes is None:
        raise ConfigError(f"topic {topic} has no manifest, so its class count is unknown; describe it first")
    saved = load_model(model_path, job, m.shape, classes)
    ds = KafkaDataset(m, kafka=kcfg, data=dataclasses.replace(job.data, shuffle="none"),
                      batch_size=job.train.eval_batch_size, num_classes=classes, keep_keys=bool(predictions),
                      source=job.source)
    ev = make_evaluator(saved.model, torch.device("cpu"), saved.transforms, num_classes=classes)
    writer = Predictions(kcfg, predictions, m, saved) if predictions else None
    seen = {"n": 0}

    @ev.on(Events.ITERATION_COMPLETED)
    def _scored(engine):
        logits, y, batch = engine.state.output
        seen["n"] += len(y)
        if writer is not None:
            writer.write(batch, logits)
        if limit is not None and seen["n"] >= limit:
            engine.terminate()

    try:
        with Progress(len(ds), f"evaluate {topic}", unit="batch", enabled=job.general.progress) as bar:
            ev.add_event_handler(Events.ITERATION_COMPLETED, lambda _: bar.update(1))
            ev.run((b for b in ds if len(b)), max_epochs=1)   # an all-bad batch has nothing to score
    finally:
        if writer is not None:
            writer.close()
    return report_of(ev.state.metrics, seen["n"], m, topic, saved, model_path, ds, writer, run_dir)


def report_of(metrics: dict, n: int, m, topic: str, saved: SavedModel, model_path: str, ds, writer,
              run_dir: Path) -> EvaluateReport:
    classes = m.num_classes
    names = list(m.class_names) if m.class_names else [str(i) for i in range(classes)]
    confusion = metrics["confusion"].to(torch.int64).tolist() if n else [[0] * classes for _ in range(classes)]
    png = plot_confusion(confusion, names, run_dir / "confusion.png", f"{topic}: {n} records")
    support = [sum(row) for row in confusion]
    per_class = {name: {"precision": float(metrics["precision"][i]) if n else 0.0,
                        "recall": float(metrics["recall"][i]) if n else 0.0, "support": support[i]}
                 for i, name in enumerate(names)}
    model = {"path": str(model_path), "spec": spec_name(saved.spec),
             "transforms": [t["spec"] for t in saved.card["transforms"]], "sha256": saved.sha256,
             "digest": saved.digest, "parameters": parameter_count(saved.model)}
    return EvaluateReport(topic, model, n, float(metrics["accuracy"]) if n else float("nan"),
                          float(metrics["loss"]) if n else float("nan"), per_class, confusion, str(png),
                          ds.bad.to_dict() if ds.bad else None, writer.summary() if writer else None)


class Predictions:
    """One record per input on the predictions topic: the source record's key; JSON
    index, label, prediction, probabilities; headers naming the model (its digest)
    and the source record. Exactly once per input and model, across reruns."""

    def __init__(self, kcfg: KafkaConfig, topic: str, m, saved: SavedModel):
        self.topic, self.written, self.skipped = topic, 0, 0
        self.done = already_predicted(kcfg, topic, saved.digest)
        if topic not in kafka.topics(kcfg):
            with kafka.make_admin(kcfg) as admin:   # real Kafka may not auto-create topics
                admin.create_topic(topic, len(m.partitions))
        self.producer = kafka.make_producer(kcfg)
        self.identity = [("ddp_kbit.model.spec", spec_name(saved.spec).encode()),
                         ("ddp_kbit.model.sha256", saved.sha256.encode()), (MODEL_DIGEST, saved.digest.encode()),
                         ("ddp_kbit.source.topic", m.topic.encode())]

    def write(self, batch, logits: torch.Tensor) -> None:
        pred, probs = logits.argmax(1), F.softmax(logits, 1)
        for i, (p, o) in enumerate(batch.offsets.tolist()):
            if (p, o) in self.done:
                self.skipped += 1
                continue
            value = {"index": int(batch.indices[i]), "label": int(batch.labels[i]), "prediction": int(pred[i]),
                     "probabilities": [round(float(v), 6) for v in probs[i]]}
            self.producer.send(self.topic, json.dumps(value, separators=(",", ":")).encode(), key=batch.keys[i],
                               headers=[*self.identity, (SRC_PARTITION, str(p).encode()),
                                        (SRC_OFFSET, str(o).encode())])
            self.done.add((p, o))
            self.written += 1

    def close(self) -> None:
        left = self.producer.flush(60)
        self.producer.close()
        if left:
            log.error("%d predictions were not acknowledged", left)

    def summary(self) -> dict:
        return {"topic": self.topic, "written": self.written, "already_there": self.skipped}
