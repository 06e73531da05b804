"""Dataset manifests (wire contract v1) on the compacted topic ``ddp_kbit.manifests``.

Key = the data topic's name; the latest manifest for a topic wins. A manifest is
written only after every record it covers was acknowledged. Without one, ranges
come from the broker (:func:`from_broker`), correct on Kafka and on tansu.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

from ddp_kbit import kafka
from ddp_kbit.config import MANIFEST_TOPIC, KafkaConfig
from ddp_kbit.errors import ClientError, DecodeError, ManifestError
from ddp_kbit.wire import FORMATS, SCHEMA_ID, get_codec
from ddp_kbit.wire.sample import HEADER_FORMAT

log = logging.getLogger(__name__)
FOREIGN_SCHEMA = "foreign/v1"   # a topic we did not write, described by --mode describe (ddp_kbit.wire.foreign)
FIELDS = ("topic", "dataset", "split", "format", "layout", "schema", "num_samples", "shape", "dtype",
          "num_classes", "class_names", "partitions", "compression", "created_at")


@dataclass(frozen=True)
class Manifest:
    topic: str
    dataset: str | None
    split: str | None
    format: str
    layout: str
    num_samples: int
    shape: tuple[int, ...]
    dtype: str
    num_classes: int | None
    class_names: tuple[str, ...] | None
    partitions: dict[int, tuple[int, int]]  # partition -> (start, end), end exclusive
    compression: str = "none"
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    schema: str = SCHEMA_ID
    origin: str = "manifest"  # or "broker" for a derived one; not on the wire
    description: dict | None = None   # a foreign topic's source description (format "foreign")

    def to_json(self) -> bytes:
        obj = {k: v for k, v in asdict(self).items() if k in FIELDS}
        obj["shape"] = list(self.shape)
        obj["class_names"] = list(self.class_names) if self.class_names is not None else None
        obj["partitions"] = {str(p): [s, e] for p, (s, e) in sorted(self.partitions.items())}
        out = {k: obj[k] for k in FIELDS}
        if self.description is not None:   # a described foreign topic: v1's fields, then how to read it
            out["source"] = self.description
        return json.dumps(out, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Manifest:
        try:
            obj = json.loads(raw)
            missing = [k for k in FIELDS if k not in obj]
            if missing:
                raise ManifestError(f"manifest misses {missing}")
            if obj["schema"] not in (SCHEMA_ID, FOREIGN_SCHEMA):
                raise ManifestError(f"manifest schema {obj['schema']!r}, this reader knows {SCHEMA_ID!r} and "
                                    f"{FOREIGN_SCHEMA!r}")
            if obj["schema"] == FOREIGN_SCHEMA and not isinstance(obj.get("source"), dict):
                raise ManifestError("a foreign/v1 manifest needs its source description")
            return cls(topic=obj["topic"], dataset=obj["dataset"], split=obj["split"], format=obj["format"],
                       layout=obj["layout"], num_samples=int(obj["num_samples"]), shape=tuple(obj["shape"]),
                       dtype=obj["dtype"], num_classes=obj["num_classes"],
                       class_names=tuple(obj["class_names"]) if obj["class_names"] is not None else None,
                       partitions={int(p): (int(r[0]), int(r[1])) for p, r in obj["partitions"].items()},
                       compression=obj["compression"], created_at=obj["created_at"], schema=obj["schema"],
                       description=obj.get("source") if obj["schema"] == FOREIGN_SCHEMA else None)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ManifestError(f"unreadable manifest: {exc}") from None

    @property
    def record_count(self) -> int:
        return sum(e - s for s, e in self.partitions.values())


def ensure_manifest_topic(admin, topic: str = MANIFEST_TOPIC) -> None:
    # One partition so "latest wins" is plain offset order; compacted so it stays small.
    if topic not in admin.topics():
        admin.create_topic(topic, 1, {"cleanup.policy": "compact"})


def write(cfg: KafkaConfig, manifest: Manifest, topic: str = MANIFEST_TOPIC) -> None:
    with kafka.make_admin(cfg) as admin:
        ensure_manifest_topic(admin, topic)
    with kafka.make_producer(cfg) as producer:
        producer.send(topic, manifest.to_json(), key=manifest.topic.encode(), partition=0)
        if producer.flush(30) or producer.report.failed:
            raise ClientError(f"manifest for {manifest.topic} was not acknowledged: "
                              f"{producer.report.first_error or 'timed out'}")


def read_all(cfg: KafkaConfig, topic: str = MANIFEST_TOPIC) -> dict[str, Manifest]:
    """Every data topic's latest manifest. Unreadable entries are logged and skipped."""
    partitions = kafka.topics(cfg).get(topic)
    if partitions is None:
        return {}
    latest: dict[str, Manifest] = {}
    records = kafka.read_topic(cfg, topic, partitions, group_id="ddp_kbit.manifest-reader")
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        if rec.key is None or rec.value is None:
            continue  # a tombstone or keyless record carries no manifest
        try:
            latest[rec.key.decode()] = Manifest.from_json(rec.value)
        except (ManifestError, UnicodeDecodeError) as exc:
            log.warning("skipping manifest at %s[%d]@%d: %s", topic, rec.partition, rec.offset, exc)
    return latest


