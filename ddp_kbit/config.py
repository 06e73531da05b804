"""Per-part frozen configs, grouped in one :class:`JobConfig`, plus file + CLI merging.

Precedence: dataclass defaults < config file section < command-line flags. Each
part validates itself in ``__post_init__`` and names the allowed values; each part
of the program receives only its own config. A config file is TOML (or JSON) with
one section per part (``[kafka]``, ``[data]``, ``[train]`` ...); unknown sections
and keys are errors naming the allowed ones, and a value of the wrong type names
its field. No torch import here: ``--help`` and config errors stay fast.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddp_kbit.errors import ConfigError
from ddp_kbit.wire.sample import FORMATS, LAYOUTS, topic_name

CLIENTS = ("confluent", "kafka-python")
COMPRESSIONS = ("none", "gzip", "lz4", "zstd", "snappy")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MODELS = ("cnn3", "cnn", "mlp")            # ddp_kbit.train.models builds these
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "onecycle", "step")
DATASETS = ("fashion-mnist", "mnist", "gtsrb", "npz", "synthetic")
SHUFFLES = ("window", "none")      # ddp_kbit.data.partitions plans these
MANIFEST_TOPIC = "ddp_kbit.manifests"
DEFAULT_FORMAT = "avro"            # of the default topics, when no --format is given


def one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def positive(name: str, value, allow_zero: bool = False) -> None:
    if value is None or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {value!r}")


def fraction(name: str, value) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{name} must be within 0..1; got {value}")


@dataclass(frozen=True)
class GeneralConfig:
    """Logging, where a run's files go, progress output."""

    log_level: str = "INFO"
    run_dir: str | None = None      # default runs/<timestamp>/
    report: str | None = None       # default <run dir>/report.json
    progress: bool = True

    def __post_init__(self):
        one_of("log_level", self.log_level, LOG_LEVELS)


@dataclass(frozen=True)
class KafkaConfig:
    """Connection settings shared by every client. ``bootstrap_servers=None`` means
    the embedded broker. Security settings pass through to both client libraries;
    secrets never appear in a repr, a log line or a report."""

    bootstrap_servers: str | None = None
    client: str = "confluent"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = field(default=None, repr=False)
    request_timeout_s: float = 10.0

    def __post_init__(self):
        one_of("client", self.client, CLIENTS)
        one_of("security_protocol", self.security_protocol, SECURITY_PROTOCOLS)
        if self.sasl_mechanism is not None:
            one_of("sasl_mechanism", self.sasl_mechanism, SASL_MECHANISMS)
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ConfigError(f"security_protocol {self.security_protocol} needs --sasl-mechanism")
        positive("request_timeout_s", self.request_timeout_s)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values no log line, report or file may show."""
        return tuple(s for s in (self.sasl_password, self.ssl_password) if s)

    def with_servers(self, servers: str) -> KafkaConfig:
        return dataclasses.replace(self, bootstrap_servers=servers)


@dataclass(frozen=True)
class DataConfig:
    """Which topics a run reads and how the stream reads them."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None     # where the dataset is read from when its topics must be published
    format: str | None = None       # taken from the manifest; names the default topics (avro if not given)
    layout: str = "bytes"
    train_topic: str | None = None
    test_topic: str | None = None
    prefetch: int = 4               # batches decoded ahead of the training step
    max_bad_fraction: float = 0.01
    stall_timeout_s: float = 60.0   # no record for this long -> a clear error, not a hang
    poll_records: int = 20_000      # records per poll
    buffer_records: int = 50_000    # per-partition read-ahead before pausing the partition
    shuffle: str = "window"         # "window": chunks dealt to ranks + a window permutation; "none": offset order
    shuffle_chunk: int = 4096       # offsets per chunk (one seek each); shorter gaps are read through
    shuffle_window: int = 32768     # records read, decoded and permuted together (also without shuffle)
    allow_missing_records: bool = False  # train on what is left when retention deleted planned records
    dlq_max_bytes: int = 1_000_000  # a bad record larger than this is dead-lettered without its value

    def __post_init__(self):
        one_of("dataset", self.dataset, DATASETS)
        if self.format is not None:
            one_of("format", self.format, FORMATS)
        one_of("layout", self.layout, LAYOUTS)
        one_of("shuffle", self.shuffle, SHUFFLES)
        for name in ("prefetch", "stall_timeout_s", "poll_records", "buffer_records", "shuffle_chunk",
                     "shuffle_window", "dlq_max_bytes"):
            positive(name, getattr(self, name))
        fraction("max_bad_fraction", self.max_bad_fraction)

    def topic(self, split: str) -> str:
        given = self.train_topic if split == "train" else self.test_topic
        return given or topic_name(self.dataset, split, self.format or DEFAULT_FORMAT, self.layout)

    @property
    def default_topics(self) -> bool:
        return self.train_topic is None and self.test_topic is None


