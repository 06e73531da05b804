"""Wire contract v1 schema files, shipped with the package.

``sample.avsc`` (Avro), ``sample.proto`` (+ generated ``sample_pb2``) and
``sample.schema.json`` (JSON Schema) describe the same Sample record. Read through
``importlib.resources``, so they load from a zip too (``--ship-package``).
"""
import json
from importlib import resources
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent   # on disk only (tests, protoc)
AVRO_SCHEMA = SCHEMA_DIR / "sample.avsc"
PROTO_FILE = SCHEMA_DIR / "sample.proto"
JSON_SCHEMA = SCHEMA_DIR / "sample.schema.json"


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def load_avro_schema() -> dict:
    return json.loads(_read("sample.avsc"))


def load_json_schema() -> dict:
    return json.loads(_read("sample.schema.json"))
