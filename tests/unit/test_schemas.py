"""The schema files agree with each other and with the codecs; the generated
protobuf module is not stale."""
import base64
import subprocess
import sys

import jsonschema
import numpy as np
import pytest

from ddp_kbit.schemas import PROTO_FILE, SCHEMA_DIR, load_avro_schema, load_json_schema, sample_pb2
from ddp_kbit.wire import get_codec


def test_generated_protobuf_module_is_not_stale(tmp_path):
    # Compare descriptors, not text: the generated header varies with protoc's version.
    out = tmp_path / "sample.desc"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{SCHEMA_DIR}", f"--descriptor_set_out={out}",
                    PROTO_FILE.name], check=True, cwd=SCHEMA_DIR)
    from google.protobuf import descriptor_pb2

    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    current = descriptor_pb2.FileDescriptorProto.FromString(sample_pb2.DESCRIPTOR.serialized_pb)
    for f in fresh.message_type[0].field:  # protoc adds json_name to descriptor sets only
        f.ClearField("json_name")
    assert fresh == current, "schemas/sample_pb2.py is stale: run `make proto`"


def test_proto_fields_are_the_contract():
    fields = {f.name: (f.number, f.type, f.is_repeated) for f in sample_pb2.Sample.DESCRIPTOR.fields}
    F = sample_pb2.Sample.DESCRIPTOR.fields_by_name["index"].__class__
    assert sample_pb2.Sample.DESCRIPTOR.full_name == "ddp_kbit.v1.Sample"
    assert fields == {
        "index": (1, F.TYPE_INT64, False), "label": (2, F.TYPE_INT32, False),
        "shape": (3, F.TYPE_INT32, True), "dtype": (4, F.TYPE_STRING, False),
        "data": (5, F.TYPE_BYTES, False), "pixels": (6, F.TYPE_UINT32, True),
    }


def test_avro_schema_is_the_contract():
    s = load_avro_schema()
    assert (s["namespace"], s["name"]) == ("ddp_kbit.v1", "Sample")
    assert [(f["name"], f["type"]) for f in s["fields"]] == [
        ("index", "long"), ("label", "int"), ("shape", {"type": "array", "items": "int"}), ("dtype", "string"),
        ("data", ["null", "bytes"]), ("pixels", ["null", {"type": "array", "items": "int"}]),
    ]
    assert all(f.get("default", "absent") is None for f in s["fields"][4:])


@pytest.mark.parametrize("layout", ["bytes", "list"])
def test_json_codec_output_validates_against_json_schema(layout):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    import json

    obj = json.loads(get_codec("json", layout).encode_array(3, 1, arr))
    jsonschema.validate(obj, load_json_schema())
    if layout == "bytes":
        assert base64.b64decode(obj["data"]) == arr.tobytes()


def test_json_schema_rejects_both_payloads():
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"index": 1, "label": 1, "shape": [1], "dtype": "uint8", "data": "AA==",
                             "pixels": [0]}, load_json_schema())