FRAMINGS = ("none", "confluent")


@dataclass(frozen=True)
class SourceConfig:
    """How to read a topic that was not written to wire contract v1 (``[source]``):
    the value's format and schema, where the image and the label are, the sample
    type, and the framing. Empty (``value_format=None``) means contract v1."""

    value_format: str | None = None      # json | avro | protobuf | bson
    value_schema: str | None = None      # .avsc, or .proto (with value_message); the reader schema with a registry
    value_message: str | None = None     # protobuf message name in value_schema
    image_field: str = "image"           # path, e.g. features.pixels
    label_field: str = "label"
    shape: tuple[int, ...] = ()          # H,W[,C]; inferred by --mode describe when it can be
    dtype: str | None = None             # uint8 | float32; inferred by describe
    num_classes: int | None = None
    classes: tuple[str, ...] = ()        # string labels, in class-index order
    framing: str = "none"                # none | confluent (Schema Registry wire format)
    schema_registry: str | None = None   # URL
    registry_user: str | None = None
    registry_password: str | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.value_format is not None:
            one_of("value_format", self.value_format, FORMATS)
        one_of("framing", self.framing, FRAMINGS)
        if self.dtype is not None:
            one_of("dtype", self.dtype, ("uint8", "float32"))
        if self.shape and (not 2 <= len(self.shape) <= 3 or any(d < 1 for d in self.shape)):
            raise ConfigError(f"shape must be H,W or H,W,C with every dimension > 0; got {list(self.shape)}")
        if self.num_classes is not None:
            positive("num_classes", self.num_classes)
        if self.classes and self.num_classes is not None and len(self.classes) != self.num_classes:
            raise ConfigError(f"{len(self.classes)} classes named but num_classes is {self.num_classes}")
        if self.value_format is None and any((self.value_schema, self.shape, self.dtype, self.framing != "none")):
            raise ConfigError("a source description needs --value-format (json, avro, protobuf or bson)")
        if self.framing == "confluent" and not self.schema_registry and not self.value_schema:
            raise ConfigError("--framing confluent needs --schema-registry URL (or --value-schema for one writer schema)")
        if self.value_format == "protobuf" and self.value_schema and not self.value_message:
            raise ConfigError("a .proto --value-schema needs --value-message NAME")
        if self.value_format == "protobuf" and not self.value_schema and self.framing != "confluent":
            raise ConfigError("protobuf values need --value-schema FILE.proto and --value-message NAME "
                              "(or --framing confluent with a registry)")

    @property
    def described(self) -> bool:
        return self.value_format is not None

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.registry_password,) if self.registry_password else ()

    def to_dict(self) -> dict:
        """For a manifest: the description without credentials."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("registry_user", "registry_password")}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, d: dict) -> SourceConfig:
        return build(cls, d, where="source")


@dataclass(frozen=True)
class TrainConfig:
    """Model and optimisation, per rank."""

    model: str = "cnn3"            # built-in name, MODULE:FUNCTION or PATH.py:FUNCTION
    epochs: int = 5
    batch_size: int = 128           # per rank, per step
    eval_batch_size: int = 1000
    lr: float = 5e-3                # the peak of the one-cycle schedule
    optimizer: str = "adam"
    momentum: float = 0.9           # sgd only
    weight_decay: float = 0.0
    lr_schedule: str = "onecycle"
    amp: bool = False               # CUDA only
    grad_accum: int = 1
    seed: int = 0
    label_smoothing: float = 0.1
    augment: bool = False           # built-in random crop + flip of image batches, on the device, training only
    transforms: tuple[str, ...] = ()  # batch transforms, MODULE:FUNCTION or PATH.py:FUNCTION, in order
    handlers: tuple[str, ...] = ()  # extra ignite handlers, MODULE:FUNCTION or PATH.py:FUNCTION
    follow: bool = False            # keep training on new records in windows ([follow] says how)

    def __post_init__(self):
        if ":" not in self.model:
            one_of("model", self.model, MODELS + ("MODULE:FUNCTION", "PATH.py:FUNCTION"))
        one_of("optimizer", self.optimizer, OPTIMIZERS)
        one_of("lr_schedule", self.lr_schedule, SCHEDULES)
        for name in ("epochs", "batch_size", "eval_batch_size", "lr", "grad_accum"):
            positive(name, getattr(self, name))
        positive("weight_decay", self.weight_decay, allow_zero=True)
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be within 0..1; got {self.label_smoothing}")
        for kind, specs in (("handler", self.handlers), ("transform", self.transforms)):
            for h in specs:
                where, _, name = h.rpartition(":")
                if not where or not name:
                    raise ConfigError(f"{kind} must be MODULE:FUNCTION or PATH.py:FUNCTION; got {h!r}")


START_AT = ("earliest", "latest", "manifest")


@dataclass(frozen=True)
class FollowConfig:
    """Continuous training (``--follow``): windows of new records, each planned like an epoch."""

    start_at: str = "earliest"           # earliest | latest | manifest (after its snapshot) | an ISO 8601 time
    window_records: int = 10_000         # a window closes at this many new records...
    window_seconds: float = 60.0         # ...or after this long with at least one new record
    until_idle_s: float | None = None    # stop after this long without new records (the rest trained first)
    max_windows: int | None = None
    replay_fraction: float = 0.0         # older records mixed into each window (rehearsal), per new record
    prequential: bool = True             # score each batch before training on it (test-then-train)
    publish_model: str | None = None     # DIR: model-<window>.pt + latest.json after each window
    model_topic: str | None = None       # a small record pointing at each published snapshot
    publish_tolerance: float | None = None  # publish only when accuracy is at most this much below the last one

    def __post_init__(self):
        if self.start_at not in START_AT:
            from datetime import datetime

            try:
                datetime.fromisoformat(self.start_at)
            except ValueError:
                raise ConfigError(f"start_at must be one of {', '.join(START_AT)} or an ISO 8601 time "
                                  f"(2026-12-01T12:00:00+00:00); got {self.start_at!r}") from None
        positive("window_records", self.window_records)
        positive("window_seconds", self.window_seconds)
        for name in ("until_idle_s", "max_windows"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name))
        if not 0 <= self.replay_fraction <= 10:
            raise ConfigError(f"replay_fraction must be within 0..10; got {self.replay_fraction}")
        if self.publish_tolerance is not None:
            positive("publish_tolerance", self.publish_tolerance, allow_zero=True)

    def start_time_ms(self) -> int | None:
        from datetime import UTC, datetime

        if self.start_at in START_AT:
            return None
        t = datetime.fromisoformat(self.start_at)
        return int((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp() * 1000)


@dataclass(frozen=True)
class CheckpointConfig:
    dir: str | None = None          # default <run dir>/checkpoints; shared storage on a cluster
    every: int = 0                  # steps; 0 = only at epoch ends
    resume: bool = False
    max_restarts: int = 0
    keep: int = 3                   # newest checkpoints kept

    def __post_init__(self):
        positive("checkpoint every", self.every, allow_zero=True)
        positive("max_restarts", self.max_restarts, allow_zero=True)
        positive("checkpoint keep", self.keep)


@dataclass(frozen=True)
class SparkConfig:
    master: str | None = None        # default: spark-defaults.conf, else local[N]
    num_processes: int = 2
    distributed: bool = False        # barrier tasks on executors instead of local_mode
    gpu: bool = False                # one GPU per rank (spark_conf/gpu.conf), NCCL
    rapids: bool = False             # the RAPIDS Accelerator on the Spark side (spark_conf/rapids.conf)
    conf: tuple[str, ...] = ()       # KEY=VALUE overrides
    conf_dir: str | None = None      # default: the shipped spark_conf/ (ddp_kbit.assets)
    collective_timeout_s: float = 180.0  # no rank waits longer on a collective (a dead peer)
    launch_timeout_s: float = 180.0  # a barrier stage that cannot get its slots fails after this long
    ship_package: bool = False       # send the package zip with each launch (executors without ddp_kbit)
    secret_file: str | None = None   # a standalone cluster's RPC secret (spark.authenticate); default: main_cluster's

    def __post_init__(self):
        positive("num_processes", self.num_processes)
        positive("collective_timeout_s", self.collective_timeout_s)
        positive("launch_timeout_s", self.launch_timeout_s)
        for kv in self.conf:
            if "=" not in kv:
                raise ConfigError(f"--spark-conf takes KEY=VALUE, got {kv!r}")


@dataclass(frozen=True)
class PublishConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    split: str = "train"
    format: str = DEFAULT_FORMAT
    layout: str = "bytes"
    topic: str | None = None
    partitions: int = 4
    compression: str = "none"
    limit: int | None = None
    force: bool = False
    manifest_topic: str = MANIFEST_TOPIC
    rate: float | None = None       # live: records per second, appended pass after pass
    duration_s: float | None = None  # live: for this long...
    repeat: int | None = None       # ...or this many passes over the dataset

    def __post_init__(self):
        one_of("dataset", self.dataset, DATASETS)
        for name in ("rate", "duration_s", "repeat"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name))
        if (self.duration_s is not None or self.repeat is not None) and self.rate is None:
            raise ConfigError("--duration and --repeat go with --rate R (a live producer)")
        if self.duration_s is not None and self.repeat is not None:
            raise ConfigError("give --duration or --repeat, not both")
        one_of("split", self.split, ("train", "test"))
        one_of("format", self.format, FORMATS)
        one_of("layout", self.layout, LAYOUTS)
        one_of("compression", self.compression, COMPRESSIONS)
        positive("partitions", self.partitions)
        if self.limit is not None:
            positive("limit", self.limit)

    @property
    def topic_name(self) -> str:
        return self.topic or topic_name(self.dataset, self.split, self.format, self.layout)


@dataclass(frozen=True)
class SyntheticConfig:
    """The seeded synthetic dataset (``--dataset synthetic``)."""

    shape: tuple[int, ...] = (28, 28)
    num_classes: int = 10
    num_samples: int = 1000
    seed: int = 0
    dtype: str = "uint8"

    def __post_init__(self):
        if not 2 <= len(self.shape) <= 3 or any(d < 1 for d in self.shape):
            raise ConfigError(f"shape must be H,W or H,W,C with every dimension > 0; got {list(self.shape)}")
        positive("num_classes", self.num_classes)
        positive("num_samples", self.num_samples)
        one_of("dtype", self.dtype, ("uint8", "float32"))


WORKLOADS = ("publish", "ingest", "train")
# topics we did not write, as study formats (ddp_kbit.experiment.foreign publishes them)
FOREIGN_SHAPES = ("json-image", "bson-mongo", "avro-user", "avro-confluent", "protobuf-user")


@dataclass(frozen=True)
class ExperimentConfig:
    """A study: a grid of conditions, each measured ``iterations`` times (after
    ``warmup`` unrecorded-in-statistics ones). A preset (``experiments/<name>.toml``)
    sets these; the config file's ``[experiment]`` and flags override it."""

    preset: str = "formats"
    description: str = ""
    formats: tuple[str, ...] = FORMATS
    layouts: tuple[str, ...] = ("bytes",)
    compressions: tuple[str, ...] = ("none",)
    clients: tuple[str, ...] = ("confluent",)
    workloads: tuple[str, ...] = ("publish", "ingest")
    num_processes: tuple[int, ...] = (1,)
    shuffles: tuple[str, ...] = ("window",)   # the stream's plans compared (ingest, train)
    iterations: int = 10
    warmup: int = 1
    limit: int | None = None        # records per topic; default the whole split
    epochs: int = 1                 # of the train workload
    passes: int = 1                 # reads of the whole topic per ingest measurement (a consumer each, like epochs)
    partitions: int = 4             # of the topics the study publishes
    output_dir: str | None = None   # default <run dir>/experiment
    seed: int = 0                   # bootstrap resampling
    confidence: float = 0.95

    def __post_init__(self):
        for name, allowed in (("formats", FORMATS + FOREIGN_SHAPES), ("layouts", LAYOUTS),
                              ("compressions", COMPRESSIONS), ("clients", CLIENTS), ("workloads", WORKLOADS),
                              ("shuffles", SHUFFLES)):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"{name} must name at least one of {', '.join(allowed)}")
            for v in values:
                one_of(name[:-1], v, allowed)
        for n in self.num_processes:
            positive("num_processes", n)
        for name in ("iterations", "epochs", "passes", "partitions"):
            positive(name, getattr(self, name))
        positive("warmup", self.warmup, allow_zero=True)
        if self.limit is not None:
            positive("limit", self.limit)
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be within 0..1; got {self.confidence}")


