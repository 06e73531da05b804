import json

import pytest

from ddp_kbit.config import ConfigError, KafkaConfig, PublishConfig, build, default_topic, load_config_file
from ddp_kbit.manifest import FIELDS, Manifest, ManifestError


def test_topic_names_follow_the_contract():
    assert default_topic("fashion-mnist", "train", "avro") == "fashion-mnist.train.avro"
    assert default_topic("fashion-mnist", "test", "json", "list") == "fashion-mnist.test.json.list"
    assert PublishConfig(format="bson", layout="list", split="test").topic_name == "fashion-mnist.test.bson.list"


def test_precedence_defaults_file_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[publish]\nformat = "json"\npartitions = 8\n[kafka]\nclient = "kafka-python"\n')
    file_cfg = load_config_file(f)
    cfg = build(PublishConfig, file_cfg["publish"], {"partitions": 2, "format": None})
    assert (cfg.format, cfg.partitions, cfg.compression) == ("json", 2, "none")
    assert build(KafkaConfig, file_cfg["kafka"], {}).client == "kafka-python"


def test_json_config_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"publish": {"layout": "list"}}))
    assert build(PublishConfig, load_config_file(f)["publish"]).layout == "list"


@pytest.mark.parametrize("kwargs,match", [
    ({"format": "xml"}, "format must be one of json, avro, protobuf, bson"),
    ({"compression": "brotli"}, "compression must be one of none, gzip, lz4, zstd, snappy"),
    ({"partitions": 0}, "partitions must be > 0"),
])
def test_bad_values_name_allowed(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PublishConfig(**kwargs)


def test_unknown_file_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown PublishConfig keys \\['colour'\\]"):
        build(PublishConfig, {"colour": "red"})


def test_bad_toml(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[publish\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(f)


def test_sasl_needs_mechanism():
    with pytest.raises(ConfigError, match="--sasl-mechanism"):
        KafkaConfig(security_protocol="SASL_SSL")


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
