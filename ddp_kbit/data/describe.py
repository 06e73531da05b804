"""Topics we did not write: the source description (``[source]`` / ``--value-format``
...), Schema Registry lookups, and ``--mode describe``, which reads a sample of a
topic, infers and validates its sample type and classes, counts bad records by
reason, and writes a manifest (format ``foreign``) so later runs need only the
topic's name. From then on such a topic is planned, read, dead-lettered and resumed
like a v1 one: only the codec differs (:func:`codec_for`)."""
from __future__ import annotations

import collections
import logging
import math
import uuid
from pathlib import Path

import numpy as np

from ddp_kbit import kafka
from ddp_kbit.config import KafkaConfig, SourceConfig
from ddp_kbit.data import manifest as manifests
from ddp_kbit.errors import ConfigError, DecodeError, ManifestError
from ddp_kbit.wire import get_codec
from ddp_kbit.wire.foreign import FOREIGN, ForeignCodec, TopicDescription, field_at

log = logging.getLogger(__name__)
_LOOKUPS: dict = {}


def source_of(cfg: SourceConfig, **inferred) -> TopicDescription:
    """The description that travels: the schema file's text read now."""
    text = None
    if cfg.value_schema:
        try:
            text = Path(cfg.value_schema).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--value-schema {cfg.value_schema}: {exc.strerror}") from None
    given = {"shape": tuple(cfg.shape), "dtype": cfg.dtype, "num_classes": cfg.num_classes,
             "classes": tuple(cfg.classes)}
    given = {k: v for k, v in given.items() if v} | inferred
    if given.get("classes") and not given.get("num_classes"):
        given["num_classes"] = len(given["classes"])
    return TopicDescription(value_format=cfg.value_format, image_field=cfg.image_field, label_field=cfg.label_field,
                  framing=cfg.framing, schema_text=text, value_message=cfg.value_message,
                  schema_registry=cfg.schema_registry, **{"dtype": "uint8", **given})


def registry_lookup(url: str | None, auth: SourceConfig | None = None):
    """``(kind, id) -> (schema type, schema text)`` through confluent-kafka's own
    Schema Registry client, one fetch per schema (the client caches), one client per
    process; an id the registry does not know is a KeyError. Credentials pass
    through like Kafka's and are never logged."""
    if not url:
        return None
    key = (url, auth.registry_user if auth else None)
    if key not in _LOOKUPS:
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        conf = {"url": url}
        if auth is not None and auth.registry_user:
            conf["basic.auth.user.info"] = f"{auth.registry_user}:{auth.registry_password or ''}"
        client = SchemaRegistryClient(conf)

        def lookup(ref: tuple) -> tuple[str, str]:
            try:
                schema = client.get_schema(ref[1]) if ref[0] == "id" else \
                    client.get_schema_by_guid(str(uuid.UUID(bytes=ref[1])))
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    raise KeyError(exc.error_message) from None
                raise
            return schema.schema_type or "AVRO", schema.schema_str

        _LOOKUPS[key] = lookup
    return _LOOKUPS[key]


def codec_for(m: manifests.Manifest, auth: SourceConfig | None = None):
    """The decoder of a topic's values: a v1 codec, or the foreign one its description names."""
    if m.format != FOREIGN:
        return get_codec(m.format, m.layout)
    source = TopicDescription.from_dict(m.description)
    return ForeignCodec(source, registry_lookup(source.schema_registry, auth))


