"""The vectorised decoder changes speed, never results: decode_batch must equal
decoding every value on its own, for canonical, non-canonical and corrupt values."""
import numpy as np
import pytest

from ddp_kbit import fastpath
from ddp_kbit.codecs import DecodeError, Sample, get_codec

SHAPE = (5, 4)


def reference(codec, values, shape, dtype):
    good, errors = [], []
    for pos, v in enumerate(values):
        try:
            s = codec.decode(v)
            if (s.shape, s.dtype) != (shape, dtype):
                raise DecodeError(codec.format, "shape_mismatch")
            good.append((pos, s))
        except DecodeError as exc:
            errors.append((pos, exc.reason))
    return good, errors


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


@pytest.mark.parametrize("fmt", ["protobuf", "avro", "bson", "json"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_batch_equals_per_value_decoding(fmt, dtype, seed):
    rng = np.random.default_rng(seed)
    codec, list_codec = get_codec(fmt, "bytes"), get_codec(fmt, "list")
    values = []
    for i in range(300):
        index = int(rng.choice([0, 1, i, 2**31 + i, -i - 1, 2**62 + i, -(2**63)]))
        label = int(rng.choice([0, 1, 9, 127, 128, 2**31 - 1, -1, -(2**31)]))
        arr = (rng.integers(0, 256, SHAPE).astype(np.uint8) if dtype == "uint8"
               else rng.standard_normal(SHAPE).astype(np.float32))
        s = Sample.from_array(index, label, arr, "bytes")
        r = rng.random()
        if r < 0.7:
            values.append(codec.encode(s))
        elif r < 0.85:
            values.append(corrupt(rng, codec.encode(s)))
        elif r < 0.9 and dtype == "uint8":
            values.append(list_codec.encode(Sample.from_array(index, label, arr, "list")))
        elif r < 0.95 and fmt == "protobuf":
            values.append(protobuf_reordered(s))
        else:
            values.append(codec.encode(Sample.from_array(index, label, np.zeros((3, 3), arr.dtype), "bytes")))
    good, errors = reference(codec, values, SHAPE, dtype)
    batch = codec.decode_batch(values, SHAPE, dtype)
    assert batch.positions.tolist() == [p for p, _ in good]
    assert batch.indices.tolist() == [s.index for _, s in good]
    assert batch.labels.tolist() == [s.label for _, s in good]
    assert batch.images.tobytes() == b"".join(s.to_array().astype(s.to_array().dtype).tobytes() for _, s in good)
    assert [(p, e.reason) for p, e in batch.errors] == errors


@pytest.mark.parametrize("fmt", ["protobuf", "avro", "bson", "json"])
def test_canonical_values_all_take_the_vector_path(fmt):
    codec = get_codec(fmt)
    values = [codec.encode_array(i * 7919 * (-1) ** i, i % 10, np.full(SHAPE, i, np.uint8)) for i in range(200)]
    ok, images, labels, indices = fastpath.decode(fmt, values, SHAPE, "uint8")
    assert ok.all() and indices.tolist() == [i * 7919 * (-1) ** i for i in range(200)]
    assert labels.tolist() == [i % 10 for i in range(200)] and images[5].max() == 5
