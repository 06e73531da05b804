"""Vectorised decoding of canonical bytes-layout messages (numpy, no per-record Python).

In a bytes-layout topic every message of one sample type is byte-identical apart
from the index, the label and the pixel bytes: protobuf and Avro messages are
``varint head + constant middle + data`` and BSON documents have a fixed length.
So a whole batch is joined once, the constant parts are compared as matrices,
the varints are decoded column-wise, and the pixels are gathered in one fancy
index. A row that does not match the canonical form exactly (another field
order, an explicit default, a truncated value ...) is not rejected here: it is
left to the per-value decoder, which accepts every valid encoding and names the
reason for an invalid one. So this path changes speed, never results.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class Rows:
    """The joined batch: one uint8 buffer and each value's start and length."""

    def __init__(self, values):
        self.lens = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        self.buf = np.frombuffer(b"".join(values), dtype=np.uint8)
        self.ends = np.cumsum(self.lens)
        self.starts = self.ends - self.lens

    def gather(self, pos: np.ndarray, width: int) -> np.ndarray:
        """(N, width) bytes from each row's ``pos``; positions past the buffer read 0."""
        if len(self.buf) == 0:
            return np.zeros((len(pos), width), np.uint8)
        idx = pos[:, None] + np.arange(width)
        out = self.buf[np.clip(idx, 0, len(self.buf) - 1)]
        out[idx >= len(self.buf)] = 0
        return out


def varints(H: np.ndarray, col: np.ndarray, limit: np.ndarray, max_len: int = 10):
    """Decode one base-128 varint per row of H starting at ``col``; returns
    (value as uint64, end column, ok) where ok means it ended before ``limit``."""
    n = len(H)
    cols = col[:, None] + np.arange(max_len)
    B = H[np.arange(n)[:, None], np.minimum(cols, H.shape[1] - 1)].astype(np.uint64)
    last = (B & 0x80) == 0
    ok = last.any(axis=1)
    length = last.argmax(axis=1) + 1
    used = np.arange(max_len)[None, :] < length[:, None]
    shifts = (7 * np.arange(max_len)).astype(np.uint64)
    value = np.bitwise_or.reduce(np.where(used, (B & 0x7F) << shifts, 0).astype(np.uint64), axis=1)
    end = col + length
    return value, end, ok & (end <= limit)


def _zigzag(v: np.ndarray) -> np.ndarray:
    return (v >> np.uint64(1)).astype(np.int64) ^ -(v & np.uint64(1)).astype(np.int64)


def _mid_matches(rows: Rows, pos: np.ndarray, mid: bytes) -> np.ndarray:
    want = np.frombuffer(mid, dtype=np.uint8)
    return (rows.gather(pos, len(want)) == want).all(axis=1)


def _pixels(rows: Rows, pos: np.ndarray, nbytes: int) -> np.ndarray:
    # validated rows lie inside the buffer; taking rows of a strided window view
    # copies each row in one piece instead of indexing every byte
    if len(pos) == 0:
        return np.empty((0, nbytes), np.uint8)
    return np.lib.stride_tricks.sliding_window_view(rows.buf, nbytes)[pos]


# ------------------------------------------------------------------ templates
@lru_cache(maxsize=64)
def _template(fmt: str, shape: tuple, dtype: str) -> bytes:
    """The canonical encoding of a sample with index 0, label 0 and zero pixels."""
    from ddp_kbit.codecs import DTYPES, Sample, get_codec

    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    return get_codec(fmt).encode(Sample(0, 0, tuple(shape), dtype, data=bytes(nbytes)))


