"""Values of topics we did not write: a :class:`TopicDescription` says how to find the image
and the label in them (format, schema, field paths, sample type, classes, framing),
and :class:`ForeignCodec` turns a batch of such values into a :class:`Batch`, as
the v1 codecs do, so everything downstream (plans, DLQ, resume) is the same.

Fields may be bytes, a flat list of ints or floats, a nested list (rows), or base64
text; paths like ``features.pixels`` reach into nested records (dicts, Avro records,
Protobuf messages). Labels are ints, or strings mapped through the class list.
Fixed-layout Avro records (the image as ``bytes``, ints and longs beside it; framed
or not) are decoded in one vectorised pass; anything else value by value. A bad
value never aborts a batch: it comes back as a DecodeError with its reason, and
``unknown_schema`` / ``bad_framing`` are reasons of their own.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ddp_kbit.errors import ConfigError, DecodeError
from ddp_kbit.wire.framing import parse_frame, zigzag_bytes
from ddp_kbit.wire.sample import DTYPES, Batch, is_int
from ddp_kbit.wire.vector import Rows, varints, zigzag

FOREIGN = "foreign"   # the manifest's format of a described topic


@dataclass(frozen=True)
class TopicDescription:
    """A topic's description as it travels with manifests and run specs (the schema's
    text included, so ranks need no file; registry credentials never included)."""

    value_format: str
    image_field: str = "image"
    label_field: str = "label"
    shape: tuple[int, ...] = ()
    dtype: str = "uint8"
    num_classes: int | None = None
    classes: tuple[str, ...] = ()
    framing: str = "none"
    schema_text: str | None = None       # .avsc JSON or .proto text (the reader schema with a registry)
    value_message: str | None = None
    schema_registry: str | None = None

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> TopicDescription:
        d = dict(d)
        d["shape"], d["classes"] = tuple(d.get("shape") or ()), tuple(d.get("classes") or ())
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


Lookup = Callable[[tuple], tuple[str, str]]   # ("id", n) / ("guid", b) -> (schema type, schema text); KeyError


class ForeignCodec:
    format = FOREIGN
    layout = "foreign"

    def __init__(self, source: TopicDescription, lookup: Lookup | None = None):
        self.source, self.lookup = source, lookup
        self.fmt = source.value_format
        self._writers: dict = {}
        self._reader = None
        if self.fmt == "avro" and source.schema_text:
            self._reader = _avro_schema(source.schema_text)
        if self.fmt == "protobuf" and source.framing == "none":
            from ddp_kbit.wire.protoschema import message_class

            self._message = message_class(source.schema_text, source.value_message)
        self.headers: list = []

    # ------------------------------------------------------------ per value
    def decode_one(self, value) -> tuple[np.ndarray, int]:
        """(image array of the source's shape and dtype, label); DecodeError otherwise."""
        if value is None:
            raise DecodeError(self.fmt, "tombstone", "null value")
        if not value:
            raise DecodeError(self.fmt, "truncated", "empty message value")
        try:
            record = self._parse(bytes(value))
            image = field_at(record, self.source.image_field, self.fmt)
            label = field_at(record, self.source.label_field, self.fmt)
            return to_image(image, self.source.shape, self.source.dtype, self.fmt), self.label_of(label)
        except DecodeError:
            raise
        except Exception as exc:  # anything a parser raises is a bad value, never a crash
            raise DecodeError(self.fmt, "malformed", f"{type(exc).__name__}: {str(exc)[:200]}") from None

    def _parse(self, value: bytes):
        src = self.source
        if src.framing == "confluent":
            frame = parse_frame(value, self.fmt, protobuf=self.fmt == "protobuf")
            payload, writer = value[frame.start:], self._writer(frame.schema, frame.message_indexes)
        else:
            payload, writer = value, None
        if self.fmt == "json":
            try:
                return json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise DecodeError("json", "malformed", str(exc)[:200]) from None
        if self.fmt == "bson":
            import bson

            try:
                return bson.decode(payload)
            except Exception as exc:
                raise DecodeError("bson", "malformed", str(exc)[:200]) from None
        if self.fmt == "avro":
            import fastavro

            buf = io.BytesIO(payload)
            schema = writer or self._reader
            try:
                rec = fastavro.schemaless_reader(buf, schema, self._reader if writer is not None else None)
            except EOFError:
                raise DecodeError("avro", "truncated", "datum ends early") from None
            if buf.tell() != len(payload):
                raise DecodeError("avro", "malformed", f"{len(payload) - buf.tell()} trailing bytes after the datum")
            return rec
        cls = writer or self._message
        msg = cls()
        try:
            msg.ParseFromString(payload)
        except Exception as exc:
            raise DecodeError("protobuf", "malformed", str(exc)[:200]) from None
        return msg

    def _writer(self, ref: tuple, indexes):
        """The writer schema of a framed value, fetched once per schema (and message)."""
        key = (ref, indexes)
        if key not in self._writers:
            try:
                if self.lookup is None:   # no registry: the one --value-schema is every id's writer schema
                    if self.source.schema_text is None:
                        raise KeyError("no --schema-registry and no --value-schema")
                    kind, text = self.fmt.upper(), self.source.schema_text
                else:
                    kind, text = self.lookup(ref)
            except KeyError as exc:
                what = f"id {ref[1]}" if ref[0] == "id" else f"GUID {ref[1].hex()}"
                raise DecodeError(self.fmt, "unknown_schema", f"the registry does not know schema {what}"
                                  + (f" ({exc.args[0]})" if exc.args else "")) from None
            if self.fmt == "avro":
                self._writers[key] = _avro_schema(text)
            elif self.fmt == "protobuf":
                from ddp_kbit.wire.protoschema import message_class

                self._writers[key] = message_class(text, self.source.value_message if self.lookup is None else None,
                                                   indexes)
            else:
                self._writers[key] = True   # JSON Schema: the text is validated by the producer; nothing to apply
        writer = self._writers[key]
        return None if writer is True else writer

    def label_of(self, label) -> int:
        classes = self.source.classes
        if isinstance(label, str):
            if label not in classes:
                raise DecodeError(self.fmt, "bad_label", f"label {label[:50]!r} is not one of the {len(classes)} "
                                  "classes")
            return classes.index(label)
        if isinstance(label, float) and label.is_integer():
            label = int(label)
        if not is_int(label):
            raise DecodeError(self.fmt, "wrong_type", f"label must be an integer or a class name, got "
                              f"{type(label).__name__}")
        return int(label)

    # ------------------------------------------------------------ batches
    def decode_batch(self, values: Sequence[bytes | None], shape=None, dtype=None,
                     num_classes: int | None = None) -> Batch:
        shape = tuple(shape or self.source.shape)
        dtype = dtype or self.source.dtype
        n = len(values)
        ok = np.zeros(n, bool)
        images = np.empty((n, *shape), DTYPES[dtype])
        labels = np.zeros(n, np.int64)
        fast = self._fast(values, shape, dtype)
        if fast is not None:
            fok, fimg, flab = fast
            ok[fok], images[fok], labels[fok] = True, fimg, flab
        errors = []
        for i in np.flatnonzero(~ok):
            try:
                images[i], labels[i] = self.decode_one(values[i])
                ok[i] = True
            except DecodeError as exc:
                errors.append((int(i), exc))
        classes = num_classes if num_classes is not None else self.source.num_classes
        if classes is not None:
            bad = ok & ((labels < 0) | (labels >= classes))
            for i in np.flatnonzero(bad):
                errors.append((int(i), DecodeError(self.fmt, "bad_label", f"label {int(labels[i])} not in "
                                                                           f"0..{classes - 1}")))
            ok &= ~bad
        errors.sort(key=lambda e: e[0])
        pos = np.flatnonzero(ok)
        return Batch(images[pos], labels[pos], np.full(len(pos), -1, np.int64), errors, pos.astype(np.int64))

    def _fast(self, values, shape, dtype):
        """Fixed-layout Avro records in one vectorised pass: ``(ok, images, labels)`` or None."""
        if self.fmt != "avro" or not values or any(v is None for v in values):
            return None
        head = b""
        if self.source.framing == "confluent":
            first = values[0]
            if len(first) < 5 or first[0] != 0:
                return None
            head = bytes(first[:5])
            try:
                schema = self._writer(("id", int.from_bytes(head[1:5], "big")), None)
            except DecodeError:
                return None
        else:
            schema = self._reader
        layout = avro_layout(schema, self.source.image_field, self.source.label_field,
                             math.prod(shape) * DTYPES[dtype].itemsize)
        if layout is None:
            return None
        rows = Rows(values)
        col = np.full(len(rows), len(head), np.int64)
        ok = rows.matches(rows.starts, head) if head else np.ones(len(rows), bool)
        label = data_pos = None
        for kind, arg in layout:
            if kind == "varint":
                H = rows.gather(rows.starts + col, 10)
                v, end, vok = varints(H, np.zeros(len(rows), np.int64), rows.lens - col)
                ok &= vok
                if arg:
                    label = zigzag(v)
                col += end
            else:   # the image: a constant length prefix, then the bytes
                ok &= rows.matches(rows.starts + col, arg[0])
                data_pos = rows.starts + col + len(arg[0])
                col += len(arg[0]) + arg[1]
        ok &= col == rows.lens
        sel = np.flatnonzero(ok)
        pixels = rows.windows(data_pos[sel], math.prod(shape) * DTYPES[dtype].itemsize)
        return ok, pixels.view(DTYPES[dtype]).reshape((len(sel), *shape)), label[sel]


def avro_layout(schema, image_field: str, label_field: str, nbytes: int):
    """The record as a fixed sequence: ("varint", is_label) for int/long fields and
    ("image", (length prefix, nbytes)) for a ``bytes`` image; None if it is not one."""
    if not isinstance(schema, dict) or schema.get("type") != "record" or "." in image_field or "." in label_field:
        return None
    out, found = [], set()
    for f in schema["fields"]:
        t = f["type"]
        if f["name"] == image_field and t == "bytes":
            out.append(("image", (zigzag_bytes(nbytes), nbytes)))
            found.add("image")
        elif t in ("int", "long"):
            out.append(("varint", f["name"] == label_field))
            if f["name"] == label_field:
                found.add("label")
        else:
            return None
    return out if found == {"image", "label"} else None


def _avro_schema(text: str):
    import fastavro

    try:
        return fastavro.parse_schema(json.loads(text))
    except Exception as exc:
        raise ConfigError(f"the Avro schema does not parse: {str(exc)[:200]}") from None


def field_at(record, path: str, fmt: str):
    """The value at a dotted path of a dict, an Avro record or a Protobuf message."""
    value = record
    for part in path.split("."):
        if isinstance(value, dict):
            if part not in value:
                raise DecodeError(fmt, "missing_field", path)
            value = value[part]
        elif hasattr(value, "DESCRIPTOR"):   # a protobuf message
            if part not in value.DESCRIPTOR.fields_by_name:
                raise DecodeError(fmt, "missing_field", path)
            value = getattr(value, part)
        else:
            raise DecodeError(fmt, "missing_field", f"{path} (no field {part!r} in a {type(value).__name__})")
    if value is None:
        raise DecodeError(fmt, "missing_field", path)
    return value


def to_image(value, shape: tuple, dtype: str, fmt: str) -> np.ndarray:
    """bytes (raw C-order), base64 text, or a flat or nested list of numbers -> array."""
    want = math.prod(shape)
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecodeError(fmt, "bad_base64", str(exc)) from None
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) != want * DTYPES[dtype].itemsize:
            raise DecodeError(fmt, "size_mismatch", f"{len(value)} image bytes for shape {list(shape)} {dtype}")
        return np.frombuffer(value, DTYPES[dtype]).reshape(shape)
    if not isinstance(value, (list, tuple, dict)) and hasattr(value, "__len__"):
        value = list(value)   # a protobuf repeated field
    if isinstance(value, (list, tuple)):
        try:
            arr = np.asarray(value, dtype=np.float64 if dtype == "float32" else None)
        except (TypeError, ValueError) as exc:
            raise DecodeError(fmt, "wrong_type", f"image values must be numbers ({exc})") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or arr.size != want:
            reason = "size_mismatch" if arr.dtype != object and np.issubdtype(arr.dtype, np.number) else "wrong_type"
            raise DecodeError(fmt, reason, f"{arr.size} image values for shape {list(shape)}")
        if dtype == "uint8":
            if not np.issubdtype(arr.dtype, np.integer) and not np.all(np.mod(arr, 1) == 0):
                raise DecodeError(fmt, "wrong_type", "uint8 images need integer values; pass --dtype float32")
            if arr.size and (arr.min() < 0 or arr.max() > 255):
                raise DecodeError(fmt, "out_of_range", "pixel values must be 0..255 for uint8")
        return arr.astype(DTYPES[dtype]).reshape(shape)
    raise DecodeError(fmt, "wrong_type", f"the image must be bytes, base64 text or a list, got {type(value).__name__}")
