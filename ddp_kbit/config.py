"""Small frozen config dataclasses, one per part, plus file (TOML/JSON) + CLI merging.

Precedence: dataclass defaults < config file section < command-line flags. Every
dataclass validates itself in ``__post_init__`` and names the allowed values.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

CLIENTS = ("confluent", "kafka-python")
COMPRESSIONS = ("none", "gzip", "lz4", "zstd", "snappy")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER")
MANIFEST_TOPIC = "ddp_kbit.manifests"


class ConfigError(ValueError):
    """A bad flag, file or value; main prints it as one line and exits 2."""


def one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def positive(name: str, value, allow_zero: bool = False) -> None:
    if value is None or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {value!r}")


@dataclass(frozen=True)
class KafkaConfig:
    """Connection settings shared by every client. ``bootstrap_servers=None`` means
    the embedded broker. Security settings pass through to both client libraries."""

    bootstrap_servers: str | None = None
    client: str = "confluent"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = None
    request_timeout_s: float = 10.0

    def __post_init__(self):
        one_of("client", self.client, CLIENTS)
        one_of("security_protocol", self.security_protocol, SECURITY_PROTOCOLS)
        if self.sasl_mechanism is not None:
            one_of("sasl_mechanism", self.sasl_mechanism, SASL_MECHANISMS)
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ConfigError(f"security_protocol {self.security_protocol} needs --sasl-mechanism")
        positive("request_timeout_s", self.request_timeout_s)

    def with_servers(self, servers: str) -> "KafkaConfig":
        return dataclasses.replace(self, bootstrap_servers=servers)


@dataclass(frozen=True)
class PublishConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    split: str = "train"
    format: str = "avro"
    layout: str = "bytes"
    topic: str | None = None
    partitions: int = 4
    compression: str = "none"
    limit: int | None = None
    force: bool = False
    manifest_topic: str = MANIFEST_TOPIC
    progress: bool = True

    def __post_init__(self):
        from ddp_kbit.codecs import FORMATS, LAYOUTS

        one_of("split", self.split, ("train", "test"))
        one_of("format", self.format, FORMATS)
        one_of("layout", self.layout, LAYOUTS)
        one_of("compression", self.compression, COMPRESSIONS)
        positive("partitions", self.partitions)
        if self.limit is not None:
            positive("limit", self.limit)

    @property
    def topic_name(self) -> str:
        return self.topic or default_topic(self.dataset, self.split, self.format, self.layout)


def default_topic(dataset: str, split: str, fmt: str, layout: str = "bytes") -> str:
    """Wire contract: ``{dataset}.{split}.{format}``, ``.list`` appended for the list layout."""
    name = f"{dataset}.{split}.{fmt}"
    return name + ".list" if layout == "list" else name


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    """A TOML or JSON file of sections (``[kafka]``, ``[publish]``, ``[train]`` ...)."""
    if not path:
        return {}
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text.decode())
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"config file {path} must hold sections of key = value tables")
    return data


def build(cls, section: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None):
    """Instantiate a config dataclass from a file section and CLI overrides (None = not given)."""
    names = {f.name for f in dataclasses.fields(cls)}
    section = {k.replace("-", "_"): v for k, v in (section or {}).items()}
    unknown = sorted(set(section) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; allowed: {', '.join(sorted(names))}")
    values = dict(section)
    values.update({k: v for k, v in (overrides or {}).items() if k in names and v is not None})
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def as_dict(cfg) -> dict[str, Any]:
    """For reports: secrets are masked."""
    out = dataclasses.asdict(cfg)
    for key in out:
        if "password" in key and out[key]:
            out[key] = "***"
    return out


__all__ = [
    "KafkaConfig", "PublishConfig", "ConfigError", "build", "load_config_file", "default_topic",
    "as_dict", "MANIFEST_TOPIC", "CLIENTS", "COMPRESSIONS",
]


OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "cosine", "step")


@dataclass(frozen=True)
class TrainConfig:
    """What each rank needs to train; topics default to the contract's names."""

    dataset: str = "fashion-mnist"
    format: str = "avro"
    layout: str = "bytes"
    train_topic: str | None = None
    test_topic: str | None = None
    model: str = "cnn"
    epochs: int = 5
    batch_size: int = 128           # per rank, per step
    eval_batch_size: int = 1000
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    amp: bool = False               # CUDA only
    grad_accum: int = 1
    seed: int = 0
    prefetch: int = 4
    max_bad_fraction: float = 0.01
    stall_timeout_s: float = 60.0
    checkpoint_dir: str | None = None   # default <run dir>/checkpoints
    checkpoint_every: int = 0       # steps; 0 = only at epoch ends
    resume: bool = False
    max_restarts: int = 0
    inject_failure_at_step: int | None = None
    progress: bool = True

    def __post_init__(self):
        from ddp_kbit.codecs import FORMATS, LAYOUTS
        from ddp_kbit.models import MODELS

        one_of("format", self.format, FORMATS)
        one_of("layout", self.layout, LAYOUTS)
        one_of("model", self.model, MODELS)
        one_of("optimizer", self.optimizer, OPTIMIZERS)
        one_of("lr_schedule", self.lr_schedule, SCHEDULES)
        for name in ("epochs", "batch_size", "eval_batch_size", "lr", "grad_accum", "prefetch", "stall_timeout_s"):
            positive(name, getattr(self, name))
        positive("checkpoint_every", self.checkpoint_every, allow_zero=True)
        positive("max_restarts", self.max_restarts, allow_zero=True)
        if not 0 <= self.max_bad_fraction <= 1:
            raise ConfigError(f"max_bad_fraction must be within 0..1; got {self.max_bad_fraction}")

    def topic(self, split: str) -> str:
        given = self.train_topic if split == "train" else self.test_topic
        return given or default_topic(self.dataset, split, self.format, self.layout)


@dataclass(frozen=True)
class SparkConfig:
    master: str | None = None        # default: spark-defaults.conf, else local[N]
    num_processes: int = 2
    distributed: bool = False        # barrier tasks on executors instead of local_mode
    gpu: bool = False
    conf: tuple[str, ...] = ()       # KEY=VALUE overrides
    conf_dir: str | None = None      # default: the repo's spark_conf/

    def __post_init__(self):
        positive("num_processes", self.num_processes)
        for kv in self.conf:
            if "=" not in kv:
                raise ConfigError(f"--spark-conf takes KEY=VALUE, got {kv!r}")
