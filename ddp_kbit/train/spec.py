"""A run as every rank needs it (:class:`RunSpec`), and how the driver assembles it:
the user's code parsed (a file's text read to travel with the run) and checked on a
batch of the topic's shape, the manifests checked against each other and the flags,
the checkpoint directory and what to resume from. Everything here runs before any
rank starts, so each mistake is one line."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from ddp_kbit.config import (
    CheckpointConfig,
    DataConfig,
    FollowConfig,
    JobConfig,
    KafkaConfig,
    MetricsConfig,
    SourceConfig,
    TrainConfig,
)
from ddp_kbit.data import manifest
from ddp_kbit.data.manifest import Manifest
from ddp_kbit.data.plan import Slice, ranges_to_slices
from ddp_kbit.errors import UserError
from ddp_kbit.train import checkpoint, models, usercode
from ddp_kbit.train.modelcard import make_card
from ddp_kbit.train.models import spec_name
from ddp_kbit.train.transforms import Transforms
from ddp_kbit.train.usercode import CodeRef

log = logging.getLogger("ddp_kbit.driver")


@dataclass(frozen=True)
class RunSpec:
    """Everything a rank needs, picklable: sent by the driver through TorchDistributor.
    Paths are absolute: a rank on an executor starts in another working directory.
    User code (model, transforms, handlers) travels as :class:`CodeRef`s, a file's
    text included."""

    kafka: KafkaConfig
    data: DataConfig
    train: TrainConfig
    checkpoint: CheckpointConfig     # ``dir`` resolved
    train_topic: Manifest
    test_topic: Manifest | None
    num_classes: int
    run_dir: str
    model: object = "cnn3"                 # a built-in name, a CodeRef, or a callable (Python API)
    transforms: tuple = ()                 # CodeRefs or callables
    handlers: tuple[CodeRef, ...] = ()
    source: SourceConfig = SourceConfig()    # registry credentials of foreign topics (never in a manifest)
    metrics: MetricsConfig = MetricsConfig()
    log_level: str = "INFO"
    progress: bool = True
    use_gpu: bool = False
    collective_timeout_s: float = 180.0
    resume_from: str | None = None
    dead_lettered: frozenset = frozenset()   # (topic, partition, offset) already in a DLQ
    follow: FollowConfig | None = None       # --follow: windows of new records instead of epochs
    follow_start: dict = field(default_factory=dict)   # partition -> first offset the run trains

    @property
    def model_spec(self) -> str:
        return spec_name(self.model)

    def card(self) -> dict:
        """What the trained model needs beside its weights (model.json, checkpoints)."""
        t = self.train_topic
        return make_card(self.model, self.transforms, shape=t.shape, dtype=t.dtype, num_classes=self.num_classes,
                         class_names=t.class_names, train_topic=t.topic, augment=self.train.augment)

    @property
    def train_slices(self) -> list[Slice]:
        return ranges_to_slices(self.train_topic.topic, self.train_topic.partitions)

    def belongs_to(self) -> dict:
        """What a checkpoint of this run is for; a resume must match it exactly (a
        followed topic grows: its start positions say which run it is)."""
        ranges = lambda m: {str(p): list(r) for p, r in sorted(m.partitions.items())}  # noqa: E731
        where = {"follow_start": {str(p): o for p, o in sorted(self.follow_start.items())}} if self.follow_start \
            else {"train_ranges": ranges(self.train_topic)}
        return {"train_topic": self.train_topic.topic, **where,
                "test_topic": self.test_topic.topic if self.test_topic else None, "model": self.model_spec,
                "shape": list(self.train_topic.shape), "dtype": self.train_topic.dtype,
                "num_classes": self.num_classes}


def check_local_inputs(job: JobConfig, model=None, transforms=()) -> None:
    """What is on this machine, checked before Kafka or Spark is touched: the model,
    transform and handler code (files read, functions imported), schema files."""
    model, refs, handlers = user_code(job, model, transforms)
    for ref, what in ((model, "--model"), *((t, "--transform") for t in refs), *((h, "--handler") for h in handlers)):
        if isinstance(ref, usercode.CodeRef):
            usercode.load(ref, what)
    if job.source.value_schema and not Path(job.source.value_schema).is_file():
        raise UserError(f"--value-schema {job.source.value_schema} does not exist")


def check_compatible(train: manifest.Manifest, test: manifest.Manifest, data: DataConfig) -> int:
    """The manifests are the source of truth; a flag that contradicts one is the
    error. Returns the class count."""
    if tuple(train.shape) != tuple(test.shape) or train.dtype != test.dtype:
        raise UserError(f"train topic {train.topic} holds {list(train.shape)} {train.dtype} samples but test topic "
                        f"{test.topic} holds {list(test.shape)} {test.dtype}")
    for m in (train, test):
        if data.format is not None and m.format != data.format:
            raise UserError(f"topic {m.topic} is {m.format} (its {m.origin} says so), but --format {data.format} "
                            "was given; leave --format out or name another topic")
    classes = train.num_classes or test.num_classes
    if classes is None:
        raise UserError(f"topic {train.topic} has no manifest, so its class count is unknown; "
                        "publish it with `python -m producers.publish` to get one")
    return classes


def user_code(job: JobConfig, model=None, transforms=()) -> tuple:
    """The run's model, transforms and handlers: the job's specs parsed (a file's text
    read now, to travel with the spec), or the caller's own callables (Python API)."""
    model = model if model is not None else job.train.model
    if isinstance(model, str) and usercode.is_spec(model):
        model = usercode.parse(model, "--model")
    refs = tuple(t if callable(t) else usercode.parse(t, "--transform") for t in (*job.train.transforms, *transforms))
    handlers = tuple(usercode.parse(h, "--handler") for h in job.train.handlers)
    return model, refs, handlers


