"""Codecs: round trips for every format x layout, golden bytes for the wire
contract, and DecodeError reasons for bad input in every format."""
import base64
import json

import bson
import numpy as np
import pytest

from ddp_kbit.errors import DecodeError
from ddp_kbit.wire import FORMATS, LAYOUTS, Sample, get_codec

RNG = np.random.default_rng(7)
ARRAYS = {
    "gray": RNG.integers(0, 256, size=(28, 28), dtype=np.uint8),
    "colour": RNG.integers(0, 256, size=(32, 32, 3), dtype=np.uint8),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", sorted(ARRAYS))
def test_round_trip_is_bit_exact(fmt, layout, kind):
    codec, arr = get_codec(fmt, layout), ARRAYS[kind]
    value = codec.encode_array(2**40 + 3, 9, arr)
    s = codec.decode(value)
    assert (s.index, s.label, s.shape, s.dtype, s.layout) == (2**40 + 3, 9, arr.shape, "uint8", layout)
    np.testing.assert_array_equal(s.to_array(), arr)


@pytest.mark.parametrize("fmt", FORMATS)
def test_float32_bytes_round_trip(fmt):
    arr = RNG.standard_normal((4, 5, 3)).astype(np.float32)
    s = get_codec(fmt).decode(get_codec(fmt).encode_array(1, 0, arr))
    assert s.dtype == "float32"
    assert s.to_array().tobytes() == arr.tobytes()


def test_list_layout_refuses_float32():
    with pytest.raises(ValueError, match="uint8 only"):
        Sample.from_array(0, 0, np.zeros((2, 2), np.float32), "list")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_decode_batch_matches_per_sample(fmt, layout):
    codec = get_codec(fmt, layout)
    imgs = RNG.integers(0, 256, size=(50, 6, 7), dtype=np.uint8)
    values = [codec.encode_array(100 + i, i % 10, imgs[i]) for i in range(50)]
    batch = codec.decode_batch(values)
    assert batch.images.dtype == np.uint8 and batch.images.shape == (50, 6, 7)
    np.testing.assert_array_equal(batch.images, imgs)
    np.testing.assert_array_equal(batch.labels, np.arange(50) % 10)
    np.testing.assert_array_equal(batch.indices, 100 + np.arange(50))
    assert batch.errors == []


# ------------------------------------------------------------- golden bytes
SMALL = Sample(5, 3, (2, 2), "uint8", data=b"\x00\x01\x02\xff")


def test_protobuf_golden_bytes():
    want = bytes.fromhex("0805" "1003" "1a020202" "2205") + b"uint8" + bytes.fromhex("2a04000102ff")
    assert get_codec("protobuf").encode(SMALL) == want


def test_avro_golden_bytes():
    # long 5 -> zigzag 0a; int 3 -> 06; array block of 2 ints (04 04 04 00);
    # string "uint8"; union branch 1 (bytes) with 4 bytes; pixels union branch 0 (null)
    want = bytes.fromhex("0a06" "04040400" "0a") + b"uint8" + bytes.fromhex("0208000102ff" "00")
    assert get_codec("avro").encode(SMALL) == want


def test_avro_list_layout_golden_bytes():
    s = Sample(1, 0, (2,), "uint8", pixels=[7, 200])
    # data: null branch (00); pixels: branch 1 (02), block of 2 ints: 7 -> 0e, 200 -> 9003, end 00
    want = bytes.fromhex("0200" "020400") + b"\x0auint8" + bytes.fromhex("00" "02" "04" "0e" "9003" "00")
    assert get_codec("avro", "list").encode(s) == want


def test_json_golden():
    value = get_codec("json").encode(SMALL)
    assert json.loads(value) == {"index": 5, "label": 3, "shape": [2, 2], "dtype": "uint8",
                                 "data": base64.b64encode(b"\x00\x01\x02\xff").decode()}
    assert value.decode() == '{"index":5,"label":3,"shape":[2,2],"dtype":"uint8","data":"AAEC/w=="}'


def test_bson_types_are_the_contracts():
    raw = get_codec("bson").encode(SMALL)
    # element type bytes: 0x12 int64, 0x10 int32, 0x04 array, 0x02 string, 0x05 binary (subtype 0)
    assert b"\x12_id\x00" + (5).to_bytes(8, "little") in raw
    assert b"\x12index\x00" + (5).to_bytes(8, "little") in raw
    assert b"\x10label\x00" + (3).to_bytes(4, "little") in raw
    assert b"\x05data\x00" + (4).to_bytes(4, "little") + b"\x00" + b"\x00\x01\x02\xff" in raw
    assert list(bson.decode(raw)) == ["_id", "index", "label", "shape", "dtype", "data"]


# ------------------------------------------------------------- bad input
def _json(**over):
    obj = {"index": 1, "label": 2, "shape": [2, 2], "dtype": "uint8", "data": "AAECAw=="}
    obj.update(over)
    return json.dumps({k: v for k, v in obj.items() if v is not Ellipsis}).encode()


JSON_BAD = [
    (b'{"index": 1, "label"', "truncated"),
    (b"[1, 2]", "wrong_type"),
    (b"\xff\xfe", "malformed"),
    (_json(index="1"), "wrong_type"),
    (_json(label=...), "missing_field"),
    (_json(data="AAE$Aw=="), "bad_base64"),
    (_json(data="AAECAwQ="), "size_mismatch"),
    (_json(dtype="int16"), "bad_dtype"),
    (_json(shape=[2, 0]), "bad_shape"),
    (_json(shape="2x2"), "wrong_type"),
    (_json(pixels=[1, 2, 3, 4]), "both_fields"),
    (_json(data=..., pixels=[1, 2, 3, 300]), "out_of_range"),
    (_json(data=..., pixels=[1, 2, 3]), "size_mismatch"),
    (_json(data=...), "missing_field"),
    (_json(index=2**64), "out_of_range"),
]


@pytest.mark.parametrize("value,reason", JSON_BAD)
def test_json_bad_input(value, reason):
    with pytest.raises(DecodeError) as e:
        get_codec("json").decode(value)
    assert (e.value.format, e.value.reason) == ("json", reason)
    assert str(e.value).startswith(f"json: {reason}")


def _pb(**fields):
    from schemas import sample_pb2

    return sample_pb2.Sample(**fields).SerializeToString()


PB_BAD = [
    (get_codec("protobuf").encode(SMALL)[:-2], "truncated"),
    (b"\x0f\xff\xff", "malformed"),
    (_pb(index=1, label=2, dtype="uint8", data=b"abcd"), "missing_field"),           # no shape
    (_pb(index=1, label=2, shape=[2, 2], data=b"abcd"), "missing_field"),            # no dtype
    (_pb(index=1, label=2, shape=[2, 2], dtype="uint8"), "missing_field"),           # no payload
    (_pb(index=1, label=2, shape=[2, 2], dtype="uint8", data=b"abc"), "size_mismatch"),
    (_pb(index=1, label=2, shape=[2, 2], dtype="uint8", pixels=[1, 2, 3, 999]), "out_of_range"),
    (_pb(index=1, label=2, shape=[2, 2], dtype="uint8", data=b"abcd", pixels=[1, 2, 3, 4]), "both_fields"),
    (_pb(index=1, label=2, shape=[2, -2], dtype="uint8", data=b"abcd"), "bad_shape"),
    (_pb(index=1, label=2, shape=[2, 2], dtype="float64", data=b"abcd"), "bad_dtype"),
]


@pytest.mark.parametrize("value,reason", PB_BAD)
def test_protobuf_bad_input(value, reason):
    with pytest.raises(DecodeError) as e:
        get_codec("protobuf").decode(value)
    assert (e.value.format, e.value.reason) == ("protobuf", reason)


def _avro(rec):
    import io

    import fastavro

    from schemas import load_avro_schema

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(load_avro_schema()), rec)
    return buf.getvalue()


