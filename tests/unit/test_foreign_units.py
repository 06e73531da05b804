"""Topics we did not write, without a broker: field paths, label mapping, the
framing parser against golden bytes from confluent-kafka's own serializers (with
its mock registry), Protobuf message indexes, and the vectorised Avro path held to
the per-value one."""
import io
import json

import fastavro
import numpy as np
import pytest
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import MockSchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import given, settings
from hypothesis import strategies as st

from ddp_kbit.errors import DecodeError
from ddp_kbit.wire.foreign import ForeignCodec, TopicDescription, field_at, to_image
from ddp_kbit.wire.framing import frame, parse_frame

from protoc_user import compile_proto

CTX = SerializationContext("t", MessageField.VALUE)
IMAGE = {"type": "record", "name": "Image", "fields": [{"name": "image", "type": "bytes"},
                                                      {"name": "label", "type": "int"}]}
NESTED_PROTO = """syntax = "proto3";
package n.v1;
message Outer {
  message A { int32 a = 1; }
  message B { int32 b = 1; }
  message Sample { repeated uint32 pixels = 1; string label = 2; }
  int32 x = 1;
}
message Second { bytes image = 1; int64 label = 2; }
"""


@pytest.fixture(scope="module")
def nested_pb2(tmp_path_factory):
    return compile_proto(tmp_path_factory.mktemp("pb"), "nested", NESTED_PROTO)


def test_field_paths_reach_into_dicts_and_messages(nested_pb2):
    rec = {"features": {"pixels": [1, 2]}, "label": "Coat"}
    assert field_at(rec, "features.pixels", "json") == [1, 2]
    with pytest.raises(DecodeError, match="missing_field: features.image"):
        field_at(rec, "features.image", "json")
    msg = nested_pb2.Outer.Sample(pixels=[3, 4], label="x")
    assert list(field_at(msg, "pixels", "protobuf")) == [3, 4]
    with pytest.raises(DecodeError) as err:
        field_at(rec, "label.deeper", "json")
    assert err.value.reason == "missing_field"


def test_images_from_bytes_lists_nested_rows_and_base64():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    import base64

    for value in (img.tobytes(), img.ravel().tolist(), img.tolist(), base64.b64encode(img.tobytes()).decode()):
        assert np.array_equal(to_image(value, (3, 4), "uint8", "json"), img)
    floats = to_image((img / 255).tolist(), (3, 4), "float32", "json")
    assert floats.dtype == np.float32 and floats.shape == (3, 4)
    for value, reason in ((img.tobytes()[:5], "size_mismatch"), ([1.5] * 12, "wrong_type"), ([300] * 12, "out_of_range"),
                          ("%%%", "bad_base64"), ({"a": 1}, "wrong_type")):
        with pytest.raises(DecodeError) as err:
            to_image(value, (3, 4), "uint8", "json")
        assert err.value.reason == reason


def test_labels_are_ints_or_class_names():
    codec = ForeignCodec(TopicDescription("json", shape=(2, 2), classes=("cat", "dog"), num_classes=2))
    values = [json.dumps({"image": [0, 1, 2, 3], "label": lab}).encode() for lab in ("dog", 0, 1.0, "cow", 5, True)]
    batch = codec.decode_batch(values)
    assert batch.labels.tolist() == [1, 0, 1] and batch.positions.tolist() == [0, 1, 2]
    assert [(p, e.reason) for p, e in batch.errors] == [(3, "bad_label"), (4, "bad_label"), (5, "wrong_type")]


