"""Wire contract v1 schema files, shipped with the package.

``sample.avsc`` (Avro), ``sample.proto`` (+ generated ``sample_pb2``) and
``sample.schema.json`` (JSON Schema) describe the same Sample record.
"""
import json
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
AVRO_SCHEMA = SCHEMA_DIR / "sample.avsc"
PROTO_FILE = SCHEMA_DIR / "sample.proto"
JSON_SCHEMA = SCHEMA_DIR / "sample.schema.json"


def load_avro_schema() -> dict:
    return json.loads(AVRO_SCHEMA.read_text())


def load_json_schema() -> dict:
    return json.loads(JSON_SCHEMA.read_text())