AVRO_OK = {"index": 1, "label": 2, "shape": [2, 2], "dtype": "uint8", "data": b"abcd", "pixels": None}
AVRO_BAD = [
    (get_codec("avro").encode(SMALL)[:-3], "truncated"),
    (get_codec("avro").encode(SMALL) + b"\x00\x00", "malformed"),
    (bytes.fromhex("0a06040404000a") + b"uint8" + bytes.fromhex("07"), "malformed"),   # union branch 7
    (_avro({**AVRO_OK, "data": b"abc"}), "size_mismatch"),
    (_avro({**AVRO_OK, "dtype": "int8"}), "bad_dtype"),
    (_avro({**AVRO_OK, "pixels": [1, 2, 3, 4]}), "both_fields"),
    (_avro({**AVRO_OK, "data": None}), "missing_field"),
    (_avro({**AVRO_OK, "shape": []}), "bad_shape"),
    (_avro({**AVRO_OK, "data": None, "pixels": [1, 2, 3, -1]}), "out_of_range"),
]


@pytest.mark.parametrize("value,reason", AVRO_BAD)
def test_avro_bad_input(value, reason):
    with pytest.raises(DecodeError) as e:
        get_codec("avro").decode(value)
    assert (e.value.format, e.value.reason) == ("avro", reason)


