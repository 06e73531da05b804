"""Avro: schemaless binary datum of ``schemas/sample.avsc`` (no Confluent header)."""
from __future__ import annotations

import io

import numpy as np

from ddp_kbit.errors import DecodeError
from ddp_kbit.wire.codec import Codec
from ddp_kbit.wire.sample import Sample
from ddp_kbit.wire.vector import Rows, varints, zigzag


class AvroCodec(Codec):
    format = "avro"

    def __init__(self, layout: str = "bytes"):
        super().__init__(layout)
        import fastavro

        from ddp_kbit.schemas import load_avro_schema

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

    def canonical(self, rows: Rows, shape, dtype, nbytes):
        """``zigzag index, zigzag label`` + constant middle + data + the null pixels branch."""
        tpl = self.template(shape, dtype)
        mid = tpl[2:len(tpl) - nbytes - 1]  # after the two zero varints, before data and the null pixels branch
        head_len = rows.lens - nbytes - 1 - len(mid)
        ok = (head_len >= 2) & (head_len <= 20)
        ok &= rows.matches(rows.starts + np.maximum(head_len, 0), mid)
        if len(rows.buf):
            ok &= rows.buf[np.maximum(rows.ends - 1, 0)] == 0
        H = rows.gather(rows.starts, 20)
        iv, iend, iok = varints(H, np.zeros(len(H), np.int64), head_len)
        lv, lend, lok = varints(H, iend, head_len)
        ok &= iok & lok & (lend == head_len)
        return ok, zigzag(iv), zigzag(lv), rows.ends - nbytes - 1
