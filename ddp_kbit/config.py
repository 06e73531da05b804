"""Per-part frozen configs, grouped in one :class:`JobConfig`, plus file + CLI merging.

Each setting has one home: its field here. The field's ``setting(...)`` holds its
help text (the command line's ``--help``, the docs' reference), its flag when that is
not ``--<name>``, and how the command line parses it; a ``Literal`` type names the
allowed values (the flag's choices, and the check every part makes on creation).
:mod:`ddp_kbit.cli` builds every command's flags from these fields.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from ddp_kbit.errors import ConfigError
from ddp_kbit.wire.sample import FORMATS, LAYOUTS, topic_name

Format = Literal[FORMATS]          # the wire contract's formats (ddp_kbit.wire.sample)
Layout = Literal[LAYOUTS]
Client = Literal["confluent", "kafka-python"]
Compression = Literal["none", "gzip", "lz4", "zstd", "snappy"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
Model = Literal["cnn3", "cnn", "mlp"]      # ddp_kbit.train.models builds these
Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["none", "cosine", "onecycle", "step"]
Dataset = Literal["fashion-mnist", "mnist", "gtsrb", "npz", "synthetic"]
ShuffleKind = Literal["window", "none"]     # ddp_kbit.data.plan plans these
Framing = Literal["none", "confluent"]
Dtype = Literal["uint8", "float32"]
Split = Literal["train", "test"]
Workload = Literal["publish", "ingest", "train"]
# topics we did not write, as study formats (ddp_kbit.experiment.shapes publishes them)
ForeignShape = Literal["json-image", "bson-mongo", "avro-user", "avro-confluent", "protobuf-user"]
StudyFormat = Literal[FORMATS + typing.get_args(ForeignShape)]

CLIENTS, COMPRESSIONS = typing.get_args(Client), typing.get_args(Compression)
SECURITY_PROTOCOLS, SASL_MECHANISMS = typing.get_args(SecurityProtocol), typing.get_args(SaslMechanism)
LOG_LEVELS, MODELS, OPTIMIZERS = typing.get_args(LogLevel), typing.get_args(Model), typing.get_args(Optimizer)
SCHEDULES, DATASETS, SHUFFLES = typing.get_args(Schedule), typing.get_args(Dataset), typing.get_args(ShuffleKind)
FRAMINGS, WORKLOADS, FOREIGN_SHAPES = typing.get_args(Framing), typing.get_args(Workload), typing.get_args(ForeignShape)
MANIFEST_TOPIC = "ddp_kbit.manifests"
DEFAULT_FORMAT = "avro"            # of the default topics, when no --format is given
START_AT = ("earliest", "latest", "manifest")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
            metavar: str | None = None, parse: Callable[[str], Any] | None = None, repeat: bool = False,
            negate: bool = False, group: str | None = None, cli: bool = True, secret: bool = False) -> Any:
    """A config field with its command-line face. ``flag``: when not ``--<name>``;
    ``parse``: text -> value (default: from the field's type); ``repeat``: the flag
    may be given again to add an item; ``negate``: a ``--no-...`` flag that turns a
    default-on switch off; ``group``: the section whose flags it sits with;
    ``cli=False``: config file only; ``secret``: never in a repr (nor a report)."""
    meta = {"help": help, "flag": flag, "metavar": metavar, "parse": parse, "repeat": repeat, "negate": negate,
            "group": group, "cli": cli}
    return field(default=default, repr=not secret, metadata=meta)


def one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def positive(name: str, value, allow_zero: bool = False) -> None:
    if value is None or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {value!r}")


def fraction(name: str, value) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{name} must be within 0..1; got {value}")


def literal_values(hint) -> tuple | None:
    """The allowed values of a ``Literal`` type (``X | None`` and tuples of it too)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next((a for a in typing.get_args(hint) if a is not type(None)), None)
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


class Part:
    """A config part: its ``Literal`` fields are checked on creation (one line naming
    the allowed values), then :meth:`check` for the rest. ``title`` heads its flags."""

    title: ClassVar[str] = ""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            allowed = literal_values(hints[f.name])
            value = getattr(self, f.name)
            if allowed is None or value is None:
                continue
            for v in value if isinstance(value, tuple) else (value,):
                one_of(f.name[:-1] if isinstance(value, tuple) else f.name, v, allowed)
        self.check()

    def check(self) -> None:
        pass


def comma_ints(text: str) -> tuple[int, ...]:
    """``28,28`` -> (28, 28)."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"expected integers separated by commas, e.g. 28,28; got {text!r}") from None


def shape_ints(text: str) -> tuple[int, ...]:
    """``28,28`` or ``32,32,3`` -> a sample's shape; the error names what a shape is."""
    try:
        return comma_ints(text)
    except ConfigError:
        raise ConfigError(f"shape must be H,W or H,W,C integers, e.g. 28,28; got {text!r}") from None


@dataclass(frozen=True)
class GeneralConfig(Part):
    """Logging, where a run's files go, progress output."""

    title: ClassVar[str] = "general ([general])"
    log_level: LogLevel = setting("INFO", "how much the command logs", parse=str.upper)
    run_dir: str | None = setting(None, "where the broker log, reports and checkpoints go (default "
                                        "runs/<timestamp>/)", metavar="DIR")
    report: str | None = setting(None, "JSON report path (default <run dir>/report.json)", metavar="PATH")
    progress: bool = setting(True, "no progress bars (off a terminal they are a log line every 10%% anyway)",
                             flag="--no-progress", negate=True)


@dataclass(frozen=True)
class KafkaConfig(Part):
    """Connection settings shared by every client. ``bootstrap_servers=None`` means
    the embedded broker. Security settings pass through to both client libraries;
    secrets never appear in a repr, a log line or a report."""

    title: ClassVar[str] = "kafka connection ([kafka])"
    bootstrap_servers: str | None = setting(
        None, "Kafka brokers; when omitted an embedded broker (tansu, memory only) is started for the duration of "
              "the command", metavar="HOST:PORT[,...]")
    client: Client = setting("confluent", "the Kafka client library every connection uses")
    security_protocol: SecurityProtocol = setting("PLAINTEXT", "how to talk to the brokers")
    sasl_mechanism: SaslMechanism | None = setting(None, "SASL mechanism for SASL_* protocols")
    sasl_username: str | None = setting(None, "the user name of SASL_* protocols")
    sasl_password: str | None = setting(None, "SASL password (prefer the config file or $DDP_KBIT_SASL_PASSWORD)",
                                        secret=True)
    ssl_cafile: str | None = setting(None, "CA bundle to verify the brokers", metavar="PEM")
    ssl_certfile: str | None = setting(None, "client certificate for mutual TLS", metavar="PEM")
    ssl_keyfile: str | None = setting(None, "client private key for mutual TLS", metavar="PEM")
    ssl_password: str | None = setting(None, "password of the client private key", secret=True)
    request_timeout_s: float = setting(10.0, "give up on an unreachable broker after this long", metavar="S")

    def check(self):
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
class DataConfig(Part):
    """Which topics a run reads and how the stream reads them."""

    title: ClassVar[str] = "data ([data])"
    dataset: Dataset = setting("fashion-mnist", "the demo dataset, published when the default topics are missing "
                                                "(on the embedded broker only; elsewhere: ddp-kbit publish)")
    data_dir: str | None = setting(None, "where that dataset's files are (fashion-mnist: its Debian package's "
                                         "folder)", metavar="PATH")
    format: Format | None = setting(None, "wire format of topics without a manifest, and of the default topics "
                                          "(avro when not given); a manifest's format wins and a contradicting flag "
                                          "is an error")
    layout: Layout = setting("bytes", "pixels as bytes or a list of ints, for the default topics")
    train_topic: str | None = setting(None, "train topic (default {dataset}.train.{format})")
    test_topic: str | None = setting(None, "test topic (default {dataset}.test.{format})")
    prefetch: int = setting(4, "batches decoded ahead of the step", metavar="N")
    max_bad_fraction: float = setting(0.01, "stop when more than this fraction of records is malformed; bad "
                                            "records go to <topic>.dlq either way", metavar="F")
    stall_timeout_s: float = setting(60.0, "no record for this long: a clear error, not a hang", cli=False)
    poll_records: int = setting(20_000, "records asked for in one poll of the client", cli=False)
    buffer_records: int = setting(50_000, "per-partition read-ahead before the partition is paused", cli=False)
    shuffle: ShuffleKind = setting(
        "window", "window: each epoch, chunks of every partition are dealt to the ranks in a seeded order and a "
                  "window of records is permuted into batches (training quality does not depend on the order "
                  "producers wrote); none: batches of neighbouring offsets, for comparison")
    shuffle_chunk: int = setting(4096, "offsets per chunk: one seek and one contiguous read each", metavar="N")
    shuffle_window: int = setting(32768, "records read, decoded and permuted together per rank", metavar="N")
    allow_missing_records: bool = setting(False, "when retention deleted records a manifest covers, train on the "
                                                 "rest (counted in the report) instead of stopping")
    dlq_max_bytes: int = setting(1_000_000, "a bad record larger than this goes to the dead-letter topic without "
                                            "its value (a header says why), so a huge record cannot stop training",
                                 metavar="N")

    def check(self):
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


@dataclass(frozen=True)
class SourceConfig(Part):
    """How to read a topic that was not written to wire contract v1 (``[source]``):
    the value's format and schema, where the image and the label are, the sample
    type, and the framing. Empty (``value_format=None``) means contract v1."""

    title: ClassVar[str] = "topics we did not write ([source]; describe writes a manifest from these)"
    value_format: Format | None = setting(None, "the values' format (without it, topics follow wire contract v1)")
    value_schema: str | None = setting(None, "Avro .avsc or Protobuf .proto of the values (with a registry: the "
                                             "reader schema)", metavar="FILE")
    value_message: str | None = setting(None, "the Protobuf message in --value-schema", metavar="NAME")
    image_field: str = setting("image", "where the image is: bytes, base64 text, a flat or nested list (a dotted "
                                        "path reaches into nested records, e.g. features.pixels)", metavar="PATH")
    label_field: str = setting("label", "where the label is: an int, or a string of --classes", metavar="PATH")
    shape: tuple[int, ...] = setting((), "image shape (inferred by describe when it can be)", metavar="H,W[,C]",
                                     parse=shape_ints)
    dtype: Dtype | None = setting(None, "image type (inferred by describe)")
    num_classes: int | None = setting(None, "class count (inferred by describe)", metavar="K")
    classes: tuple[str, ...] = setting((), "class names, in class-index order, for string labels",
                                       metavar="A,B,...")
    framing: Framing = setting("none", "confluent: Schema Registry wire format (magic byte, schema id, for "
                                       "Protobuf message indexes) before each value")
    schema_registry: str | None = setting(None, "Schema Registry that resolves the framing's schema ids",
                                          metavar="URL")
    registry_user: str | None = setting(None, "Schema Registry basic-auth user", metavar="USER")
    registry_password: str | None = setting(None, "Schema Registry basic-auth password (never logged)",
                                            metavar="PASSWORD", secret=True)

    def check(self):
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
class TrainConfig(Part):
    """Model and optimisation, per rank."""

    title: ClassVar[str] = "training ([train])"
    model: str = setting("cnn3", f"network: built-in {', '.join(MODELS)}, or your own FUNCTION(shape, num_classes) "
                                 "-> torch.nn.Module (a file is sent with the run, so executors need not have it); "
                                 "sized from the manifest", metavar="NAME|MODULE:FUNCTION|PATH.py:FUNCTION")
    epochs: int = setting(5, "passes over the train topic")
    batch_size: int = setting(128, "records per step per process")
    eval_batch_size: int = setting(1000, "records per evaluation step per process")
    lr: float = setting(5e-3, "learning rate (the peak of the one-cycle schedule)")
    optimizer: Optimizer = setting("adam", "the optimizer of every rank")
    momentum: float = setting(0.9, "momentum of the sgd optimizer")
    weight_decay: float = setting(0.0, "L2 weight decay of the optimizer")
    lr_schedule: Schedule = setting("onecycle", "how the learning rate changes over all the steps")
    amp: bool = setting(False, "mixed precision (CUDA only)")
    grad_accum: int = setting(1, "batches per optimizer step", metavar="N")
    seed: int = setting(0, "model init, shuffle and augmentation seed")
    label_smoothing: float = setting(0.1, "label smoothing of the cross-entropy loss", metavar="F")
    augment: bool = setting(False, "built-in augmentation of image batches on the device: random crop after "
                                   "2-pixel padding and horizontal flip (training only)")
    transforms: tuple[str, ...] = setting(
        (), "batch transform FUNCTION(images, labels, train) -> (images, labels) on the device after the uint8 -> "
            "float scaling (train=False in evaluation; a 'generator' keyword gets a seeded torch.Generator); "
            "repeatable, applied in order", flag="--transform", repeat=True,
        metavar="MODULE:FUNCTION|PATH.py:FUNCTION")
    handlers: tuple[str, ...] = setting((), "extra ignite handler, called as FUNCTION(trainer, context) on every "
                                            "rank each epoch; repeatable", flag="--handler", repeat=True,
                                        metavar="MODULE:FUNCTION|PATH.py:FUNCTION")
    follow: bool = setting(False, "keep training on new records as they arrive, in windows planned like epochs "
                                  "(each record once); stops at --max-windows, --until-idle, SIGTERM or Ctrl-C, "
                                  "after a checkpoint and a snapshot", group="follow")

    def check(self):
        if ":" not in self.model:
            one_of("model", self.model, MODELS + ("MODULE:FUNCTION", "PATH.py:FUNCTION"))
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


@dataclass(frozen=True)
class FollowConfig(Part):
    """Continuous training (``--follow``): windows of new records, each planned like an epoch."""

    title: ClassVar[str] = "continuous training (--follow; [follow])"
    start_at: str = setting("earliest", "earliest (what is there, then new records), latest (only new ones), "
                                        "manifest (after the manifest's snapshot), or an ISO 8601 time "
                                        "(offsets_for_times)", metavar="WHEN")
    window_records: int = setting(10_000, "a window closes at N new records...", metavar="N")
    window_seconds: float = setting(60.0, "...or S seconds after it opened, with at least one record", metavar="S")
    until_idle_s: float | None = setting(None, "stop after S seconds without new records (what arrived since the "
                                               "last window is trained first)", flag="--until-idle", metavar="S")
    max_windows: int | None = setting(None, "stop after N windows (a bounded live run)", metavar="N")
    replay_fraction: float = setting(0.0, "mix F x the window's size of older records into each window (rehearsal "
                                          "against forgetting; counted apart from new records)", metavar="F")
    prequential: bool = setting(True, "do not score each batch before its step (prequential, test-then-train "
                                      "accuracy)", flag="--no-prequential", negate=True)
    publish_model: str | None = setting(None, "after each window: DIR/model-<window>.pt and DIR/latest.json "
                                              "(atomic)", metavar="DIR")
    model_topic: str | None = setting(None, "also a small record on TOPIC pointing at each snapshot", metavar="TOPIC")
    publish_tolerance: float | None = setting(None, "publish only when the window's accuracy is at most F below "
                                                    "the last published one", metavar="F")

    def check(self):
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
class CheckpointConfig(Part):
    title: ClassVar[str] = "checkpoints and failures ([checkpoint])"
    dir: str | None = setting(None, "default <run dir>/checkpoints; shared storage on a cluster",
                              flag="--checkpoint-dir", metavar="DIR")
    every: int = setting(0, "also checkpoint every N steps (0: epoch ends only)", flag="--checkpoint-every",
                         metavar="N")
    resume: bool = setting(False, "resume from the newest checkpoint in --checkpoint-dir")
    max_restarts: int = setting(0, "re-run from the newest checkpoint after a failure", metavar="N")
    keep: int = setting(3, "how many of the newest checkpoints stay", cli=False)

    def check(self):
        positive("checkpoint every", self.every, allow_zero=True)
        positive("max_restarts", self.max_restarts, allow_zero=True)
        positive("checkpoint keep", self.keep)


@dataclass(frozen=True)
class SparkConfig(Part):
    title: ClassVar[str] = "spark ([spark])"
    master: str | None = setting(None, "Spark master URL (default from spark_conf/spark-defaults.conf: local[N])")
    num_processes: int = setting(2, "DDP processes (ranks) of the run", metavar="N")
    distributed: bool = setting(False, "run the processes as Spark barrier tasks on executors (default: local_mode "
                                       "on the driver)")
    gpu: bool = setting(False, "one GPU per process (NCCL), pinned memory; loads spark_conf/gpu.conf (GPU "
                               "scheduling: one GPU address per rank). A rank that sees no CUDA device is an error, "
                               "never a silent CPU run")
    rapids: bool = setting(False, "also load spark_conf/rapids.conf: the RAPIDS Accelerator for the Spark SQL side "
                                  "of a pipeline (not the torch ranks); needs the rapids-4-spark jar on Spark's "
                                  "classpath")
    conf: tuple[str, ...] = setting((), "Spark setting override; repeatable", flag="--spark-conf", repeat=True,
                                    metavar="KEY=VALUE")
    conf_dir: str | None = setting(None, "read spark-defaults.conf, gpu.conf and rapids.conf from DIR instead of the "
                                         "shipped ones", flag="--spark-conf-dir", metavar="DIR")
    collective_timeout_s: float = setting(180.0, "a rank gives up on a collective (e.g. a dead peer) after this many "
                                                 "seconds", flag="--collective-timeout", metavar="S")
    launch_timeout_s: float = setting(180.0, "--distributed: fail, naming the slots requested and available, when "
                                             "the cluster cannot run every rank at once within this many seconds",
                                      flag="--launch-timeout", metavar="S")
    ship_package: bool = setting(False, "send this package (a zip) with each launch, for executors whose Python does "
                                        "not have ddp_kbit")
    secret_file: str | None = setting(None, "a file holding the RPC authentication secret of a standalone cluster "
                                            "(spark.authenticate); `python -m ddp_kbit.main_cluster up` writes one, "
                                            "and a run against the master it recorded uses it without this flag",
                                      flag="--spark-secret-file", metavar="FILE")

    def check(self):
        positive("num_processes", self.num_processes)
        positive("collective_timeout_s", self.collective_timeout_s)
        positive("launch_timeout_s", self.launch_timeout_s)
        for kv in self.conf:
            if "=" not in kv:
                raise ConfigError(f"--spark-conf takes KEY=VALUE, got {kv!r}")


@dataclass(frozen=True)
class PublishConfig(Part):
    """What ``ddp-kbit publish`` writes: a dataset split to a topic, then its manifest."""

    title: ClassVar[str] = "publishing a dataset ([publish])"
    dataset: Dataset = setting("fashion-mnist", "the dataset that is published")
    data_dir: str | None = setting(None, "folder (or file) holding the dataset; fashion-mnist defaults to "
                                         "/usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist)",
                                   metavar="PATH")
    split: Split | None = setting(None, "which split (default: both, each only when its topic has no manifest "
                                        "yet; python -m producers.publish: train)")
    format: Format = setting(DEFAULT_FORMAT, "the wire format of the records")
    layout: Layout = setting("bytes", "pixels as raw bytes or a list of ints")
    topic: str | None = setting(None, "topic name (default {dataset}.{split}.{format}[.list])")
    partitions: int = setting(4, "the partition count of a new topic", metavar="N")
    compression: Compression = setting("none", "compression of the producer's record batches")
    limit: int | None = setting(None, "publish only the first N samples", metavar="N")
    force: bool = setting(False, "append to a topic that already holds records; the new manifest covers only the "
                                 "new records")
    manifest_topic: str = setting(MANIFEST_TOPIC, "the topic manifests are written to", cli=False)
    rate: float | None = setting(None, "a live producer: append at R records/s (keys continue the index); a "
                                       "manifest after each completed pass covers every record acknowledged so far",
                                 metavar="R")
    duration_s: float | None = setting(None, "with --rate: for S seconds, pass after pass", flag="--duration",
                                       metavar="S")
    repeat: int | None = setting(None, "with --rate: K passes over the dataset (default 1)", metavar="K")

    def check(self):
        for name in ("rate", "duration_s", "repeat"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name))
        if (self.duration_s is not None or self.repeat is not None) and self.rate is None:
            raise ConfigError("--duration and --repeat go with --rate R (a live producer)")
        if self.duration_s is not None and self.repeat is not None:
            raise ConfigError("give --duration or --repeat, not both")
        positive("partitions", self.partitions)
        if self.limit is not None:
            positive("limit", self.limit)

    @property
    def topic_name(self) -> str:
        return self.topic or topic_name(self.dataset, self.split or "train", self.format, self.layout)