@dataclass(frozen=True)
class InspectConfig:
    """What ``--mode describe`` and ``--mode inspect`` read."""

    topic: str | None = None
    limit: int | None = None        # records; default describe 1000, inspect all
    scan: bool = False              # describe: every record, not a sample

    def __post_init__(self):
        if self.limit is not None:
            positive("limit", self.limit)


@dataclass(frozen=True)
class EvaluateConfig:
    """``--mode evaluate``: which model, and where its predictions go."""

    model_path: str | None = None         # a run's model.pt, or a checkpoint
    predictions_topic: str | None = None  # one record per input


@dataclass(frozen=True)
class MetricsConfig:
    """Operating a run: Prometheus metrics and committed offsets for lag tools."""

    port: int | None = None           # the driver serves /metrics here; rank r serves on port + 1 + r
    commit_group: str | None = None   # consumer group for trained offsets (default ddp_kbit.<train topic>; none: off)

    def __post_init__(self):
        if self.port is not None and not 1 <= self.port <= 65000:
            raise ConfigError(f"metrics port must be within 1..65000; got {self.port}")

    def group_for(self, topic: str) -> str | None:
        if self.commit_group == "none":
            return None
        return self.commit_group or f"ddp_kbit.{topic}"


@dataclass(frozen=True)
class JobConfig:
    """Everything ``ddp-kbit`` runs with, one part per section (torchtitan-style)."""

    general: GeneralConfig = GeneralConfig()
    kafka: KafkaConfig = KafkaConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    spark: SparkConfig = SparkConfig()
    experiment: ExperimentConfig = ExperimentConfig()
    source: SourceConfig = SourceConfig()
    inspect: InspectConfig = InspectConfig()
    follow: FollowConfig = FollowConfig()
    metrics: MetricsConfig = MetricsConfig()
    evaluate: EvaluateConfig = EvaluateConfig()