def _bson(**over):
    doc = {"_id": 1, "index": 1, "label": 2, "shape": [2, 2], "dtype": "uint8", "data": b"abcd"}
    doc.update(over)
    return bson.encode({k: v for k, v in doc.items() if v is not Ellipsis})


BSON_BAD = [
    (_bson()[:-5], "truncated"),
    (b"\x05\x00", "truncated"),
    (b"\x08\x00\x00\x00\x99x\x00\x00", "malformed"),
    (_bson(label="two"), "wrong_type"),
    (_bson(index=...), "missing_field"),
    (_bson(data="abcd"), "wrong_type"),
    (_bson(data=b"abcde"), "size_mismatch"),
    (_bson(_id=2), "malformed"),
    (_bson(shape=[2.0, 2.0]), "wrong_type"),
    (_bson(data=..., pixels=[1, 2, 3, 256]), "out_of_range"),
]


@pytest.mark.parametrize("value,reason", BSON_BAD)
def test_bson_bad_input(value, reason):
    with pytest.raises(DecodeError) as e:
        get_codec("bson").decode(value)
    assert (e.value.format, e.value.reason) == ("bson", reason)


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_value_is_truncated(fmt):
    with pytest.raises(DecodeError) as e:
        get_codec(fmt).decode(b"")
    assert e.value.reason == "truncated"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_decode_batch_sets_bad_values_aside(fmt, layout):
    codec = get_codec(fmt, layout)
    imgs = RNG.integers(0, 256, size=(6, 3, 3), dtype=np.uint8)
    values = [codec.encode_array(i, i, imgs[i]) for i in range(6)]
    values[1] = values[1][:-3]                                           # truncated
    values[4] = codec.encode_array(4, 4, np.zeros((2, 2), np.uint8))     # wrong shape for the topic
    batch = codec.decode_batch(values, shape=(3, 3), dtype="uint8")
    assert [p for p, _ in batch.errors] == [1, 4]
    assert batch.errors[1][1].reason == "shape_mismatch"
    np.testing.assert_array_equal(batch.indices, [0, 2, 3, 5])
    np.testing.assert_array_equal(batch.positions, [0, 2, 3, 5])
    np.testing.assert_array_equal(batch.images, imgs[[0, 2, 3, 5]])


def test_decode_batch_list_out_of_range_row_is_isolated():
    codec = get_codec("json", "list")
    good = codec.encode_array(0, 1, np.full((2, 2), 9, np.uint8))
    bad = _json(data=..., pixels=[1, 2, 3, 256])
    batch = codec.decode_batch([good, bad, good])
    assert [(p, e.reason) for p, e in batch.errors] == [(1, "out_of_range")]
    assert batch.images.shape == (2, 2, 2)


def test_decode_batch_empty():
    batch = get_codec("avro").decode_batch([], shape=(28, 28), dtype="uint8")
    assert batch.images.shape == (0, 28, 28) and len(batch) == 0


def test_unknown_format_and_layout_name_allowed_values():
    with pytest.raises(ValueError, match="json, avro, protobuf, bson"):
        get_codec("xml")
    with pytest.raises(ValueError, match="bytes, list"):
        get_codec("json", "csv")


def test_every_reason_a_codec_gives_is_a_bad_reason():
    import ast
    from pathlib import Path

    from ddp_kbit.wire import BadReason

    root = Path(__file__).resolve().parents[2] / "ddp_kbit"
    given = set()
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DecodeError" and len(node.args) > 1 \
                    and isinstance(node.args[1], ast.Constant):
                given.add(node.args[1].value)
    assert given and given <= {r.value for r in BadReason}, given - {r.value for r in BadReason}
