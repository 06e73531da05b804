"""Wire codecs for contract v1: one tiny class per format, each with both layouts.

Producer and consumer share these classes, so what is written is exactly what is
read. ``encode`` turns one :class:`Sample` into a message value; ``decode`` parses
and validates one value; ``decode_batch`` turns many values into one array without
building a per-sample tensor (join the bytes, one ``np.frombuffer``, one reshape).
A bad value never aborts a batch: it comes back in ``Batch.errors`` with a reason.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

SCHEMA_ID = "sample/v1"
HEADER_FORMAT = "ddp_kbit.format"
HEADER_SCHEMA = "ddp_kbit.schema"
FORMATS = ("json", "avro", "protobuf", "bson")
LAYOUTS = ("bytes", "list")
# Explicit little-endian so float32 bytes mean the same on every producer host.
DTYPES = {"uint8": np.dtype("u1"), "float32": np.dtype("<f4")}
REASONS = (
    "truncated", "malformed", "wrong_type", "missing_field", "both_fields",
    "bad_dtype", "bad_shape", "size_mismatch", "bad_base64", "out_of_range",
    "shape_mismatch",
)
INT32 = (-(2**31), 2**31 - 1)


def _strict_b64decode():
    """Strict standard base64: pybase64 (SIMD, ~30x binascii) when installed."""
    try:
        import pybase64

        return lambda text: pybase64.b64decode(text, validate=True)
    except ImportError:
        return lambda text: binascii.a2b_base64(text, strict_mode=True)


b64decode = _strict_b64decode()
INT64 = (-(2**63), 2**63 - 1)


class DecodeError(ValueError):
    """A message value that is not a valid v1 Sample; ``reason`` is one of REASONS."""

    def __init__(self, fmt: str, reason: str, detail: str = ""):
        self.format, self.reason, self.detail = fmt, reason, detail
        super().__init__(f"{fmt}: {reason}" + (f": {detail}" if detail else ""))


@dataclass(frozen=True)
class Sample:
    index: int
    label: int
    shape: tuple[int, ...]
    dtype: str
    data: bytes | None = None
    pixels: Sequence[int] | None = None

    @classmethod
    def from_array(cls, index: int, label: int, array: np.ndarray, layout: str = "bytes") -> "Sample":
        array = np.asarray(array)
        dtype = _dtype_name(array.dtype)
        if layout == "bytes":
            data = np.ascontiguousarray(array, dtype=DTYPES[dtype]).tobytes()
            return cls(int(index), int(label), tuple(array.shape), dtype, data=data)
        if layout == "list":
            if dtype != "uint8":
                raise ValueError(f"the list layout carries uint8 only, got {dtype}")
            return cls(int(index), int(label), tuple(array.shape), dtype, pixels=array.ravel().tolist())
        raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")

    @property
    def layout(self) -> str:
        return "bytes" if self.data is not None else "list"

    def to_array(self) -> np.ndarray:
        if self.data is not None:
            return np.frombuffer(self.data, dtype=DTYPES[self.dtype]).reshape(self.shape)
        return np.asarray(self.pixels, dtype=np.uint8).reshape(self.shape)


@dataclass
class Batch:
    """Decoded values: ``images`` (N, *shape), int64 labels and indices, and the
    bad values as ``(position in the input, DecodeError)``."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    errors: list[tuple[int, DecodeError]] = field(default_factory=list)
    positions: np.ndarray | None = None  # input positions of the good rows

    def __len__(self) -> int:
        return len(self.labels)


def _dtype_name(dtype: np.dtype) -> str:
    for name, dt in DTYPES.items():
        if np.dtype(dtype).newbyteorder("<") == dt.newbyteorder("<"):
            return name
    raise ValueError(f"dtype {dtype} not in the contract; allowed: {', '.join(DTYPES)}")


