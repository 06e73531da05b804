"""The vectorised pass changes speed, never results: ``decode_batch`` must equal
decoding every value on its own (plus the label check), for canonical,
non-canonical, corrupt and hostile values, tombstones and bad labels included."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddp_kbit.errors import DecodeError
from ddp_kbit.wire import FORMATS, Sample, get_codec

SHAPE = (5, 4)
CLASSES = 10


def reference(codec, values, shape, dtype, num_classes=None):
    """Per-value decoding: the definition of what decode_batch must return."""
    good, errors = [], []
    for pos, v in enumerate(values):
        try:
            s = codec.decode(v)
            if (s.shape, s.dtype) != (shape, dtype):
                raise DecodeError(codec.format, "shape_mismatch")
            if num_classes is not None and not 0 <= s.label < num_classes:
                raise DecodeError(codec.format, "bad_label")
            good.append((pos, s))
        except DecodeError as exc:
            errors.append((pos, exc.reason))
    return good, errors


def assert_agree(codec, values, shape, dtype, num_classes=None):
    good, errors = reference(codec, values, shape, dtype, num_classes)
    batch = codec.decode_batch(values, shape, dtype, num_classes)
    assert [(p, e.reason) for p, e in batch.errors] == errors
    assert batch.positions.tolist() == [p for p, _ in good]
    assert batch.indices.tolist() == [s.index for _, s in good]
    assert batch.labels.tolist() == [s.label for _, s in good]
    assert batch.images.tobytes() == b"".join(s.to_array().tobytes() for _, s in good)
    return batch


def corrupt(rng, v: bytes) -> bytes:
    kind = rng.integers(0, 4)
    if kind == 0:
        return v[: rng.integers(0, len(v))]
    if kind == 1:
        b = bytearray(v)
        b[rng.integers(0, len(b))] ^= 1 << int(rng.integers(0, 8))
        return bytes(b)
    if kind == 2:
        return v + b"\x00"
    return v[1:]


def protobuf_reordered(s: Sample) -> bytes:
    """Valid protobuf with the fields in reverse order: not canonical, still valid."""
    from schemas import sample_pb2

    parts = []
    for name in ("data", "dtype", "shape", "label", "index"):
        m = sample_pb2.Sample()
        if name == "shape":
            m.shape.extend(s.shape)
        else:
            setattr(m, name, getattr(s, name))
        parts.append(m.SerializeToString())
    return b"".join(parts)


def hostile(fmt: str, rng) -> bytes | None:
    """Values a plain producer might write that must never escape as an exception."""
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return None                                              # tombstone
    if fmt == "json" and kind == 1:
        return b"[" * 5000 + b"]" * 5000                         # nesting beyond the parser's recursion limit
    if fmt == "json" and kind == 2:
        return b'{"index":' + b"9" * 5000 + b',"label":1}'      # an integer past int max digits
    if fmt == "json":
        return json.dumps({"index": 1, "label": 2, "shape": [5.0, 4], "dtype": "uint8",
                           "data": "A" * 28}).encode()            # float dimensions
    return bytes(rng.integers(0, 256, int(rng.integers(1, 60)), dtype=np.uint8))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_batch_equals_per_value_decoding(fmt, dtype, seed):
    rng = np.random.default_rng(seed)
    codec, list_codec = get_codec(fmt, "bytes"), get_codec(fmt, "list")
    values = []
    for i in range(300):
        index = int(rng.choice([0, 1, i, 2**31 + i, -i - 1, 2**62 + i, -(2**63)]))
        label = int(rng.choice([0, 1, 9, 10, 127, 128, 2**31 - 1, -1, -(2**31)]))
        arr = (rng.integers(0, 256, SHAPE).astype(np.uint8) if dtype == "uint8"
               else rng.standard_normal(SHAPE).astype(np.float32))
        s = Sample.from_array(index, label, arr, "bytes")
        r = rng.random()
        if r < 0.65:
            values.append(codec.encode(s))
        elif r < 0.8:
            values.append(corrupt(rng, codec.encode(s)))
        elif r < 0.85 and dtype == "uint8":
            values.append(list_codec.encode(Sample.from_array(index, label, arr, "list")))
        elif r < 0.9 and fmt == "protobuf":
            values.append(protobuf_reordered(s))
        elif r < 0.95:
            values.append(hostile(fmt, rng))
        else:
            values.append(codec.encode(Sample.from_array(index, label, np.zeros((3, 3), arr.dtype), "bytes")))
    assert_agree(codec, values, SHAPE, dtype)
    assert_agree(codec, values, SHAPE, dtype, num_classes=CLASSES)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tombstones_and_bad_labels_are_bad_values(fmt):
    codec = get_codec(fmt)
    img = np.zeros(SHAPE, np.uint8)
    values = [codec.encode_array(0, 3, img), None, codec.encode_array(2, 99, img), codec.encode_array(3, -5, img),
              b"", codec.encode_array(5, 9, img)]
    batch = assert_agree(codec, values, SHAPE, "uint8", num_classes=CLASSES)
    assert [(p, e.reason) for p, e in batch.errors] == [(1, "tombstone"), (2, "bad_label"), (3, "bad_label"),
                                                        (4, "truncated")]
    assert batch.indices.tolist() == [0, 5]


def test_json_hostile_values_are_malformed_not_exceptions():
    codec = get_codec("json")
    deep, huge = b"[" * 100_000 + b"]" * 100_000, b'{"index":' + b"1" * 10_000 + b"}"
    for value in (deep, huge):
        with pytest.raises(DecodeError) as e:
            codec.decode(value)
        assert e.value.reason == "malformed"
    float_shape = codec.encode(Sample(1, 2, (5, 4), "uint8", data=bytes(20))).replace(b"[5,4]", b"[5.0,4]")
    batch = codec.decode_batch([float_shape], SHAPE, "uint8")
    assert [e.reason for _, e in batch.errors] == ["wrong_type"] and len(batch) == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_canonical_values_all_take_the_vector_path(fmt):
    codec = get_codec(fmt)
    values = [codec.encode_array(i * 7919 * (-1) ** i, i % 10, np.full(SHAPE, i, np.uint8)) for i in range(200)]
    ok, images, labels, indices = codec.decode_canonical(values, SHAPE, "uint8")
    assert ok.all() and indices.tolist() == [i * 7919 * (-1) ** i for i in range(200)]
    assert labels.tolist() == [i % 10 for i in range(200)] and images[5].max() == 5


# ------------------------------------------------------------- properties
samples = st.builds(
    lambda index, label, shape, dtype, seed: (index, label, shape, dtype, seed),
    st.integers(-(2**63), 2**63 - 1), st.integers(-(2**31), 2**31 - 1),
    st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple), st.sampled_from(["uint8", "float32"]),
    st.integers(0, 2**32 - 1))


def _array(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(fmt=st.sampled_from(FORMATS), layout=st.sampled_from(["bytes", "list"]), sample=samples)
def test_round_trip_property(fmt, layout, sample):
    index, label, shape, dtype, seed = sample
    if layout == "list":
        dtype = "uint8"
    arr = _array(shape, dtype, seed)
    codec = get_codec(fmt, layout)
    s = codec.decode(codec.encode_array(index, label, arr))
    assert (s.index, s.label, s.shape, s.dtype, s.layout) == (index, label, shape, dtype, layout)
    assert s.to_array().tobytes() == arr.tobytes()


@settings(max_examples=80, deadline=None)
@given(fmt=st.sampled_from(FORMATS), data=st.data())
def test_batch_agrees_with_per_value_on_arbitrary_bytes(fmt, data):
    codec = get_codec(fmt)
    valid = [codec.encode_array(i, i % 12, np.full(SHAPE, i, np.uint8)) for i in range(4)]
    mutate = st.one_of(st.binary(max_size=80), st.none(), st.sampled_from(valid),
                       st.sampled_from(valid).flatmap(lambda v: st.integers(0, len(v)).map(lambda k: v[:k])),
                       st.sampled_from(valid).flatmap(
                           lambda v: st.tuples(st.integers(0, len(v) - 1), st.integers(0, 255)).map(
                               lambda t: v[:t[0]] + bytes([t[1]]) + v[t[0] + 1:])))
    values = data.draw(st.lists(mutate, max_size=12))
    assert_agree(codec, values, SHAPE, "uint8", num_classes=CLASSES)
