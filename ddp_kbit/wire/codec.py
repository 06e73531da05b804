"""The codec base: what every format shares.

A format module subclasses :class:`Codec` with ``encode`` (Sample -> value),
``parse`` (value -> the six fields as found) and, for the bytes layout, ``canonical``
(which rows of a joined batch are the format's canonical encoding, and where their
fields are). ``decode`` validates one value; ``decode_batch`` turns many values into
one array: canonical rows in one vectorised pass, every other row through the
per-value decoder, which accepts every valid encoding and names the reason for an
invalid one. So the vectorised pass changes speed, never results; the agreement
tests in ``tests/unit/test_wire_batch.py`` hold both paths to that.

A bad value never aborts a batch and no exception of a parser escapes: it comes
back in ``Batch.errors`` as a :class:`DecodeError` with a reason.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ddp_kbit.errors import DecodeError
from ddp_kbit.wire.sample import (
    DTYPES,
    INT32,
    INT64,
    LAYOUTS,
    Batch,
    Sample,
    headers,
    is_int,
    pixels_as_uint8,
    sample_nbytes,
    validated,
)
from ddp_kbit.wire.vector import Rows


class Codec:
    format = ""

    def __init__(self, layout: str = "bytes"):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
        self.layout = layout

    # ------------------------------------------------------------ per format
    def encode(self, sample: Sample) -> bytes:
        raise NotImplementedError

    def parse(self, value: bytes) -> tuple:
        """-> (index, label, shape, dtype, data, pixels) as found; DecodeError if unreadable."""
        raise NotImplementedError

    def canonical(self, rows: Rows, shape: tuple, dtype: str, nbytes: int):
        """-> (ok, index, label, data_pos) for the rows in canonical form, or None
        when the format has no vectorised path. ``data_pos``: where each row's pixel
        bytes start."""
        return None

    def canonical_pixels(self, rows: Rows, data_pos: np.ndarray, nbytes: int):
        """-> ((N, nbytes) pixel bytes, ok) of the rows at ``data_pos``."""
        ok = data_pos + nbytes <= rows.ends[-1] if len(rows) else np.zeros(0, bool)
        return rows.windows(data_pos[ok], nbytes), ok

    # ------------------------------------------------------------ shared
    @property
    def headers(self) -> list[tuple[str, bytes]]:
        return headers(self.format)

    def template(self, shape: tuple, dtype: str) -> bytes:
        """The canonical encoding of a sample with index 0, label 0 and zero pixels."""
        return _template(type(self), tuple(shape), dtype)

    def encode_array(self, index: int, label: int, array: np.ndarray) -> bytes:
        return self.encode(Sample.from_array(index, label, array, self.layout))

    def decode(self, value) -> Sample:
        sample = self._decode_one(value)
        if sample.pixels is not None:
            pixels_as_uint8(self.format, sample.pixels)
        return sample

    def decode_batch(self, values: Sequence[bytes | None], shape: Sequence[int] | None = None,
                     dtype: str | None = None, num_classes: int | None = None) -> Batch:
        """Decode many values into one array. ``shape``/``dtype`` (from the manifest)
        fix the expected sample type (without them the first good value sets it);
        with ``num_classes`` a label outside ``[0, num_classes)`` is a bad value."""
        if None in values:  # tombstones: set aside, decode the rest, map positions back
            batch = self._decode_present(values, shape, dtype)
        else:
            batch = self._decode_values(values, shape, dtype)
        return _reject_labels(self.format, batch, num_classes) if num_classes is not None else batch

    # ------------------------------------------------------------ internals
    def _decode_one(self, value) -> Sample:
        """Validate one value; any failure of the parser is a DecodeError."""
        if value is None:
            raise DecodeError(self.format, "tombstone", "null value")
        if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) == 0:
            raise DecodeError(self.format, "truncated", "empty message value")
        return validated(self.format, *self._parse(value))

    def _parse(self, value) -> tuple:
        try:
            return self.parse(bytes(value))
        except DecodeError:
            raise
        except Exception as exc:  # RecursionError, huge ints, anything a parser raises
            raise DecodeError(self.format, "malformed", f"{type(exc).__name__}: {str(exc)[:200]}") from None

    def _decode_present(self, values, shape, dtype) -> Batch:
        present = [i for i, v in enumerate(values) if v is not None]
        batch = self._decode_values([values[i] for i in present], shape, dtype)
        where = np.asarray(present, dtype=np.int64)
        errors = [(int(where[p]), e) for p, e in batch.errors]
        errors += [(i, DecodeError(self.format, "tombstone", "null value")) for i, v in enumerate(values) if v is None]
        errors.sort(key=lambda e: e[0])
        return Batch(batch.images, batch.labels, batch.indices, errors, where[batch.positions])

    def _decode_values(self, values, shape, dtype) -> Batch:
        errors: list[tuple[int, DecodeError]] = []
        want = (tuple(shape), dtype) if shape is not None and dtype is not None else None
        start = 0
        while want is None and start < len(values):  # the first good value fixes the sample type
            try:
                first = self._decode_one(values[start])
                want = (first.shape, first.dtype)
            except DecodeError as exc:
                errors.append((start, exc))
                start += 1
        if want is None:
            return _assemble(self.format, [], [], errors, None)
        fast = self.decode_canonical(values[start:], *want)
        if fast is None:
            return self._decode_each(values, range(start, len(values)), want, errors)
        ok, images, labels, indices = fast
        vector = Batch(images, labels, indices, [], start + np.flatnonzero(ok))
        if ok.all():
            errors.sort(key=lambda e: e[0])
            vector.errors = errors
            return vector
        rest = self._decode_each(values, (start + np.flatnonzero(~ok)).tolist(), want, errors)
        return _concat(vector, rest)

    def decode_canonical(self, values, shape: tuple, dtype: str):
        """-> (ok mask, images of the ok rows, labels, indices), or None."""
        if not values:
            return None
        nbytes = sample_nbytes(shape, dtype)
        rows = Rows(values)
        found = self.canonical(rows, tuple(shape), dtype, nbytes)
        if found is None:
            return None
        ok, index, label, data_pos = found
        ok &= (label >= INT32[0]) & (label <= INT32[1])
        sel = np.flatnonzero(ok)
        pixels, pix_ok = self.canonical_pixels(rows, data_pos[sel], nbytes)
        ok[sel] &= pix_ok   # pixels holds the pix_ok rows only
        sel = np.flatnonzero(ok)
        images = pixels.view(DTYPES[dtype]).reshape((len(sel), *shape))
        return ok, images, label[sel], index[sel]

    def _decode_each(self, values, positions_in, want, errors) -> Batch:
        """Per-value decoding of ``values[p]`` for p in ``positions_in``: values whose
        parsed fields already fit the expected type skip building a Sample; the rest
        take the full validation."""
        want_shape, want_dtype = list(want[0]), want[1]
        nbytes = sample_nbytes(want[0], want_dtype)
        datas, labels, indices, positions, slow = [], [], [], [], []
        for pos in positions_in:
            value = values[pos]
            try:
                if not value:
                    raise DecodeError(self.format, "truncated", "empty message value")
                fields = self._parse(value)
            except DecodeError as exc:
                errors.append((pos, exc))
                continue
            if _fits(fields, want_shape, want_dtype, nbytes):
                indices.append(fields[0])
                labels.append(fields[1])
                datas.append(fields[4])
                positions.append(pos)
            else:
                slow.append(pos)
        if not slow:
            return _assemble_bytes(datas, labels, indices, positions, errors, want)
        good = [Sample(i, lab, want[0], want_dtype, data=d) for i, lab, d in zip(indices, labels, datas)]
        for pos in slow:
            try:
                sample = self._decode_one(values[pos])
                if (sample.shape, sample.dtype) != want:
                    raise DecodeError(self.format, "shape_mismatch",
                                      f"{list(sample.shape)} {sample.dtype}, expected {list(want[0])} {want[1]}")
            except DecodeError as exc:
                errors.append((pos, exc))
                continue
            good.append(sample)
            positions.append(pos)
        order = sorted(range(len(good)), key=positions.__getitem__)
        return _assemble(self.format, [good[i] for i in order], [positions[i] for i in order], errors, want)


@lru_cache(maxsize=64)
def _template(cls, shape: tuple, dtype: str) -> bytes:
    return cls().encode(Sample(0, 0, shape, dtype, data=bytes(sample_nbytes(shape, dtype))))


def _fits(fields, want_shape: list, want_dtype: str, nbytes: int) -> bool:
    """A parsed bytes-layout value that is valid as it stands and of the expected type."""
    index, label, shape, dtype, data, pixels = fields
    return (pixels is None and data is not None and dtype == want_dtype and len(data) == nbytes
            and isinstance(shape, list) and shape == want_shape and all(type(d) is int for d in shape)
            and type(label) is int and INT32[0] <= label <= INT32[1]
            and is_int(index) and INT64[0] <= index <= INT64[1])


def _reject_labels(fmt: str, batch: Batch, num_classes: int) -> Batch:
    """Rows whose label is not a class of this run become ``bad_label`` errors."""
    bad = (batch.labels < 0) | (batch.labels >= num_classes)
    if not bad.any():
        return batch
    errors = batch.errors + [(int(batch.positions[i]), DecodeError(fmt, "bad_label",
                                                                    f"label {int(batch.labels[i])} not in 0..{num_classes - 1}"))
                             for i in np.flatnonzero(bad)]
    errors.sort(key=lambda e: e[0])
    keep = ~bad
    return Batch(batch.images[keep], batch.labels[keep], batch.indices[keep], errors, batch.positions[keep])


def _concat(a: Batch, b: Batch) -> Batch:
    """Rows of both batches in input order; b's errors are the batch's."""
    if len(b) == 0:
        a.errors = b.errors
        return a
    positions = np.concatenate([a.positions, b.positions])
    order = np.argsort(positions, kind="stable")
    return Batch(np.concatenate([a.images, b.images])[order], np.concatenate([a.labels, b.labels])[order],
                 np.concatenate([a.indices, b.indices])[order], b.errors, positions[order])


def _assemble_bytes(datas, labels, indices, positions, errors, want) -> Batch:
    shape, dtype = want
    # bytearray: a writable buffer, so torch.from_numpy needs no copy and no warning
    flat = np.frombuffer(bytearray().join(datas), dtype=DTYPES[dtype])
    errors.sort(key=lambda e: e[0])
    return Batch(images=flat.reshape((len(datas), *shape)), labels=np.array(labels, dtype=np.int64),
                 indices=np.array(indices, dtype=np.int64), errors=errors,
                 positions=np.array(positions, dtype=np.int64))


def _assemble(fmt: str, good: list[Sample], positions: list[int], errors: list, want) -> Batch:
    shape, dtype = want if want is not None else ((), "uint8")
    if good and all(s.data is not None for s in good):
        flat = np.frombuffer(bytearray().join([s.data for s in good]), dtype=DTYPES[dtype])
    elif good:
        flat, good, positions = _assemble_lists(fmt, good, positions, errors, shape, dtype)
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


def _assemble_lists(fmt, good, positions, errors, shape, dtype):
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
    return rows[keep].astype(DTYPES[dtype]).ravel(), [good[i] for i in keep], [positions[i] for i in keep]