def check_user_code(model, transforms, augment: bool, shape, num_classes: int) -> int:
    """Before any rank starts: build the model and run one forward pass, and call the
    transforms once, on a batch of the topic's shape; every mistake is one line
    naming the spec (exit 2). Returns the model's parameter count."""
    count = models.check_model(model, shape, num_classes)
    Transforms(transforms, builtin_augment=augment).check(models.example_batch(shape), num_classes)
    return count


def checkpoint_dir(job: JobConfig, run_dir: Path) -> Path:
    return Path(job.checkpoint.dir).expanduser().resolve() if job.checkpoint.dir else run_dir / "checkpoints"


def build_spec(job: JobConfig, kcfg: KafkaConfig, manifests: dict, run_dir: Path, model=None,
               transforms=()) -> RunSpec:
    """``manifests``: train and test, as far as the broker holds them; ``model`` and
    ``transforms``: callables of the Python API, on top of the job's specs."""
    train, test = manifests["train"], manifests["test"]
    classes = check_compatible(train, test, job.data)
    model, transforms, handlers = user_code(job, model, transforms)
    params = check_user_code(model, transforms, job.train.augment, train.shape, classes)
    log.info("model %s: %d parameters", getattr(model, "spec", model), params)
    ckpt_dir = checkpoint_dir(job, run_dir)
    found = checkpoint.latest_readable(ckpt_dir) if job.checkpoint.resume else checkpoint.latest(ckpt_dir)
    if job.checkpoint.resume and found is None:
        raise UserError(f"--resume: no checkpoint in {ckpt_dir}")
    if not job.checkpoint.resume and found is not None:
        raise UserError(f"checkpoint directory {ckpt_dir} already holds checkpoints ({found.name}); pass --resume "
                        "to continue from them, or choose another --checkpoint-dir")
    return RunSpec(kafka=kcfg, data=job.data, train=job.train,
                   checkpoint=replace(job.checkpoint, dir=str(ckpt_dir)), train_topic=train, test_topic=test,
                   num_classes=classes, run_dir=str(run_dir), model=model, transforms=transforms, handlers=handlers,
                   source=job.source, metrics=job.metrics,
                   log_level=job.general.log_level,
                   progress=job.general.progress, use_gpu=job.spark.gpu,
                   collective_timeout_s=job.spark.collective_timeout_s,
                   resume_from=str(found) if job.checkpoint.resume else None)