@dataclass(frozen=True)
class SyntheticConfig(Part):
    """The seeded synthetic dataset (``--dataset synthetic``)."""

    title: ClassVar[str] = "the synthetic dataset ([synthetic])"
    shape: tuple[int, ...] = setting((28, 28), "synthetic dataset: sample shape", metavar="H,W[,C]",
                                     parse=shape_ints)
    num_classes: int = setting(10, "synthetic dataset: classes", metavar="K")
    num_samples: int = setting(1000, "synthetic dataset: samples", metavar="N")
    seed: int = setting(0, "synthetic dataset: the seed of its samples")
    dtype: Dtype = setting("uint8", "synthetic dataset: sample type", cli=False)

    def check(self):
        if not 2 <= len(self.shape) <= 3 or any(d < 1 for d in self.shape):
            raise ConfigError(f"shape must be H,W or H,W,C with every dimension > 0; got {list(self.shape)}")
        positive("num_classes", self.num_classes)
        positive("num_samples", self.num_samples)


@dataclass(frozen=True)
class ExperimentConfig(Part):
    """A study: a grid of conditions, each measured ``iterations`` times (after
    ``warmup`` unrecorded-in-statistics ones). A preset (``experiments/<name>.toml``)
    sets these; the config file's ``[experiment]`` and flags override it."""

    title: ClassVar[str] = "the study ([experiment]; a preset sets these, flags override it)"
    preset: str = setting("formats", "study preset: one of experiments/<name>.toml, or a .toml file of your own",
                          metavar="NAME|FILE")
    description: str = setting("", "what the study is for (presets say)", cli=False)
    formats: tuple[StudyFormat, ...] = setting(FORMATS, f"wire formats ({', '.join(FORMATS)}), and topics we did "
                                                        f"not write ({', '.join(FOREIGN_SHAPES)})",
                                               metavar="F[,F...]")
    layouts: tuple[Layout, ...] = setting(("bytes",), "pixel layouts (bytes, list)", metavar="L[,L...]")
    compressions: tuple[Compression, ...] = setting(("none",), f"producer compressions ({', '.join(COMPRESSIONS)})",
                                                    metavar="C[,C...]")
    clients: tuple[Client, ...] = setting(("confluent",), f"the Kafka client libraries compared ({', '.join(CLIENTS)})",
                                          metavar="C[,C...]")
    workloads: tuple[Workload, ...] = setting(("publish", "ingest"), "publish (the publisher, in the driver), "
                                                                     "ingest (the stream into batches, in the ranks), "
                                                                     "train (the real training path); raw and memory "
                                                                     "baselines are added", metavar="W[,W...]")
    num_processes: tuple[int, ...] = setting((1,), "process counts the study measures, one launch each",
                                             flag="--study-processes", metavar="N[,M...]", parse=comma_ints)
    shuffles: tuple[ShuffleKind, ...] = setting(("window",), "the stream's plans to compare (window, none)",
                                                metavar="S[,S...]")
    iterations: int = setting(10, "measured iterations per condition, interleaved round-robin", metavar="N")
    warmup: int = setting(1, "extra iterations first, recorded as warmup and left out of the statistics",
                          metavar="N")
    limit: int | None = setting(None, "records per topic (default the whole split)", flag="--study-limit",
                                metavar="N")
    epochs: int = setting(1, "epochs of the study's train workload", flag="--study-epochs", metavar="N")
    passes: int = setting(1, "reads of the whole topic per ingest measurement, a consumer each (more records per "
                             "measurement, less noise)", metavar="N")
    partitions: int = setting(4, "partitions of the topics the study publishes", cli=False)
    output_dir: str | None = setting(None, "where results.csv, summary.csv, results.json, plots and report.md go "
                                           "(default <run dir>/experiment)", metavar="DIR")
    seed: int = setting(0, "seed of the bootstrap resampling", cli=False)
    confidence: float = setting(0.95, "confidence of the bootstrap intervals", cli=False)

    def check(self):
        for name in ("formats", "layouts", "compressions", "clients", "workloads", "shuffles"):
            if not getattr(self, name):
                raise ConfigError(f"{name} must name at least one of "
                                  f"{', '.join(literal_values(typing.get_type_hints(type(self))[name]))}")
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
class InspectConfig(Part):
    """What ``describe`` and ``inspect`` read."""

    title: ClassVar[str] = "reading a topic ([inspect])"
    topic: str | None = setting(None, "the topic to describe or inspect")
    limit: int | None = setting(None, "records to read (describe: a sample of 1000 by default; inspect: all)",
                                metavar="N")
    scan: bool = setting(False, "describe: read every record, not a sample")

    def check(self):
        if self.limit is not None:
            positive("limit", self.limit)


