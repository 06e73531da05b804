import json

import pytest

from ddp_kbit.cli import overrides
from ddp_kbit.config import (
    JobConfig,
    KafkaConfig,
    PublishConfig,
    SyntheticConfig,
    as_dict,
    build,
    build_group,
    load_config_file,
    sections_of,
)
from ddp_kbit.errors import ConfigError
from ddp_kbit.main import command_parser, parse
from ddp_kbit.wire import topic_name


def test_topic_names_follow_the_contract():
    assert topic_name("fashion-mnist", "train", "avro") == "fashion-mnist.train.avro"
    assert topic_name("fashion-mnist", "test", "json", "list") == "fashion-mnist.test.json.list"
    assert PublishConfig(format="bson", layout="list", split="test").topic_name == "fashion-mnist.test.bson.list"


def test_precedence_defaults_file_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[publish]\nformat = "json"\npartitions = 8\n[kafka]\nclient = "kafka-python"\n')
    file_cfg = load_config_file(f, ["publish", "kafka"])
    cfg = build(PublishConfig, file_cfg["publish"], {"partitions": 2, "format": None})
    assert (cfg.format, cfg.partitions, cfg.compression) == ("json", 2, "none")
    assert build(KafkaConfig, file_cfg["kafka"], {}).client == "kafka-python"


def test_json_config_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"publish": {"layout": "list"}}))
    assert build(PublishConfig, load_config_file(f, ["publish"])["publish"]).layout == "list"


@pytest.mark.parametrize("kwargs,match", [
    ({"format": "xml"}, "format must be one of json, avro, protobuf, bson"),
    ({"compression": "brotli"}, "compression must be one of none, gzip, lz4, zstd, snappy"),
    ({"partitions": 0}, "partitions must be > 0"),
])
def test_bad_values_name_allowed(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PublishConfig(**kwargs)


def test_unknown_file_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown publish key\\(s\\) colour; allowed: dataset, "):
        build(PublishConfig, {"colour": "red"}, where="publish")


def test_bad_toml(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[publish\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(f, ["publish"])


def test_sasl_needs_mechanism():
    with pytest.raises(ConfigError, match="--sasl-mechanism"):
        KafkaConfig(security_protocol="SASL_SSL")




def test_unknown_section_is_an_error_naming_the_allowed(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[trian]\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \[trian\]; allowed: \[general\], \[kafka\]"):
        load_config_file(f, sections_of(JobConfig))


@pytest.mark.parametrize("section,value,match", [
    ({"epochs": "five"}, None, "train.epochs must be an integer; got 'five'"),
    ({"lr": True}, None, "train.lr must be a number; got True"),
    ({"amp": "yes"}, None, "train.amp must be true or false; got 'yes'"),
    ({"handlers": [1]}, None, "train.handlers must be a string; got 1"),
])
def test_wrong_types_name_the_field(section, value, match):
    with pytest.raises(ConfigError, match=match):
        build_group(JobConfig, {"train": section}, {})


def test_flags_override_file_and_help_defaults_come_from_fields(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\nepochs = 3\nlr = 0.01\n[data]\nformat = "json"\n[spark]\nconf = ["a=b"]\n')
    args = command_parser("train").parse_args(["--config", str(f), "--epochs", "7", "--spark-conf", "c=d"])
    job = build_group(JobConfig, load_config_file(f, sections_of(JobConfig)), overrides(args))
    assert (job.train.epochs, job.train.lr, job.data.format, job.spark.conf) == (7, 0.01, "json", ("c=d",))
    helps = {a.option_strings[0]: a.help for a in command_parser("train")._actions if a.option_strings}
    assert helps["--epochs"].endswith(f"(default {JobConfig().train.epochs})")
    assert helps["--batch-size"].endswith(f"(default {JobConfig().train.batch_size})")


def test_secrets_are_masked_and_never_in_repr():
    cfg = KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_password="hunter2")
    assert "hunter2" not in repr(cfg) and as_dict(cfg)["sasl_password"] == "***"
    assert "hunter2" not in repr(JobConfig(kafka=cfg))


@pytest.mark.parametrize("shape", [(0, 28), (28,), (2, 2, 2, 2)])
def test_synthetic_shape_is_validated(shape):
    with pytest.raises(ConfigError, match="shape must be H,W or H,W,C"):
        SyntheticConfig(shape=shape)


@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--lr", "inf"), ("--max-bad-fraction", "nan"),
                                        ("--collective-timeout", "-inf"), ("--momentum", "NaN")])
def test_numbers_that_are_not_numbers_are_refused_at_parse_time(flag, value):
    with pytest.raises(ConfigError, match=r"must be a finite number; got (nan|inf|-inf)"):
        parse([f"{flag}={value}"])


def test_nan_in_a_config_file_is_refused(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[train]\nlr = nan\n")
    with pytest.raises(ConfigError, match="train.lr must be a finite number; got nan"):
        build_group(JobConfig, load_config_file(f, sections_of(JobConfig)), {})