def test_framing_parser_reads_the_confluent_serializers_bytes(nested_pb2):
    client = MockSchemaRegistryClient({"url": "mock://registry"})
    avro = AvroSerializer(client, json.dumps(IMAGE))({"image": b"\x01\x02", "label": 3}, CTX)
    assert avro == b"\x00\x00\x00\x00\x01" + b"\x04\x01\x02\x06"          # golden: magic, id 1, the datum
    f = parse_frame(avro, "avro")
    assert (f.schema, f.message_indexes, avro[f.start:]) == (("id", 1), None, b"\x04\x01\x02\x06")
    for cls, indexes, golden in ((nested_pb2.Outer, (0,), b"\x00"), (nested_pb2.Second, (1,), b"\x02\x02"),
                                 (nested_pb2.Outer.Sample, (0, 2), b"\x04\x00\x04")):
        ser = ProtobufSerializer(cls, client, {"use.deprecated.format": False})
        value = ser(cls(), SerializationContext(f"t.{cls.__name__}", MessageField.VALUE))
        f = parse_frame(value, "protobuf", protobuf=True)
        assert f.message_indexes == indexes and value[5:f.start] == golden      # [0] is the single byte 0x00
        assert frame(f.schema[1], b"", indexes) == value[:f.start]             # and we write it the same way
    guid = bytes(range(16))
    assert parse_frame(b"\x01" + guid + b"\x02", "avro").schema == ("guid", guid)
    for bad in (b"\x07\x00\x00\x00\x01\x00", b"\x00\x00", b"\x01" + guid[:5]):
        with pytest.raises(DecodeError) as err:
            parse_frame(bad, "avro")
        assert err.value.reason == "bad_framing"


def test_unknown_schema_ids_and_framing_are_bad_values_not_crashes():
    schemas = {("id", 1): ("AVRO", json.dumps(IMAGE))}

    def lookup(ref):
        return schemas[ref]

    codec = ForeignCodec(TopicDescription("avro", shape=(1, 2), framing="confluent", num_classes=10), lookup)
    good = frame(1, _avro(IMAGE, {"image": b"\x05\x06", "label": 4}))
    batch = codec.decode_batch([good, frame(2, b"\x04\x05\x06\x08"), b"\x09" + good[1:], None, good[:7]])
    assert batch.labels.tolist() == [4] and batch.images.tolist() == [[[5, 6]]]
    assert [(p, e.reason) for p, e in batch.errors] == [(1, "unknown_schema"), (2, "bad_framing"), (3, "tombstone"),
                                                        (4, "truncated")]


def _avro(schema, rec) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), rec)
    return buf.getvalue()


@settings(max_examples=60, deadline=None)
@given(labels=st.lists(st.integers(-3, 300), min_size=1, max_size=40), framed=st.booleans(),
       corrupt=st.lists(st.integers(0, 39), max_size=5), order=st.booleans())
def test_the_vectorised_avro_path_agrees_with_the_per_value_one(labels, framed, corrupt, order):
    fields = [{"name": "label", "type": "long"}, {"name": "image", "type": "bytes"}, {"name": "n", "type": "int"}]
    schema = {"type": "record", "name": "S", "fields": fields if order else fields[::-1]}
    rng = np.random.default_rng(len(labels))
    values = []
    for i, lab in enumerate(labels):
        v = _avro(schema, {"label": lab, "image": rng.integers(0, 256, 6, dtype=np.uint8).tobytes(), "n": i})
        v = frame(1, v) if framed else v
        if i in corrupt:
            v = v[: len(v) // 2] if i % 2 else v + b"\x00"
        values.append(v)
    source = TopicDescription("avro", shape=(2, 3), framing="confluent" if framed else "none", schema_text=json.dumps(schema),
                    num_classes=200)
    fast = ForeignCodec(source).decode_batch(values)
    slow_codec = ForeignCodec(source)
    slow_codec._fast = lambda *a: None
    slow = slow_codec.decode_batch(values)
    assert fast.positions.tolist() == slow.positions.tolist() and fast.labels.tolist() == slow.labels.tolist()
    assert np.array_equal(fast.images, slow.images)
    assert [(p, e.reason) for p, e in fast.errors] == [(p, e.reason) for p, e in slow.errors]