def _protobuf(rows: Rows, shape, dtype, nbytes):
    # proto3 leaves index 0 / label 0 out, so the template is exactly middle + data
    mid = _template("protobuf", shape, dtype)[:-nbytes]
    head_len = rows.lens - nbytes - len(mid)
    ok = (head_len >= 0) & (head_len <= 22)
    ok &= _mid_matches(rows, rows.starts + np.maximum(head_len, 0), mid)
    H = rows.gather(rows.starts, 24)
    zero = np.zeros(len(H), np.int64)
    has_index = (head_len > 0) & (H[:, 0] == 0x08)
    iv, iend, iok = varints(H, zero + 1, head_len)
    pos = np.where(has_index, iend, 0)
    ok &= ~has_index | iok
    lab_tag = H[np.arange(len(H)), np.minimum(pos, H.shape[1] - 1)]
    has_label = (pos < head_len) & (lab_tag == 0x10)
    lv, lend, lok = varints(H, pos + 1, head_len)
    pos = np.where(has_label, lend, pos)
    ok &= (~has_label | lok) & (pos == head_len)
    index = np.where(has_index, iv.view(np.int64), 0)
    label = np.where(has_label, lv.view(np.int64), 0)
    return ok, index, label, rows.ends - nbytes


def _avro(rows: Rows, shape, dtype, nbytes):
    tpl = _template("avro", shape, dtype)
    mid = tpl[2:len(tpl) - nbytes - 1]  # after the two zero varints, before data and the null pixels branch
    head_len = rows.lens - nbytes - 1 - len(mid)
    ok = (head_len >= 2) & (head_len <= 20)
    ok &= _mid_matches(rows, rows.starts + np.maximum(head_len, 0), mid)
    ok &= rows.buf[np.maximum(rows.ends - 1, 0)] == 0 if len(rows.buf) else ok
    H = rows.gather(rows.starts, 20)
    iv, iend, iok = varints(H, np.zeros(len(H), np.int64), head_len)
    lv, lend, lok = varints(H, iend, head_len)
    ok &= iok & lok & (lend == head_len)
    return ok, _zigzag(iv), _zigzag(lv), rows.ends - nbytes - 1


def _bson(rows: Rows, shape, dtype, nbytes):
    tpl = _template("bson", shape, dtype)
    size = len(tpl)
    ok = rows.lens == size
    M = rows.gather(rows.starts, size)
    offs = {name: tpl.index(key) + len(key) for name, key in
            (("_id", b"\x12_id\x00"), ("index", b"\x12index\x00"), ("label", b"\x10label\x00"),
             ("data", b"\x05data\x00"))}
    variable = np.zeros(size, bool)
    for name, width in (("_id", 8), ("index", 8), ("label", 4)):
        variable[offs[name]:offs[name] + width] = True
    data_at = offs["data"] + 5  # int32 length + subtype byte
    variable[data_at:data_at + nbytes] = True
    want = np.frombuffer(tpl, dtype=np.uint8)
    ok &= (M[:, ~variable] == want[~variable]).all(axis=1)
    le64 = lambda at: np.ascontiguousarray(M[:, at:at + 8]).view("<i8")[:, 0]  # noqa: E731
    index, _id = le64(offs["index"]), le64(offs["_id"])
    label = np.ascontiguousarray(M[:, offs["label"]:offs["label"] + 4]).view("<i4")[:, 0].astype(np.int64)
    ok &= _id == index
    return ok, index, label, rows.starts + data_at


DECODERS = {"protobuf": _protobuf, "avro": _avro, "bson": _bson}


def decode(fmt: str, values, shape: tuple, dtype: str):
    """-> (ok mask, images of the ok rows, labels, indices), or None when the format
    has no vectorised path. Rows not ok must go through the per-value decoder."""
    fn = DECODERS.get(fmt)
    if fn is None or not values:
        return None
    from ddp_kbit.codecs import DTYPES

    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    rows = Rows(values)
    ok, index, label, data_pos = fn(rows, tuple(shape), dtype, nbytes)
    ok &= (label >= INT32_MIN) & (label <= INT32_MAX) & (data_pos + nbytes <= rows.ends)
    sel = np.flatnonzero(ok)
    pixels = _pixels(rows, data_pos[sel], nbytes)
    images = pixels.view(DTYPES[dtype]).reshape((len(sel), *shape))
    return ok, images, label[sel], index[sel]