def from_broker(cfg: KafkaConfig, topic: str, num_partitions: int) -> Manifest:
    """A manifest derived from the broker: every partition's (log start, high
    watermark), and format/shape/dtype from the first record's headers and value.
    The class count is unknown here (``num_classes=None``)."""
    tps = [(topic, p) for p in range(num_partitions)]
    with kafka.make_consumer(cfg, group_id="ddp_kbit.manifest-reader") as consumer:
        bounds = kafka.end_offsets(consumer, tps)
        first = next(((tp, lo) for tp, (lo, hi) in bounds.items() if hi > lo), None)
        if first is None:
            raise ManifestError(f"topic {topic} holds no records")
        (t, p), lo = first
        rec = kafka.read_all(consumer, [(t, p)], ends={(t, p): lo + 1}, starts={(t, p): lo}, headers=True)[0]
    headers = {k: bytes(v) for k, v in (rec.headers or [])}
    fmt = headers.get(HEADER_FORMAT, b"").decode() or _guess_format(rec.value)
    if fmt not in FORMATS:
        raise ManifestError(f"topic {topic} has no manifest and its first record's {HEADER_FORMAT} header "
                            f"says {fmt!r}; allowed: {', '.join(FORMATS)}")
    try:
        sample = get_codec(fmt).decode(rec.value)
    except DecodeError as exc:
        raise ManifestError(f"topic {topic} has no manifest and its first record ({t}[{p}]@{lo}) "
                            f"is not a valid sample: {exc}") from None
    return Manifest(topic=topic, dataset=None, split=None, format=fmt, layout=sample.layout,
                    num_samples=sum(hi - lo for lo, hi in bounds.values()), shape=sample.shape,
                    dtype=sample.dtype, num_classes=None, class_names=None,
                    partitions={p: bounds[(topic, p)] for p in range(num_partitions)},
                    compression="unknown", origin="broker")


def _guess_format(value: bytes) -> str:
    """For records written without headers: try every codec, first that decodes wins."""
    for fmt in ("json", "bson", "protobuf", "avro"):
        try:
            get_codec(fmt).decode(value)
            return fmt
        except DecodeError:
            continue
    raise ManifestError("the first record decodes in no known format")


def resolve(cfg: KafkaConfig, topic: str, manifest_topic: str = MANIFEST_TOPIC) -> Manifest:
    """The topic's manifest, or one derived from the broker; ClientError if the topic is missing."""
    topics = kafka.topics(cfg)
    if topic not in topics:
        raise ClientError(f"topic {topic} does not exist on {cfg.bootstrap_servers}")
    found = read_all(cfg, manifest_topic).get(topic)
    if found is not None:
        return found
    log.warning("no manifest for %s; deriving offset ranges from the broker", topic)
    return from_broker(cfg, topic, topics[topic])


@dataclass(frozen=True)
class Coverage:
    """How a manifest's ranges compare with what the broker holds now."""

    missing: tuple  # (partition, start, end): planned offsets the broker no longer (or never) had
    beyond: int     # records after the manifest's ranges (appended later; not read)

    def describe_missing(self, topic: str) -> str:
        return ", ".join(f"{topic}[{p}] offsets [{s}, {e})" for p, s, e in self.missing)


def coverage(m: Manifest, bounds: dict[int, tuple[int, int]]) -> Coverage:
    """Pure: ``bounds`` is each partition's (log start, high watermark)."""
    missing, beyond = [], 0
    for p, (s, e) in sorted(m.partitions.items()):
        lo, hi = bounds.get(p, (e, e))
        if s < min(lo, e):
            missing.append((p, s, min(lo, e)))
        if max(hi, s) < e:
            missing.append((p, max(hi, s, lo), e))
        beyond += max(0, hi - max(e, lo))
    return Coverage(tuple(m for m in missing if m[2] > m[1]), beyond)


def broker_bounds(cfg: KafkaConfig, m: Manifest) -> dict[int, tuple[int, int]]:
    return kafka.partition_bounds(cfg, m.topic, sorted(m.partitions), group_id="ddp_kbit.manifest-reader")


def without(m: Manifest, missing) -> Manifest:
    """The manifest with the ``missing`` (partition, start, end) ranges cut off its ends."""
    parts = dict(m.partitions)
    for p, s, e in missing:
        lo, hi = parts[p]
        parts[p] = (e, hi) if s <= lo else (lo, s)
    parts = {p: (lo, max(lo, hi)) for p, (lo, hi) in parts.items()}
    return replace(m, partitions=parts, num_samples=sum(hi - lo for lo, hi in parts.values()))


def check_on_broker(kcfg: KafkaConfig, m: Manifest, allow_missing: bool) -> tuple[Manifest, list]:
    """The manifest as far as the broker still holds it, and the missing ranges.
    Missing planned records stop the run unless ``allow_missing``; records appended
    after the manifest are logged, once."""
    if m.origin != "manifest":
        return m, []
    cov = coverage(m, broker_bounds(kcfg, m))
    if cov.beyond:
        log.warning("topic %s holds %d records beyond its manifest (appended after it was written); they are not "
                    "read: publish them with a new manifest to train on them", m.topic, cov.beyond)
    if not cov.missing:
        return m, []
    if not allow_missing:
        raise ManifestError(f"records the manifest of {m.topic} covers are not on the broker: "
                        f"{cov.describe_missing(m.topic)} (deleted by retention?); pass --allow-missing-records "
                        "to train on the rest")
    log.warning("training without %s: not on the broker (--allow-missing-records)", cov.describe_missing(m.topic))
    return without(m, cov.missing), [{"topic": m.topic, "partition": p, "start": s, "end": e}
                                              for p, s, e in cov.missing]