# ---------------------------------------------------------------- validation
def _require_int(fmt: str, name: str, value, bounds: tuple[int, int]) -> int:
    if value is None:
        raise DecodeError(fmt, "missing_field", name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(fmt, "wrong_type", f"{name} must be an integer, got {type(value).__name__}")
    if not bounds[0] <= value <= bounds[1]:
        raise DecodeError(fmt, "out_of_range", f"{name}={value}")
    return int(value)


def _validated(fmt: str, index, label, shape, dtype, data, pixels) -> Sample:
    """Checks shared by every format; returns a Sample whose payload fits its shape."""
    index = _require_int(fmt, "index", index, INT64)
    label = _require_int(fmt, "label", label, INT32)
    if shape is None:
        raise DecodeError(fmt, "missing_field", "shape")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise DecodeError(fmt, "wrong_type", "shape must be a list of integers")
    if not shape or any(d < 1 or d > INT32[1] for d in shape):
        raise DecodeError(fmt, "bad_shape", f"shape={list(shape)}")
    if dtype is None or dtype == "":
        raise DecodeError(fmt, "missing_field", "dtype")
    if not isinstance(dtype, str):
        raise DecodeError(fmt, "wrong_type", "dtype must be a string")
    if dtype not in DTYPES:
        raise DecodeError(fmt, "bad_dtype", f"{dtype!r} not in {list(DTYPES)}")
    has_data, has_pixels = data is not None, pixels is not None
    if has_data and has_pixels:
        raise DecodeError(fmt, "both_fields", "data and pixels are both set")
    if not has_data and not has_pixels:
        raise DecodeError(fmt, "missing_field", "data or pixels")
    count = math.prod(shape)
    if has_data:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(fmt, "wrong_type", f"data must be bytes, got {type(data).__name__}")
        want = count * DTYPES[dtype].itemsize
        if len(data) != want:
            raise DecodeError(fmt, "size_mismatch", f"{len(data)} data bytes for shape {list(shape)} {dtype} (want {want})")
        return Sample(index, label, tuple(shape), dtype, data=bytes(data))
    if dtype != "uint8":
        raise DecodeError(fmt, "bad_dtype", "the list layout carries uint8 only")
    if not isinstance(pixels, (list, tuple)):
        raise DecodeError(fmt, "wrong_type", "pixels must be a list of integers")
    if len(pixels) != count:
        raise DecodeError(fmt, "size_mismatch", f"{len(pixels)} pixels for shape {list(shape)}")
    return Sample(index, label, tuple(shape), dtype, pixels=pixels)


def _list_rows_ok(fmt: str, pixels: Sequence) -> np.ndarray:
    """Pixels as uint8, raising out_of_range / wrong_type for values a byte cannot hold."""
    try:
        arr = np.asarray(pixels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DecodeError(fmt, "wrong_type", f"pixels must be integers ({exc})") from None
    if arr.ndim != 1:
        raise DecodeError(fmt, "wrong_type", "pixels must be a flat list")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise DecodeError(fmt, "out_of_range", "pixel values must be 0..255")
    return arr.astype(np.uint8)


# ---------------------------------------------------------------- codecs
class Codec:
    """Base: subclasses implement ``encode`` and ``parse`` (value -> Sample fields)."""

    format = ""

    def __init__(self, layout: str = "bytes"):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
        self.layout = layout

    def encode(self, sample: Sample) -> bytes:
        raise NotImplementedError

    def parse(self, value: bytes) -> tuple:
        """-> (index, label, shape, dtype, data, pixels) as found; DecodeError if unreadable."""
        raise NotImplementedError

    def encode_array(self, index: int, label: int, array: np.ndarray) -> bytes:
        return self.encode(Sample.from_array(index, label, array, self.layout))

    def decode(self, value: bytes) -> Sample:
        if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) == 0:
            raise DecodeError(self.format, "truncated", "empty message value")
        sample = _validated(self.format, *self.parse(bytes(value)))
        if sample.pixels is not None:
            _list_rows_ok(self.format, sample.pixels)
        return sample

    def decode_batch(self, values: Sequence[bytes], shape: Sequence[int] | None = None,
                     dtype: str | None = None) -> Batch:
        """Decode many values into one array. ``shape``/``dtype`` (from the manifest)
        fix the expected sample type; without them the first good value sets it."""
        return decode_batch(self, values, shape, dtype)


def decode_batch(codec: Codec, values: Sequence[bytes], shape=None, dtype=None) -> Batch:
    """Canonical bytes-layout values go through the vectorised decoder
    (:mod:`ddp_kbit.fastpath`); the rest through the per-value one, which accepts
    every valid encoding and names the reason for a bad value."""
    from ddp_kbit import fastpath

    errors: list[tuple[int, DecodeError]] = []
    want = (tuple(shape), dtype) if shape is not None and dtype is not None else None
    start = 0
    while want is None and start < len(values):  # the first good value fixes the sample type
        try:
            first = _validated_fast(codec, values[start])
            want = (first.shape, first.dtype)
        except DecodeError as exc:
            errors.append((start, exc))
            start += 1
    if want is None:
        return _assemble(codec.format, [], [], errors, None)
    fast = fastpath.decode(codec.format, values[start:], want[0], want[1])
    if fast is None:
        return _decode_each(codec, values, range(start, len(values)), want, errors)
    ok, images, labels, indices = fast
    vector = Batch(images, labels, indices, [], start + np.flatnonzero(ok))
    if ok.all():
        errors.sort(key=lambda e: e[0])
        vector.errors = errors
        return vector
    rest = _decode_each(codec, values, (start + np.flatnonzero(~ok)).tolist(), want, errors)
    return _concat(vector, rest)


def _concat(a: Batch, b: Batch) -> Batch:
    """Rows of both batches in input order; b's errors are the batch's."""
    if len(b) == 0:
        a.errors = b.errors
        return a
    positions = np.concatenate([a.positions, b.positions])
    order = np.argsort(positions, kind="stable")
    return Batch(np.concatenate([a.images, b.images])[order], np.concatenate([a.labels, b.labels])[order],
                 np.concatenate([a.indices, b.indices])[order], b.errors, positions[order])


def _decode_each(codec: Codec, values, positions_in, want, errors) -> Batch:
    """Per-value decoding of ``values[p]`` for p in ``positions_in``: values whose
    parsed fields match the expected type skip building a Sample; everything else
    takes the full validation."""
    want_shape, want_dtype = list(want[0]), want[1]
    nbytes = math.prod(want[0]) * DTYPES[want_dtype].itemsize
    parse = codec.parse
    datas, labels, indices, positions, slow = [], [], [], [], []
    for pos in positions_in:
        try:
            index, label, shp, dt, data, pixels = parse(values[pos])
        except DecodeError as exc:
            errors.append((pos, exc))
            continue
        if (pixels is None and data is not None and dt == want_dtype and len(data) == nbytes and shp == want_shape
                and type(label) is int and INT32[0] <= label <= INT32[1]
                and isinstance(index, int) and not isinstance(index, bool) and INT64[0] <= index <= INT64[1]):
            datas.append(data)
            labels.append(label)
            indices.append(index)
            positions.append(pos)
        else:
            slow.append(pos)
    if not slow:
        return _assemble_fast(datas, labels, indices, positions, errors, want)
    good = [Sample(i, lab, want[0], want_dtype, data=d) for i, lab, d in zip(indices, labels, datas)]
    for pos in slow:
        try:
            sample = _validated_fast(codec, values[pos])
            if (sample.shape, sample.dtype) != want:
                raise DecodeError(codec.format, "shape_mismatch",
                                  f"{list(sample.shape)} {sample.dtype}, expected {list(want[0])} {want[1]}")
        except DecodeError as exc:
            errors.append((pos, exc))
            continue
        good.append(sample)
        positions.append(pos)
    order = sorted(range(len(good)), key=positions.__getitem__)
    return _assemble(codec.format, [good[i] for i in order], [positions[i] for i in order], errors, want)


def _assemble_fast(datas, labels, indices, positions, errors, want) -> Batch:
    shape, dtype = want
    # bytearray: a writable buffer, so torch.from_numpy needs no copy and no warning
    flat = np.frombuffer(bytearray().join(datas), dtype=DTYPES[dtype])
    errors.sort(key=lambda e: e[0])
    return Batch(images=flat.reshape((len(datas), *shape)), labels=np.array(labels, dtype=np.int64),
                 indices=np.array(indices, dtype=np.int64), errors=errors,
                 positions=np.array(positions, dtype=np.int64))


def _validated_fast(codec: Codec, value) -> Sample:
    # Same checks as Codec.decode, minus the per-row pixel range check that
    # _assemble does once for the whole batch.
    if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) == 0:
        raise DecodeError(codec.format, "truncated", "empty message value")
    return _validated(codec.format, *codec.parse(value))