@dataclass(frozen=True)
class EvaluateConfig(Part):
    """``evaluate``: which model, and where its predictions go."""

    title: ClassVar[str] = "evaluating a saved model ([evaluate])"
    model_path: str | None = setting(None, "a run's model.pt (model.json beside it says how it was trained) or a "
                                           "checkpoint", metavar="PATH")
    predictions_topic: str | None = setting(None, "one record per input: its key; JSON index, label, prediction, "
                                                  "probabilities; headers naming the model and the source record "
                                                  "(exactly once per model, across reruns)", metavar="TOPIC")


@dataclass(frozen=True)
class MetricsConfig(Part):
    """Operating a run: Prometheus metrics and committed offsets for lag tools."""

    title: ClassVar[str] = "operating a run ([metrics])"
    port: int | None = setting(None, "serve Prometheus metrics: the driver's /metrics on P gathers every rank's "
                                     "(rank r also serves its own on P+1+r); off by default", flag="--metrics-port",
                               metavar="P")
    commit_group: str | None = setting(None, "after each checkpoint, commit the trained offsets to this consumer "
                                             "group so lag tools see the run (default ddp_kbit.<train topic>; none: "
                                             "off); never read back: checkpoints are the source of truth",
                                       metavar="GROUP")

    def check(self):
        if self.port is not None and not 1 <= self.port <= 65000:
            raise ConfigError(f"metrics port must be within 1..65000; got {self.port}")

    def group_for(self, topic: str) -> str | None:
        if self.commit_group == "none":
            return None
        return self.commit_group or f"ddp_kbit.{topic}"


