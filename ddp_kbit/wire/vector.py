"""Numpy building blocks for decoding a whole batch of canonical values at once.

In a bytes-layout topic every value of one sample type is byte-identical apart
from the index, the label and the pixel bytes. So a batch is joined once, the
constant parts are compared as matrices, varints and decimal integers are decoded
column-wise, and the pixels are gathered in one fancy index. Each format's module
uses these to say which rows are canonical; the rest go to its per-value decoder.
"""
from __future__ import annotations

import numpy as np


class Rows:
    """The joined batch: one uint8 buffer and each value's start and length."""

    def __init__(self, values):
        self.lens = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        self.raw = b"".join(values)
        self.buf = np.frombuffer(self.raw, dtype=np.uint8)
        self.ends = np.cumsum(self.lens)
        self.starts = self.ends - self.lens

    def __len__(self) -> int:
        return len(self.lens)

    def gather(self, pos: np.ndarray, width: int) -> np.ndarray:
        """(N, width) bytes from each row's ``pos``; positions past the buffer read 0."""
        if len(self.buf) == 0:
            return np.zeros((len(pos), width), np.uint8)
        idx = pos[:, None] + np.arange(width)
        out = self.buf[np.clip(idx, 0, len(self.buf) - 1)]
        out[idx >= len(self.buf)] = 0
        return out

    def matches(self, pos: np.ndarray, const: bytes) -> np.ndarray:
        """Rows whose bytes at ``pos`` equal ``const``."""
        want = np.frombuffer(const, dtype=np.uint8)
        return (self.gather(pos, len(want)) == want).all(axis=1)

    def windows(self, pos: np.ndarray, width: int) -> np.ndarray:
        """(N, width) bytes of rows known to lie inside the buffer: taking rows of a
        strided window view copies each row in one piece instead of byte by byte."""
        if len(pos) == 0:
            return np.empty((0, width), np.uint8)
        return np.lib.stride_tricks.sliding_window_view(self.buf, width)[pos]


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


def zigzag(v: np.ndarray) -> np.ndarray:
    return (v >> np.uint64(1)).astype(np.int64) ^ -(v & np.uint64(1)).astype(np.int64)


_POW10 = 10 ** np.arange(19, dtype=np.int64)


def decimal_ints(H: np.ndarray, a: np.ndarray, b: np.ndarray):
    """The decimal integers in columns [a, b) of each row: (value, ok). Up to 18
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