def _assemble(fmt: str, good: list[Sample], positions: list[int], errors: list, want) -> Batch:
    shape, dtype = want if want is not None else ((), "uint8")
    if good and all(s.data is not None for s in good):
        # bytearray: a writable buffer, so torch.from_numpy needs no copy and no warning
        flat = np.frombuffer(bytearray().join([s.data for s in good]), dtype=DTYPES[dtype])
    elif good:
        flat, good, positions = _assemble_mixed(fmt, good, positions, errors, shape, dtype)
    else:
        flat = np.empty(0, dtype=DTYPES[dtype])
    errors.sort(key=lambda e: e[0])
    return Batch(
        images=flat.reshape((len(good), *shape)),
        labels=np.fromiter((s.label for s in good), dtype=np.int64, count=len(good)),
        indices=np.fromiter((s.index for s in good), dtype=np.int64, count=len(good)),
        errors=errors,
        positions=np.asarray(positions, dtype=np.int64),
    )


def _assemble_mixed(fmt, good, positions, errors, shape, dtype):
    """List-layout (or mixed) rows: one int64 matrix, a vectorised range check, and
    only rows that fail are looked at one by one."""
    size = math.prod(shape)
    rows = np.empty((len(good), size), dtype=np.int64)
    for i, s in enumerate(good):
        if s.data is not None:
            rows[i] = np.frombuffer(s.data, dtype=DTYPES[dtype])
        else:
            try:
                rows[i] = s.pixels
            except (TypeError, ValueError, OverflowError) as exc:
                rows[i] = -1
                errors.append((positions[i], DecodeError(fmt, "wrong_type", f"pixels must be integers ({exc})")))
    bad = (rows.min(axis=1) < 0) | (rows.max(axis=1) > 255) if size else np.zeros(len(good), bool)
    already = {p for p, _ in errors}
    for i in np.flatnonzero(bad):
        if positions[i] not in already:
            errors.append((positions[i], DecodeError(fmt, "out_of_range", "pixel values must be 0..255")))
    keep = np.flatnonzero(~bad)
    return (rows[keep].astype(DTYPES[dtype]).ravel(), [good[i] for i in keep], [positions[i] for i in keep])


