"""Confluent Schema Registry framing (confluent-kafka-python's serializers are the
reference): magic byte ``0`` and a 4-byte big-endian schema id, or magic byte ``1``
and a 16-byte schema GUID; then, for Protobuf only, the message indexes as zigzag
varints (the count, then each index; ``[0]`` is written as the single byte ``0x00``);
then the Avro datum, the JSON text or the Protobuf message."""
from __future__ import annotations

from dataclasses import dataclass

from ddp_kbit.errors import DecodeError

MAGIC_ID, MAGIC_GUID = 0, 1


@dataclass(frozen=True)
class Frame:
    schema: tuple            # ("id", int) or ("guid", bytes of 16)
    message_indexes: tuple[int, ...] | None
    start: int               # where the payload begins


def parse_frame(value: bytes, fmt: str, protobuf: bool = False) -> Frame:
    """The frame of one value; DecodeError ``bad_framing`` when it is not one."""
    if len(value) < 5:
        raise DecodeError(fmt, "bad_framing", f"{len(value)} bytes: shorter than a Schema Registry header")
    magic = value[0]
    if magic == MAGIC_ID:
        schema, pos = ("id", int.from_bytes(value[1:5], "big")), 5
    elif magic == MAGIC_GUID:
        if len(value) < 17:
            raise DecodeError(fmt, "bad_framing", "magic byte 1 needs a 16-byte schema GUID")
        schema, pos = ("guid", bytes(value[1:17])), 17
    else:
        raise DecodeError(fmt, "bad_framing", f"magic byte {magic}, expected 0 (schema id) or 1 (schema GUID)")
    indexes = None
    if protobuf:
        count, pos = read_zigzag(value, pos, fmt)
        if count < 0 or count > 100:
            raise DecodeError(fmt, "bad_framing", f"message index count {count}")
        if count == 0:
            indexes = (0,)
        else:
            got = []
            for _ in range(count):
                ix, pos = read_zigzag(value, pos, fmt)
                got.append(ix)
            indexes = tuple(got)
    return Frame(schema, indexes, pos)


def read_zigzag(value: bytes, pos: int, fmt: str) -> tuple[int, int]:
    shift, raw = 0, 0
    while True:
        if pos >= len(value) or shift > 63:
            raise DecodeError(fmt, "bad_framing", "message indexes end early")
        b = value[pos]
        raw |= (b & 0x7F) << shift
        pos += 1
        shift += 7
        if not b & 0x80:
            return (raw >> 1) ^ -(raw & 1), pos


def zigzag_bytes(n: int) -> bytes:
    raw, out = (n << 1) ^ (n >> 63), bytearray()
    while True:
        b = raw & 0x7F
        raw >>= 7
        if raw:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def frame(schema_id: int, payload: bytes, message_indexes: tuple[int, ...] | None = None) -> bytes:
    """A value as the Confluent serializers write it (for producers and tests)."""
    head = bytes([MAGIC_ID]) + schema_id.to_bytes(4, "big")
    if message_indexes is not None:
        head += b"\x00" if tuple(message_indexes) == (0,) else \
            zigzag_bytes(len(message_indexes)) + b"".join(zigzag_bytes(i) for i in message_indexes)
    return head + payload