# ------------------------------------------------------------------ describe
def sample_records(kcfg: KafkaConfig, topic: str, limit: int | None) -> tuple[list, dict]:
    """The first records of every partition (``limit`` in all; None: every record), and the bounds."""
    parts = kafka.topics(kcfg).get(topic)
    if parts is None:
        raise ManifestError(f"topic {topic} does not exist on {kcfg.bootstrap_servers}")
    bounds = kafka.partition_bounds(kcfg, topic, range(parts), group_id="ddp_kbit.describe")
    if sum(hi - lo for lo, hi in bounds.values()) == 0:
        raise ManifestError(f"topic {topic} holds no records")
    each = None if limit is None else max(1, -(-limit // parts))
    ends = {(topic, p): hi if each is None else min(hi, lo + each) for p, (lo, hi) in bounds.items()}
    starts = {(topic, p): lo for p, (lo, _) in bounds.items()}
    with kafka.make_consumer(kcfg, group_id="ddp_kbit.describe") as consumer:
        recs = kafka.read_all(consumer, list(starts), ends=ends, starts=starts)
    return sorted(recs, key=lambda r: (r.partition, r.offset)), bounds


def infer(records, cfg: SourceConfig) -> dict:
    """Shape, dtype and classes from the records' own values, where the flags do not say."""
    probe = ForeignCodec(source_of(cfg, shape=(1, 1)), registry_lookup(cfg.schema_registry, cfg))
    images, labels = [], []
    for r in records:
        try:
            rec = probe._parse(bytes(r.value)) if r.value else None
            if rec is not None:
                images.append(field_at(rec, cfg.image_field, cfg.value_format))
                labels.append(field_at(rec, cfg.label_field, cfg.value_format))
        except DecodeError:
            continue
        if len(images) >= 200 and cfg.shape and cfg.dtype and (cfg.num_classes or cfg.classes):
            break
    if not images:
        raise ManifestError(f"no record of the sample has a readable {cfg.image_field!r} and {cfg.label_field!r} "
                            f"as {cfg.value_format}; check --value-format, --framing and the field names")
    out = {}
    if not cfg.shape:
        out["shape"] = infer_shape(images[0])
    if not cfg.dtype:
        out["dtype"] = infer_dtype(images[:200])
    if not cfg.classes and any(isinstance(v, str) for v in labels):
        out["classes"] = tuple(sorted({v for v in labels if isinstance(v, str)}))
        out["num_classes"] = len(out["classes"])
    elif cfg.num_classes is None and not cfg.classes:
        ints = [int(v) for v in labels if isinstance(v, (int, float)) and not isinstance(v, bool)]
        out["num_classes"] = max(ints) + 1 if ints else None
    return out


def infer_shape(value) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        return tuple(np.asarray(value).shape)
    n = len(value) if not isinstance(value, str) else len(value) * 3 // 4
    side = math.isqrt(n)
    if side * side == n:
        return (side, side)
    side = math.isqrt(n // 3)
    if n % 3 == 0 and side * side * 3 == n:
        return (side, side, 3)
    raise ConfigError(f"cannot tell the image shape of {n} values; pass --shape H,W[,C]")


def infer_dtype(values) -> str:
    for v in values:
        if isinstance(v, (bytes, bytearray, str)):
            return "uint8"
        arr = np.asarray(v)
        if not np.issubdtype(arr.dtype, np.integer) or (arr.size and (arr.min() < 0 or arr.max() > 255)):
            return "float32"
    return "uint8"


def describe(kcfg: KafkaConfig, topic: str, cfg: SourceConfig, scan: bool = False, limit: int = 1000,
             write: bool = True) -> tuple[manifests.Manifest, dict]:
    """Read a sample (every record with ``scan``), infer and validate, count bad records
    by reason, and (``write``) publish the topic's manifest. Returns it and the findings."""
    if not cfg.described:
        raise ConfigError("--mode describe needs a source description: at least --value-format")
    records, bounds = sample_records(kcfg, topic, None if scan else limit)
    source = source_of(cfg, **infer(records, cfg))
    codec = ForeignCodec(source, registry_lookup(source.schema_registry, cfg))
    batch = codec.decode_batch([r.value for r in records])
    by_reason = collections.Counter(e.reason for _, e in batch.errors)
    examples = collections.defaultdict(list)
    for pos, e in batch.errors:
        if len(examples[e.reason]) < 5:
            examples[e.reason].append({"partition": records[pos].partition, "offset": records[pos].offset,
                                       "error": str(e)[:200]})
    if len(batch) == 0:
        raise ManifestError(f"no record of {topic}'s sample decodes as described "
                            f"({dict(by_reason)}; e.g. {next(iter(examples.values()))[0]['error']})")
    m = manifests.Manifest(topic=topic, dataset=None, split=None, format=FOREIGN, layout="foreign",
                           num_samples=sum(hi - lo for lo, hi in bounds.values()), shape=source.shape,
                           dtype=source.dtype, num_classes=source.num_classes,
                           class_names=source.classes or None, partitions=dict(sorted(bounds.items())),
                           compression="unknown", schema=manifests.FOREIGN_SCHEMA, description=source.to_dict())
    if write:
        manifests.write(kcfg, m)
    findings = {"topic": topic, "records_read": len(records), "good": len(batch), "bad": dict(by_reason),
                "bad_examples": dict(examples), "shape": list(source.shape), "dtype": source.dtype,
                "num_classes": source.num_classes, "classes": list(source.classes),
                "labels": {str(k): int(v) for k, v in sorted(collections.Counter(batch.labels.tolist()).items())},
                "partitions": {str(p): list(b) for p, b in sorted(bounds.items())}, "manifest_written": write,
                "source": source.to_dict() | {"schema_text": bool(source.schema_text)}}
    return m, findings
