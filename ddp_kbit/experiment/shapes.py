"""Topics we did not write, as study formats: each shape's encoder (what a user's
producer writes) and its source description, so a study measures reading them
against the v1 topic of the same data.

    json-image      JSON {"image": [784 ints], "label": 5}                  (per value)
    bson-mongo      BSON {"_id", "images": [[rows]], "label", "metadata"}    (per value)
    avro-user       Avro {image: bytes, label: int}, the user's schema       (vectorised)
    avro-confluent  the same, Schema Registry framed (schema id 1)           (vectorised)
    protobuf-user   Protobuf Item {features {pixels}, label: "Coat"}        (per value)
"""
from __future__ import annotations

import io
import json

import numpy as np

from ddp_kbit.wire.foreign import TopicDescription
from ddp_kbit.wire.framing import frame

IMAGE_AVSC = {"type": "record", "name": "Image", "namespace": "study",
              "fields": [{"name": "image", "type": "bytes"}, {"name": "label", "type": "int"}]}
ITEM_PROTO = """syntax = "proto3";
package study.v1;
message Features { repeated uint32 pixels = 1; }
message Item { Features features = 1; string label = 2; }
"""


class ShapeEncoder:
    """``encode_array`` like a v1 codec, for a user's shape; no ddp_kbit headers."""

    headers: list = []

    def __init__(self, name: str, classes: tuple[str, ...] = ()):
        self.format, self.classes = name, classes
        if name.startswith("avro"):
            import fastavro

            self._avro = fastavro.parse_schema(IMAGE_AVSC)
        if name == "protobuf-user":
            from ddp_kbit.wire.protoschema import message_class

            self._item = message_class(ITEM_PROTO, "Item")

    def encode_array(self, index: int, label: int, array: np.ndarray) -> bytes:
        if self.format == "json-image":
            return json.dumps({"image": array.ravel().tolist(), "label": label}).encode()
        if self.format == "bson-mongo":
            import bson

            return bson.encode({"_id": index, "images": array.tolist(), "label": label,
                                "metadata": {"source": "study", "index": index}})
        if self.format.startswith("avro"):
            import fastavro

            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, self._avro, {"image": np.ascontiguousarray(array).tobytes(),
                                                        "label": label})
            return frame(1, buf.getvalue()) if self.format == "avro-confluent" else buf.getvalue()
        msg = self._item()
        msg.features.pixels.extend(array.ravel().tolist())
        msg.label = self.classes[label] if self.classes else str(label)
        return msg.SerializeToString()


def encoder(name: str, classes: tuple[str, ...] = ()) -> ShapeEncoder:
    return ShapeEncoder(name, classes)


def source_of(name: str, shape: tuple[int, ...], dtype: str, num_classes: int, classes: tuple[str, ...]) -> TopicDescription:
    """How the study's reader reads a shape (what ``--mode describe`` would write)."""
    common = {"shape": tuple(shape), "dtype": dtype, "num_classes": num_classes}
    if name == "json-image":
        return TopicDescription("json", **common)
    if name == "bson-mongo":
        return TopicDescription("bson", image_field="images", **common)
    if name == "avro-user":
        return TopicDescription("avro", schema_text=json.dumps(IMAGE_AVSC), **common)
    if name == "avro-confluent":   # no registry in a study: the one schema is every id's writer
        return TopicDescription("avro", framing="confluent", schema_text=json.dumps(IMAGE_AVSC), **common)
    return TopicDescription("protobuf", image_field="features.pixels", schema_text=ITEM_PROTO, value_message="Item",
                  classes=tuple(classes) or tuple(str(i) for i in range(num_classes)), **common)
