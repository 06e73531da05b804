"""Wire contract v1: the Sample record, its names and bounds, and the checks every
format shares. Imports no codec library, so config and tests can use the names."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from ddp_kbit.errors import DecodeError

SCHEMA_ID = "sample/v1"
HEADER_FORMAT = "ddp_kbit.format"
HEADER_SCHEMA = "ddp_kbit.schema"
FORMATS = ("json", "avro", "protobuf", "bson")
LAYOUTS = ("bytes", "list")
# Explicit little-endian so float32 bytes mean the same on every producer host.
DTYPES = {"uint8": np.dtype("u1"), "float32": np.dtype("<f4")}


class BadReason(StrEnum):
    """Why a record is not a valid sample of the run: the only reasons a bad record is
    counted, dead-lettered and reported by (``DecodeError.reason``)."""

    TRUNCATED = "truncated"
    MALFORMED = "malformed"
    WRONG_TYPE = "wrong_type"
    MISSING_FIELD = "missing_field"
    BOTH_FIELDS = "both_fields"
    BAD_DTYPE = "bad_dtype"
    BAD_SHAPE = "bad_shape"
    SIZE_MISMATCH = "size_mismatch"
    BAD_BASE64 = "bad_base64"
    OUT_OF_RANGE = "out_of_range"
    SHAPE_MISMATCH = "shape_mismatch"
    TOMBSTONE = "tombstone"
    BAD_LABEL = "bad_label"
    BAD_FRAMING = "bad_framing"          # topics we did not write (ddp_kbit.wire.foreign)
    UNKNOWN_SCHEMA = "unknown_schema"


REASONS = tuple(r.value for r in BadReason)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def topic_name(dataset: str, split: str, fmt: str, layout: str = "bytes") -> str:
    """The default topic: ``{dataset}.{split}.{format}``, ``.list`` appended for the list layout."""
    name = f"{dataset}.{split}.{fmt}"
    return name + ".list" if layout == "list" else name


def headers(fmt: str) -> list[tuple[str, bytes]]:
    """The headers every record of a ``fmt`` topic carries."""
    return [(HEADER_FORMAT, fmt.encode()), (HEADER_SCHEMA, SCHEMA_ID.encode())]


def sample_nbytes(shape: Sequence[int], dtype: str) -> int:
    return math.prod(shape) * DTYPES[dtype].itemsize


@dataclass(frozen=True)
class Sample:
    index: int
    label: int
    shape: tuple[int, ...]
    dtype: str
    data: bytes | None = None
    pixels: Sequence[int] | None = None

    @classmethod
    def from_array(cls, index: int, label: int, array: np.ndarray, layout: str = "bytes") -> Sample:
        array = np.asarray(array)
        dtype = dtype_name(array.dtype)
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
    """Decoded values: ``images`` (N, *shape), int64 labels and indices, the input
    position of each good row, and the bad values as ``(position, DecodeError)``."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    errors: list[tuple[int, DecodeError]] = field(default_factory=list)
    positions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


def dtype_name(dtype: np.dtype) -> str:
    for name, dt in DTYPES.items():
        if np.dtype(dtype).newbyteorder("<") == dt.newbyteorder("<"):
            return name
    raise ValueError(f"dtype {dtype} not in the contract; allowed: {', '.join(DTYPES)}")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require_int(fmt: str, name: str, value, bounds: tuple[int, int]) -> int:
    if value is None:
        raise DecodeError(fmt, "missing_field", name)
    if not is_int(value):
        raise DecodeError(fmt, "wrong_type", f"{name} must be an integer, got {type(value).__name__}")
    if not bounds[0] <= value <= bounds[1]:
        raise DecodeError(fmt, "out_of_range", f"{name}={value}")
    return int(value)


def validated(fmt: str, index, label, shape, dtype, data, pixels) -> Sample:
    """Checks shared by every format; returns a Sample whose payload fits its shape."""
    index = require_int(fmt, "index", index, INT64)
    label = require_int(fmt, "label", label, INT32)
    if shape is None:
        raise DecodeError(fmt, "missing_field", "shape")
    if not isinstance(shape, (list, tuple)) or not all(is_int(d) for d in shape):
        raise DecodeError(fmt, "wrong_type", "shape must be a list of integers")
    if not shape or any(d < 1 or d > INT32[1] for d in shape):
        raise DecodeError(fmt, "bad_shape", f"shape={list(shape)}")
    if dtype is None or dtype == "":
        raise DecodeError(fmt, "missing_field", "dtype")
    if not isinstance(dtype, str):
        raise DecodeError(fmt, "wrong_type", "dtype must be a string")
    if dtype not in DTYPES:
        raise DecodeError(fmt, "bad_dtype", f"{dtype!r} not in {list(DTYPES)}")
    if data is not None and pixels is not None:
        raise DecodeError(fmt, "both_fields", "data and pixels are both set")
    if data is None and pixels is None:
        raise DecodeError(fmt, "missing_field", "data or pixels")
    count = math.prod(shape)
    if data is not None:
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


def pixels_as_uint8(fmt: str, pixels: Sequence) -> np.ndarray:
    """List-layout pixels as uint8; out_of_range / wrong_type for values a byte cannot hold."""
    try:
        arr = np.asarray(pixels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DecodeError(fmt, "wrong_type", f"pixels must be integers ({exc})") from None
    if arr.ndim != 1:
        raise DecodeError(fmt, "wrong_type", "pixels must be a flat list")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise DecodeError(fmt, "out_of_range", "pixel values must be 0..255")
    return arr.astype(np.uint8)
