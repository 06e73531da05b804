"""BSON: a Mongo-style document with the Sample's fields, ``_id`` = index and
``data`` as Binary subtype 0."""
from __future__ import annotations

import numpy as np

from ddp_kbit.errors import DecodeError
from ddp_kbit.wire.codec import Codec
from ddp_kbit.wire.sample import Sample
from ddp_kbit.wire.vector import Rows


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

    def canonical(self, rows: Rows, shape, dtype, nbytes):
        """Canonical documents have the template's length and bytes, but for
        ``_id``, ``index``, ``label`` and the pixels."""
        tpl = self.template(shape, dtype)
        size = len(tpl)
        ok = rows.lens == size
        # rows of the template's length lie wholly inside the buffer: whole-row copies
        M = np.zeros((len(ok), size), np.uint8)
        M[ok] = rows.windows(rows.starts[ok], size)
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
        index, _id = _le64(M, offs["index"]), _le64(M, offs["_id"])
        label = np.ascontiguousarray(M[:, offs["label"]:offs["label"] + 4]).view("<i4")[:, 0].astype(np.int64)
        ok &= _id == index
        return ok, index, label, rows.starts + data_at


def _le64(M: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(M[:, at:at + 8]).view("<i8")[:, 0]
