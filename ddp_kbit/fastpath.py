"""Vectorised decoding of canonical bytes-layout messages (numpy, no per-record Python).

In a bytes-layout topic every message of one sample type is byte-identical apart
from the index, the label and the pixel bytes: protobuf and Avro messages are
``varint head + constant middle + data``, BSON documents have a fixed length, and
compact JSON is ``{"index":N,"label":N`` + a constant middle + base64 + ``"}``.
So a whole batch is joined once, the constant parts are compared as matrices,
the varints are decoded column-wise, and the pixels are gathered in one fancy
index. A row that does not match the canonical form exactly (another field
order, an explicit default, a truncated value ...) is not rejected here: it is
left to the per-value decoder, which accepts every valid encoding and names the
reason for an invalid one. So this path changes speed, never results.
"""
from __future__ import annotations

import binascii
import math
from functools import lru_cache

import numpy as np

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class Rows:
    """The joined batch: one uint8 buffer and each value's start and length."""

    def __init__(self, values):
        self.lens = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        self.raw = b"".join(values)
        self.buf = np.frombuffer(self.raw, dtype=np.uint8)
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
    # rows of the template's length lie wholly inside the buffer: whole-row copies
    M = np.zeros((len(ok), size), np.uint8)
    M[ok] = np.lib.stride_tricks.sliding_window_view(rows.buf, size)[rows.starts[ok]]
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


_POW10 = 10 ** np.arange(19, dtype=np.int64)


def json_ints(H: np.ndarray, a: np.ndarray, b: np.ndarray):
    """The JSON integers in columns [a, b) of each row: (value, ok). Up to 18
    digits (longer goes to the per-value decoder), no leading zeros, optional '-'."""
    n = len(H)
    rows = np.arange(n)
    neg = H[rows, np.minimum(a, H.shape[1] - 1)] == ord("-")
    first = a + neg
    length = b - first
    k = np.arange(18)
    cols = np.minimum(first[:, None] + k, H.shape[1] - 1)
    D = H[rows[:, None], cols].astype(np.int64) - ord("0")
    used = k[None, :] < length[:, None]
    ok = (length >= 1) & (length <= 18) & ((~used) | ((D >= 0) & (D <= 9))).all(axis=1)
    ok &= (length == 1) | (D[:, 0] != 0)
    weights = np.where(used, _POW10[np.clip(length[:, None] - 1 - k, 0, 18)], 0)
    value = (np.where(used, D, 0) * weights).sum(axis=1)
    return np.where(neg, -value, value), ok


def _json(rows: Rows, shape, dtype, nbytes):
    tpl = _template("json", shape, dtype)
    prefix, label_key = b'{"index":', b',"label":'
    mid = tpl[tpl.index(b',"shape":'):tpl.index(b'"data":"') + 8]
    b64len, tail = 4 * -(-nbytes // 3), b'"}'
    head_len = rows.lens - b64len - len(tail) - len(mid)
    ok = (head_len >= len(prefix) + len(label_key) + 2) & (head_len <= 56)
    body = rows.starts + np.maximum(head_len, 0)
    ok &= _mid_matches(rows, body, mid) & _mid_matches(rows, rows.ends - len(tail), tail)
    H = rows.gather(rows.starts, 56)
    ok &= (H[:, :len(prefix)] == np.frombuffer(prefix, np.uint8)).all(axis=1)
    comma = np.where(np.arange(56) >= len(prefix), H == ord(","), False).argmax(axis=1)
    ok &= _mid_matches(rows, rows.starts + comma, label_key) & (comma > len(prefix))
    index, iok = json_ints(H, np.full(len(H), len(prefix)), comma)
    label, lok = json_ints(H, comma + len(label_key), head_len)
    ok &= iok & lok
    return ok, index, label, (body + len(mid), b64len)


def _b64_pixels(rows: Rows, pos: np.ndarray, b64len: int, nbytes: int):
    """Strict standard base64 of each row -> (bytes (N, nbytes), ok).

    Every row's text but its last 4-character group is a whole number of
    unpadded groups, so those parts are joined and decoded in one call;
    the last groups, padding replaced by "A" once checked, in a second. If either
    call finds a bad character, rows are decoded one by one to find which."""
    from ddp_kbit.codecs import b64decode

    raw, n = rows.raw, len(pos)
    if n == 0:
        return np.empty((0, nbytes), np.uint8), np.zeros(0, bool)
    pad = b64len // 4 * 3 - nbytes
    body_len = b64len - 4
    last = rows.buf[pos[:, None] + np.arange(body_len, b64len)]
    if pad and not (last[:, 4 - pad:] == ord("=")).all():
        return _b64_rows(raw, pos.tolist(), b64len, nbytes)
    last[:, 4 - pad:] = ord("A")
    try:
        body = b64decode(np.lib.stride_tricks.sliding_window_view(rows.buf, body_len)[pos].tobytes()) \
            if body_len else b""
        tails = b64decode(last.tobytes())
    except (binascii.Error, ValueError):
        return _b64_rows(raw, pos.tolist(), b64len, nbytes)
    out = np.empty((n, nbytes), np.uint8)
    out[:, :body_len // 4 * 3] = np.frombuffer(body, np.uint8).reshape(n, -1)
    out[:, body_len // 4 * 3:] = np.frombuffer(tails, np.uint8).reshape(n, 3)[:, :3 - pad]
    return out, np.ones(n, bool)


def _b64_rows(raw: bytes, starts: list, b64len: int, nbytes: int):
    """One row at a time: only for batches holding a row with bad base64."""
    from ddp_kbit.codecs import b64decode

    parts, ok = [], np.ones(len(starts), bool)
    for i, p in enumerate(starts):
        try:
            part = b64decode(raw[p:p + b64len])
        except (binascii.Error, ValueError):
            part = None
        if part is not None and len(part) == nbytes:
            parts.append(part)
        else:
            ok[i] = False
    return np.frombuffer(bytearray().join(parts), np.uint8).reshape(len(parts), nbytes), ok


DECODERS = {"protobuf": _protobuf, "avro": _avro, "bson": _bson, "json": _json}


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
    ok &= (label >= INT32_MIN) & (label <= INT32_MAX)
    if fmt == "json":  # data is base64 text: decode it, and drop rows whose text is not canonical
        pos, b64len = data_pos
        pixels, b64ok = _b64_pixels(rows, pos[np.flatnonzero(ok)], b64len, nbytes)
        ok[np.flatnonzero(ok)] &= b64ok   # pixels holds the b64ok rows only
    else:
        ok &= data_pos + nbytes <= rows.ends
        pixels = _pixels(rows, data_pos[np.flatnonzero(ok)], nbytes)
    sel = np.flatnonzero(ok)
    images = pixels.view(DTYPES[dtype]).reshape((len(sel), *shape))
    return ok, images, label[sel], index[sel]
