import json

import pytest

from ddp_kbit.data.manifest import FIELDS, Manifest
from ddp_kbit.errors import ManifestError


def _manifest(**over):
    base = dict(topic="t", dataset="fashion-mnist", split="train", format="avro", layout="bytes", num_samples=10,
                shape=(28, 28), dtype="uint8", num_classes=10, class_names=tuple("abcdefghij"),
                partitions={0: (0, 5), 1: (0, 5)}, compression="none", created_at="2026-11-22T00:00:00+00:00")
    base.update(over)
    return Manifest(**base)


def test_manifest_json_has_exactly_the_contract_fields():
    obj = json.loads(_manifest().to_json())
    assert list(obj) == list(FIELDS)
    assert obj["partitions"] == {"0": [0, 5], "1": [0, 5]} and obj["schema"] == "sample/v1"
    assert Manifest.from_json(_manifest().to_json()) == _manifest()


def test_manifest_reader_rejects_other_schema_and_missing_fields():
    obj = json.loads(_manifest().to_json())
    with pytest.raises(ManifestError, match="sample/v2"):
        Manifest.from_json(json.dumps({**obj, "schema": "sample/v2"}))
    del obj["partitions"]
    with pytest.raises(ManifestError, match="partitions"):
        Manifest.from_json(json.dumps(obj))