@dataclass(frozen=True)
class BrokerConfig(Part):
    """``ddp-kbit broker``: the embedded broker on its own, for trying things out."""

    title: ClassVar[str] = "the embedded broker ([broker])"
    host: str = setting("127.0.0.1", "address to listen on (and advertise)")
    port: int | None = setting(None, "port to listen on (default: a free one)", metavar="P")

    def check(self):
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ConfigError(f"broker port must be within 1..65535; got {self.port}")


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


@dataclass(frozen=True)
class PublishJob:
    """What ``ddp-kbit publish`` (and ``python -m producers.publish``) runs with."""

    general: GeneralConfig = GeneralConfig()
    kafka: KafkaConfig = KafkaConfig()
    publish: PublishConfig = PublishConfig()
    synthetic: SyntheticConfig = SyntheticConfig()


@dataclass(frozen=True)
class BrokerJob:
    general: GeneralConfig = GeneralConfig()
    broker: BrokerConfig = BrokerConfig()


def flag_of(f: dataclasses.Field) -> str:
    """A field's command-line flag."""
    return f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"


def flags_of(cls) -> list[dataclasses.Field]:
    """The fields of a part that have a flag."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli")]


def flag_keys(group_cls) -> dict[str, tuple[str, str]]:
    """Every flag of a grouping config as a keyword (``--checkpoint-dir`` ->
    ``checkpoint_dir``) -> (section, field): the Python API's names, one home with the CLI's."""
    out = {}
    for section, part in sections_of(group_cls).items():
        for f in flags_of(part):
            out[flag_of(f).removeprefix("--no-").lstrip("-").replace("-", "_")] = (section, f.name)
    return out


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
    if typing.get_origin(hint) is Literal:   # checked against its values by the part itself
        hint = type(typing.get_args(hint)[0])
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if typing.get_origin(item) is Literal:
            item = type(typing.get_args(item)[0])
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
