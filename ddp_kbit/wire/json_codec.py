"""JSON: a UTF-8 object; ``data`` is standard base64 (padded)."""
from __future__ import annotations

import base64
import binascii
import json

import numpy as np

from ddp_kbit.errors import DecodeError
from ddp_kbit.wire.codec import Codec
from ddp_kbit.wire.sample import Sample
from ddp_kbit.wire.vector import Rows, decimal_ints

PREFIX, LABEL_KEY, TAIL = b'{"index":', b',"label":', b'"}'


def _strict_b64decode():
    """Strict standard base64: pybase64 (SIMD, ~30x binascii) when installed."""
    try:
        import pybase64

        return lambda text: pybase64.b64decode(text, validate=True)
    except ImportError:
        return lambda text: binascii.a2b_base64(text, strict_mode=True)


b64decode = _strict_b64decode()


def b64len(nbytes: int) -> int:
    return 4 * -(-nbytes // 3)


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

    def canonical(self, rows: Rows, shape, dtype, nbytes):
        """Compact JSON: ``{"index":N,"label":N`` + a constant middle + base64 + ``"}``."""
        tpl = self.template(shape, dtype)
        mid = tpl[tpl.index(b',"shape":'):tpl.index(b'"data":"') + 8]
        head_len = rows.lens - b64len(nbytes) - len(TAIL) - len(mid)
        ok = (head_len >= len(PREFIX) + len(LABEL_KEY) + 2) & (head_len <= 56)
        body = rows.starts + np.maximum(head_len, 0)
        ok &= rows.matches(body, mid) & rows.matches(rows.ends - len(TAIL), TAIL)
        H = rows.gather(rows.starts, 56)
        ok &= (H[:, :len(PREFIX)] == np.frombuffer(PREFIX, np.uint8)).all(axis=1)
        comma = np.where(np.arange(56) >= len(PREFIX), ord(",") == H, False).argmax(axis=1)
        ok &= rows.matches(rows.starts + comma, LABEL_KEY) & (comma > len(PREFIX))
        index, iok = decimal_ints(H, np.full(len(H), len(PREFIX)), comma)
        label, lok = decimal_ints(H, comma + len(LABEL_KEY), head_len)
        ok &= iok & lok
        return ok, index, label, body + len(mid)

    def canonical_pixels(self, rows: Rows, pos: np.ndarray, nbytes: int):
        """Strict standard base64 of each row -> (bytes (N, nbytes), ok).

        Every row's text but its last 4-character group is a whole number of
        unpadded groups, so those parts are joined and decoded in one call; the
        last groups, padding replaced by "A" once checked, in a second. If either
        call finds a bad character, rows are decoded one by one to find which."""
        width, n = b64len(nbytes), len(pos)
        if n == 0:
            return np.empty((0, nbytes), np.uint8), np.zeros(0, bool)
        pad = width // 4 * 3 - nbytes
        body_len = width - 4
        last = rows.buf[pos[:, None] + np.arange(body_len, width)]
        if pad and not (last[:, 4 - pad:] == ord("=")).all():
            return _b64_rows(rows.raw, pos.tolist(), width, nbytes)
        last[:, 4 - pad:] = ord("A")
        try:
            body = b64decode(rows.windows(pos, body_len).tobytes()) if body_len else b""
            tails = b64decode(last.tobytes())
        except (binascii.Error, ValueError):
            return _b64_rows(rows.raw, pos.tolist(), width, nbytes)
        out = np.empty((n, nbytes), np.uint8)
        out[:, :body_len // 4 * 3] = np.frombuffer(body, np.uint8).reshape(n, -1)
        out[:, body_len // 4 * 3:] = np.frombuffer(tails, np.uint8).reshape(n, 3)[:, :3 - pad]
        return out, np.ones(n, bool)


def _b64_rows(raw: bytes, starts: list, width: int, nbytes: int):
    """One row at a time: only for batches holding a row with bad base64."""
    parts, ok = [], np.ones(len(starts), bool)
    for i, p in enumerate(starts):
        try:
            part = b64decode(raw[p:p + width])
        except (binascii.Error, ValueError):
            part = None
        if part is not None and len(part) == nbytes:
            parts.append(part)
        else:
            ok[i] = False
    return np.frombuffer(bytearray().join(parts), np.uint8).reshape(len(parts), nbytes), ok
