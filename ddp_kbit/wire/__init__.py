"""Wire contract v1: the Sample record and one codec per format, shared by
producers and consumers, so what is written is exactly what is read.

    codec = get_codec("avro", "bytes")
    value = codec.encode_array(index, label, image)
    batch = codec.decode_batch(values, shape, dtype, num_classes)
"""
from __future__ import annotations

from ddp_kbit.wire.avro_codec import AvroCodec
from ddp_kbit.wire.bson_codec import BsonCodec
from ddp_kbit.wire.codec import Codec
from ddp_kbit.wire.json_codec import JsonCodec
from ddp_kbit.wire.protobuf_codec import ProtobufCodec
from ddp_kbit.wire.sample import DTYPES, FORMATS, LAYOUTS, REASONS, SCHEMA_ID, BadReason, Batch, Sample, headers, topic_name

REGISTRY: dict[str, type[Codec]] = {c.format: c for c in (JsonCodec, AvroCodec, ProtobufCodec, BsonCodec)}
assert tuple(REGISTRY) == FORMATS


def get_codec(fmt: str, layout: str = "bytes") -> Codec:
    try:
        cls = REGISTRY[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}") from None
    return cls(layout)


__all__ = ["BadReason", "Batch", "Codec", "DTYPES", "FORMATS", "LAYOUTS", "REASONS", "REGISTRY", "SCHEMA_ID", "Sample",
           "get_codec", "headers", "topic_name"]
