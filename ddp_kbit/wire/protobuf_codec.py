"""Protobuf: ``ddp_kbit.v1.Sample`` of ``schemas/sample.proto``."""
from __future__ import annotations

import numpy as np

from ddp_kbit.errors import DecodeError
from ddp_kbit.wire.codec import Codec
from ddp_kbit.wire.sample import Sample
from ddp_kbit.wire.vector import Rows, varints


class ProtobufCodec(Codec):
    format = "protobuf"

    def __init__(self, layout: str = "bytes"):
        super().__init__(layout)
        from google.protobuf.message import DecodeError as PbDecodeError

        from ddp_kbit.schemas import sample_pb2

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
            reason, detail = fault(value)
            raise DecodeError("protobuf", reason, detail) from None
        # proto3 scalars have no presence: an empty bytes/list field counts as unset.
        data = msg.data if msg.data else None
        pixels = list(msg.pixels) if len(msg.pixels) else None
        return msg.index, msg.label, list(msg.shape) or None, msg.dtype or None, data, pixels

    def canonical(self, rows: Rows, shape, dtype, nbytes):
        """``[08 index] [10 label] + constant middle + data``: proto3 leaves index 0
        and label 0 out, so the template is exactly the middle + zero data."""
        mid = self.template(shape, dtype)[:-nbytes]
        head_len = rows.lens - nbytes - len(mid)
        ok = (head_len >= 0) & (head_len <= 22)
        ok &= rows.matches(rows.starts + np.maximum(head_len, 0), mid)
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


def fault(value: bytes) -> tuple[str, str]:
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