def sections_of(cls) -> dict[str, type]:
    """Section name -> part class of a grouping dataclass such as JobConfig."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def load_config_file(path: str | Path | None, sections: typing.Iterable[str]) -> dict[str, dict]:
    """A TOML or JSON file of ``sections``; any other section is an error."""
    if not path:
        return {}
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        data = json.loads(text) if kind == "JSON" else tomllib.loads(text.decode())
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"config file {path} must hold sections of key = value tables")
    allowed = list(sections)
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"config file {path}: unknown section(s) {', '.join(f'[{u}]' for u in unknown)}; "
                          f"allowed: {', '.join(f'[{a}]' for a in allowed)}")
    return data


def build(cls, section: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None,
          where: str | None = None):
    """A part from its file section and CLI overrides (None = not given)."""
    where = where or cls.__name__
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    section = {k.replace("-", "_"): v for k, v in (section or {}).items()}
    unknown = sorted(set(section) - set(names))
    if unknown:
        raise ConfigError(f"unknown {where} key(s) {', '.join(unknown)}; allowed: {', '.join(names)}")
    values = {k: coerce(f"{where}.{k}", v, hints[k]) for k, v in section.items()}
    values.update({k: coerce(f"{where}.{k}", v, hints[k]) for k, v in (overrides or {}).items()
                   if k in names and v is not None})
    return cls(**values)


def build_group(cls, file_cfg: Mapping[str, Mapping], overrides: Mapping[str, Mapping[str, Any]]):
    """A grouping dataclass (JobConfig) from file sections and per-section overrides."""
    return cls(**{name: build(part, file_cfg.get(name), overrides.get(name), where=name)
                  for name, part in sections_of(cls).items()})


def coerce(name: str, value, hint):
    """``value`` as the field's type, or a ConfigError that names the field."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, str) and item is str:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list; got {value!r}")
        return tuple(coerce(name, v, item) for v in value)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # nan passes every comparison-based check after this one
            raise ConfigError(f"{name} must be a finite number; got {value!r}")
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))
    raise ConfigError(f"{name} must be {kind}; got {value!r}")


def as_dict(cfg) -> dict[str, Any]:
    """For reports: secrets are masked."""
    out = dataclasses.asdict(cfg)
    _mask(out)
    return out


def _mask(obj) -> None:
    for key, value in obj.items():
        if isinstance(value, dict):
            _mask(value)
        elif "password" in key and value:
            obj[key] = "***"