class JsonCodec(Codec):
    format = "json"

    def encode(self, s: Sample) -> bytes:
        obj = {"index": s.index, "label": s.label, "shape": list(s.shape), "dtype": s.dtype}
        if s.data is not None:
            obj["data"] = base64.b64encode(s.data).decode("ascii")
        else:
            obj["pixels"] = list(s.pixels)
        return json.dumps(obj, separators=(",", ":")).encode("utf-8")

    def parse(self, value):
        try:
            # Decode as UTF-8 ourselves: json.loads would sniff UTF-16/32 from bytes.
            obj = json.loads(bytes(value).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DecodeError("json", "malformed", f"not UTF-8 ({exc.reason})") from None
        except json.JSONDecodeError as exc:
            reason = "truncated" if exc.pos >= len(exc.doc.rstrip()) else "malformed"
            raise DecodeError("json", reason, exc.msg) from None
        if not isinstance(obj, dict):
            raise DecodeError("json", "wrong_type", f"value must be an object, got {type(obj).__name__}")
        data = obj.get("data")
        if data is not None:
            if not isinstance(data, str):
                raise DecodeError("json", "wrong_type", "data must be a base64 string")
            try:
                data = b64decode(data)
            except (binascii.Error, ValueError) as exc:
                raise DecodeError("json", "bad_base64", str(exc)) from None
        return obj.get("index"), obj.get("label"), obj.get("shape"), obj.get("dtype"), data, obj.get("pixels")


class AvroCodec(Codec):
    format = "avro"

    def __init__(self, layout: str = "bytes"):
        super().__init__(layout)
        import fastavro

        from schemas import load_avro_schema

        self._schema = fastavro.parse_schema(load_avro_schema())
        self._write, self._read = fastavro.schemaless_writer, fastavro.schemaless_reader

    def encode(self, s: Sample) -> bytes:
        buf = io.BytesIO()
        pixels = list(s.pixels) if s.pixels is not None else None
        self._write(buf, self._schema, {"index": s.index, "label": s.label, "shape": list(s.shape),
                                        "dtype": s.dtype, "data": s.data, "pixels": pixels})
        return buf.getvalue()

    def parse(self, value):
        buf = io.BytesIO(value)
        try:
            rec = self._read(buf, self._schema, None)
        except EOFError as exc:
            raise DecodeError("avro", "truncated", str(exc) or "datum ends early") from None
        except (IndexError, ValueError, UnicodeDecodeError, TypeError, KeyError, OverflowError) as exc:
            # IndexError: a union branch number the schema does not have
            raise DecodeError("avro", "malformed", str(exc)) from None
        if buf.tell() != len(value):
            raise DecodeError("avro", "malformed", f"{len(value) - buf.tell()} trailing bytes after the datum")
        return rec["index"], rec["label"], rec["shape"], rec["dtype"], rec["data"], rec["pixels"]


class ProtobufCodec(Codec):
    format = "protobuf"

    def __init__(self, layout: str = "bytes"):
        super().__init__(layout)
        from google.protobuf.message import DecodeError as PbDecodeError

        from schemas import sample_pb2

        self._cls, self._pb_error = sample_pb2.Sample, PbDecodeError

    def encode(self, s: Sample) -> bytes:
        msg = self._cls(index=s.index, label=s.label, shape=s.shape, dtype=s.dtype)
        if s.data is not None:
            msg.data = s.data
        else:
            msg.pixels.extend(s.pixels)
        return msg.SerializeToString()

    def parse(self, value):
        try:
            msg = self._cls.FromString(value)
        except self._pb_error:
            # upb says only "wire format was corrupt"; walk the fields to say more.
            reason, detail = _protobuf_fault(value)
            raise DecodeError("protobuf", reason, detail) from None
        # proto3 scalars have no presence: an empty bytes/list field counts as unset.
        data = msg.data if msg.data else None
        pixels = list(msg.pixels) if len(msg.pixels) else None
        return msg.index, msg.label, list(msg.shape) or None, msg.dtype or None, data, pixels


def _protobuf_fault(value: bytes) -> tuple[str, str]:
    """Why a protobuf value failed to parse: ``truncated`` if a varint or a
    length-delimited field runs past the end, else ``malformed``."""
    pos, n = 0, len(value)

    def varint(pos):
        shift = result = 0
        while pos < n:
            b = value[pos]
            result |= (b & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if not b & 0x80:
                return result, pos
        raise EOFError

    try:
        while pos < n:
            tag, pos = varint(pos)
            wire = tag & 7
            if tag >> 3 == 0 or wire in (3, 4, 6, 7):
                return "malformed", f"invalid tag {tag} at byte {pos}"
            if wire == 0:
                _, pos = varint(pos)
            elif wire == 2:
                length, pos = varint(pos)
                pos += length
            else:
                pos += 8 if wire == 1 else 4
            if pos > n:
                return "truncated", f"field runs {pos - n} bytes past the end"
    except EOFError:
        return "truncated", "varint runs past the end"
    return "malformed", "field values do not match the schema's types"


class BsonCodec(Codec):
    format = "bson"

    def __init__(self, layout: str = "bytes"):
        super().__init__(layout)
        import bson
        from bson.int64 import Int64

        self._bson, self._int64 = bson, Int64

    def encode(self, s: Sample) -> bytes:
        doc = {"_id": self._int64(s.index), "index": self._int64(s.index), "label": int(s.label),
               "shape": [int(d) for d in s.shape], "dtype": s.dtype}
        if s.data is not None:
            doc["data"] = self._bson.Binary(s.data, 0)
        else:
            doc["pixels"] = [int(p) for p in s.pixels]
        return self._bson.encode(doc)

    def parse(self, value):
        declared = int.from_bytes(bytes(value[:4]), "little") if len(value) >= 4 else len(value) + 1
        if declared > len(value):
            raise DecodeError("bson", "truncated", f"document says {declared} bytes, got {len(value)}")
        try:
            doc = self._bson.decode(bytes(value))
        except Exception as exc:  # bson raises InvalidBSON and friends
            raise DecodeError("bson", "malformed", str(exc)) from None
        index = doc.get("index")
        if "_id" in doc and index is not None and doc["_id"] != index:
            raise DecodeError("bson", "malformed", f"_id {doc['_id']!r} differs from index {index!r}")
        data = doc.get("data")
        if data is not None and not isinstance(data, (bytes, self._bson.Binary)):
            raise DecodeError("bson", "wrong_type", "data must be Binary")
        return index, doc.get("label"), doc.get("shape"), doc.get("dtype"), data, doc.get("pixels")


REGISTRY: dict[str, Callable[[str], Codec]] = {
    "json": JsonCodec, "avro": AvroCodec, "protobuf": ProtobufCodec, "bson": BsonCodec,
}


def get_codec(fmt: str, layout: str = "bytes") -> Codec:
    try:
        return REGISTRY[fmt](layout)
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}") from None


def headers_for(fmt: str) -> list[tuple[str, bytes]]:
    return [(HEADER_FORMAT, fmt.encode()), (HEADER_SCHEMA, SCHEMA_ID.encode())]
