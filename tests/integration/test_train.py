"""Training end to end: embedded broker + local Spark + TorchDistributor, through the
Python API in this process (one shared Spark session) and, where the command line
itself is under test, through the CLI: local and barrier mode, skewed partitions,
malformed records, interrupted-then-resumed runs with exact epochs, a user's own
model file and transforms."""
import subprocess
import sys
import time

import pytest
import torch

from ddp_kbit import kafka
from ddp_kbit.config import PublishConfig
from ddp_kbit.data.local_datasets import load_dataset
from ddp_kbit.data.publish import publish
from ddp_kbit.errors import ClientError, ConfigError, UserError

from runs import assert_exact_epochs, fit, spark_submit, train, write_topic

pytestmark = pytest.mark.slow
TRAIN_N, TEST_N = 2400, 600


@pytest.fixture(scope="module")
def topics(kcfg):
    """A Fashion-MNIST slice as protobuf topics with manifests."""
    out = {}
    for split, n in (("train", TRAIN_N), ("test", TEST_N)):
        ds = load_dataset("fashion-mnist", split, limit=n)
        r = publish(kcfg, PublishConfig(format="protobuf", split=split, topic=f"fm.{split}.pb.{time.time_ns()}",
                                        partitions=4), ds, progress=False)
        out[split] = r.manifest
    return out


def on(topics, **more):
    return {"train_topic": topics["train"].topic, "test_topic": topics["test"].topic, **more}


def test_local_mode_trains_and_report_matches(kcfg, spark, topics, tmp_path):
    report = fit(kcfg, tmp_path, **on(topics, epochs=2, num_processes=2))
    assert report["mode"] == "train" and report["world_size"] == 2 and report["restarts"] == 0
    assert [e["epoch"] for e in report["epochs"]] == [1, 2]
    assert_exact_epochs(report, topics["train"])
    ranks = {c["rank"] for c in report["epochs"][0]["consumed"]}
    assert ranks == {0, 1}
    e = report["epochs"][-1]
    assert e["val_loss"] < report["epochs"][0]["train_loss"] * 2 and 0 <= e["data_wait_fraction"] <= 1
    assert e["samples_per_s"] > 0 and e["seconds"] > 0
    final = report["final"]
    assert final["test_accuracy"] == e["val_accuracy"] >= 0.6   # 2400 samples, 2 epochs: well above chance
    assert report["bad_records"] == {"count": 0, "seen": TRAIN_N, "by_reason": {},   # distinct records read
                                     "dlq_topic": topics["train"].topic + ".dlq", "dlq_value_dropped": 0}
    assert report["model"] == {"spec": "cnn", "parameters": 421834}   # the tests' small recipe (runs.SMALL)
    state = torch.load(final["checkpoint"], weights_only=True)["run"]
    assert state["epoch"] == 2 and state["consumed"]["rows"].numel() == 0 and len(state["history"]) == 2
    assert torch.load(final["model"], weights_only=True)["0.weight"].shape == (32, 1, 3, 3)
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert report["config"]["train"]["batch_size"] == 64


def test_barrier_mode_trains(kcfg, spark, topics, tmp_path):
    report = fit(kcfg, tmp_path, **on(topics, epochs=1, num_processes=2, distributed=True, model="mlp"))
    assert report["world_size"] == 2 and report["config"]["spark"]["distributed"] is True
    assert report["spark"]["mode"] == "barrier" and report["spark"]["master"].startswith("local[")
    assert_exact_epochs(report, topics["train"])
    assert report["final"]["test_accuracy"] > 0.5


@pytest.mark.parametrize("procs", [2, 3])
def test_skewed_partitions_finish_without_hanging(kcfg, spark, topics, tmp_path, procs):
    m = write_topic(kcfg, f"skew.{procs}.{time.time_ns()}", [100, 1000])
    report = fit(kcfg, tmp_path, **on(topics, train_topic=m.topic, epochs=1, num_processes=procs, batch_size=32))
    assert report["world_size"] == procs
    assert_exact_epochs(report, m)
    per_rank = {}
    for c in report["epochs"][0]["consumed"]:
        per_rank[c["rank"]] = per_rank.get(c["rank"], 0) + c["end"] - c["start"]
    assert max(per_rank.values()) - min(per_rank.values()) <= 1


def test_interrupted_run_resumes_with_exact_epochs(kcfg, spark, topics, tmp_path):
    ckpt = tmp_path / "ckpt"
    common = on(topics, epochs=2, num_processes=2, checkpoint_dir=str(ckpt), checkpoint_every=7)
    # 2400 records / 2 ranks / 64 = 19 steps an epoch; crash in epoch 2 at step 31, after the step-28 checkpoint
    with pytest.raises(UserError, match="injected failure at step 31"):
        fit(kcfg, tmp_path / "a", crash_at=31, **common)
    saved = torch.load(sorted(ckpt.glob("ckpt-*.pt"))[-1], weights_only=True)["run"]
    assert (saved["epoch"], saved["global_step"]) == (1, 28)   # mid epoch 2 (0-based 1), 9 steps in
    rows = saved["consumed"]["rows"]
    assert int((rows[:, 3] - rows[:, 2]).sum()) == 9 * 64 * 2
    report = fit(kcfg, tmp_path / "b", resume=True, **common)
    assert [e["epoch"] for e in report["epochs"]] == [1, 2]
    assert_exact_epochs(report, topics["train"])


@pytest.mark.parametrize("before, after", [(2, 3), (3, 2)])
def test_resume_on_a_different_number_of_processes(kcfg, spark, topics, tmp_path, before, after):
    """Checkpointed offsets, not rank positions: ``before`` ranks crash mid-epoch (mid
    window: the shuffled plan's open window is recorded offset by offset), ``after``
    finish it."""
    ckpt = tmp_path / "ckpt"
    common = on(topics, epochs=1, checkpoint_dir=str(ckpt), checkpoint_every=5, shuffle_window=512,
                lr_schedule="onecycle")   # 3 -> 2 ranks: more steps than the checkpoint's schedule planned
    with pytest.raises(UserError, match="injected failure at step 12"):
        fit(kcfg, tmp_path / "a", num_processes=before, crash_at=12, **common)
    report = fit(kcfg, tmp_path / "b", num_processes=after, resume=True, **common)
    assert report["world_size"] == after
    assert_exact_epochs(report, topics["train"])
    ranks = {c["rank"] for c in report["epochs"][0]["consumed"]}
    assert ranks == {0, 1, 2}   # each range keeps the rank that consumed it; the 3-rank part brings rank 2


def test_kafka_python_client_trains(kcfg, spark, topics, tmp_path):
    report = fit(kcfg, tmp_path, **on(topics, epochs=1, num_processes=2, client="kafka-python"))
    assert report["config"]["kafka"]["client"] == "kafka-python"
    assert_exact_epochs(report, topics["train"])


def test_failure_restarts_from_checkpoint(kcfg, spark, topics, tmp_path):
    report = fit(kcfg, tmp_path, crash_at=10, **on(topics, epochs=1, num_processes=2, checkpoint_every=4,
                                                   max_restarts=1))
    assert report["restarts"] == 1
    assert_exact_epochs(report, topics["train"])


def test_too_many_malformed_records_stop_with_one_line(kcfg, spark, topics, tmp_path):
    m = write_topic(kcfg, f"verybad.{time.time_ns()}", [400], bad=set(range(0, 400, 4)))
    with pytest.raises(UserError, match=r"^training failed after 0 restart\(s\): .*--max-bad-fraction"):
        fit(kcfg, tmp_path, **on(topics, train_topic=m.topic, epochs=1, num_processes=1))


def test_missing_topic_fails_fast_with_one_line(kcfg, tmp_path):
    r = train(kcfg, tmp_path, "--train-topic", "no.such.topic", "--test-topic", "no.such.test", expect_rc=1,
              timeout=60)
    assert r.stderr.strip().splitlines()[-1] == (
        f"ddp-kbit: error: topic no.such.topic does not exist on {kcfg.bootstrap_servers}")
    with pytest.raises(ClientError, match="topic no.such.topic does not exist"):
        fit(kcfg, tmp_path / "api", train_topic="no.such.topic", test_topic="no.such.test")


def test_bad_flag_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ddp_kbit.main", "--epochs", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "ddp-kbit: error: epochs must be > 0; got 0"
    r = subprocess.run([sys.executable, "-m", "ddp_kbit.main", "--lr", "nan"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "ddp-kbit: error: train.lr must be a finite number; got nan"


def test_help_explains_every_flag():
    from ddp_kbit.main import COMMANDS, command_parser
    from producers.publish import build_parser as publish_parser

    for parser in (*(command_parser(c) for c in COMMANDS), publish_parser()):
        undocumented = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
        assert undocumented == []
    out = subprocess.run([sys.executable, "-m", "ddp_kbit.main", "--mode", "train", "--help"], capture_output=True,
                         text=True).stdout
    for flag in ("--checkpoint-every", "--spark-conf", "--sasl-mechanism", "--transform", "--shuffle", "--rapids"):
        assert flag in out


def test_spark_submit_entry_point(kcfg, topics, tmp_path):
    """`spark-submit ddp_kbit/main.py ...`: the file runs as a script, and spark-submit's
    --master is kept, not replaced by spark_conf/spark-defaults.conf."""
    report = spark_submit(kcfg, "local[3]", tmp_path, "--format", "protobuf", "--train-topic",
                          topics["train"].topic, "--test-topic", topics["test"].topic)
    assert report["world_size"] == 2
    # spark-defaults.conf alone would have made it local[2]
    assert report["spark"]["master"] == "local[3]" and report["spark"]["mode"] == "barrier"
    assert_exact_epochs(report, topics["train"])


# ------------------------------------------------------------- your model, your transforms
USER_MODEL = '''
import torch
from torch import nn


def build(shape, num_classes):
    """A model of the user's own, in a file outside the repository."""
    return nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1], 64), nn.ReLU(), nn.Linear(64, num_classes))
'''


@pytest.fixture
def user_model(tmp_path_factory):
    f = tmp_path_factory.mktemp("elsewhere") / "my_model.py"
    f.write_text(USER_MODEL)
    return f"{f}:build"


@pytest.mark.parametrize("distributed", [False, True])
def test_a_model_from_a_file_outside_the_repository_trains_and_resumes(kcfg, spark, topics, tmp_path, user_model,
                                                                       distributed):
    ckpt = tmp_path / "ckpt"
    common = on(topics, epochs=2, num_processes=2, distributed=distributed, checkpoint_dir=str(ckpt),
                checkpoint_every=6, model=user_model)
    with pytest.raises(UserError, match="injected failure at step 25"):
        fit(kcfg, tmp_path / "a", crash_at=25, **common)
    report = fit(kcfg, tmp_path / "b", resume=True, **common)
    assert_exact_epochs(report, topics["train"])
    assert report["model"] == {"spec": user_model, "parameters": 784 * 64 + 64 + 64 * 10 + 10}
    assert report["final"]["test_accuracy"] > 0.5
    assert torch.load(report["final"]["model"], weights_only=True)["1.weight"].shape == (64, 784)
    if not distributed:   # a checkpoint of the user's model is refused for cnn, in one line
        with pytest.raises(UserError, match=f"CheckpointError: .*model '{user_model}' in the checkpoint, 'cnn' now"):
            fit(kcfg, tmp_path / "c", **{**common, "model": "cnn"}, resume=True)


def test_a_broken_model_is_one_line_before_any_rank_starts(kcfg, topics, tmp_path, user_model):
    path = user_model.rsplit(":", 1)[0]
    for spec, match in [(f"{path}:nope", "has no nope"), ("./missing_model.py:build", "cannot read"),
                        ("ddp_kbit.train.models:channels_and_hw", "building it for shape")]:
        r = train(kcfg, tmp_path, "--train-topic", topics["train"].topic, "--test-topic", topics["test"].topic,
                  "--model", spec, expect_rc=2, timeout=120)
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith(f"ddp-kbit: error: --model {spec}") and match in last, last
        assert not (tmp_path / "rank0.pid").exists()


TRANSFORMS = '''
import json
from pathlib import Path

SEEN = Path({seen!r})


def invert(images, labels, train):
    """Evaluation sees train=False: each call's mode is noted once per process."""
    note = SEEN / ("train" if train else "eval")
    note.mkdir(parents=True, exist_ok=True)
    (note / str(images.device)).write_text(json.dumps(list(images.shape)))
    return 1.0 - images, labels


def fails_on_data(images, labels, train):
    if images.sum() > 0:   # a zero batch (the driver's check) passes; real data does not
        raise ValueError("cannot handle real pixels")
    return images, labels
'''


def test_transforms_run_on_the_device_in_training_and_evaluation(kcfg, spark, topics, tmp_path):
    seen = tmp_path / "seen"
    f = tmp_path / "tf.py"
    f.write_text(TRANSFORMS.format(seen=str(seen)))
    report = fit(kcfg, tmp_path / "run", **on(topics, epochs=1, num_processes=2, augment=True,
                                               transforms=[f"{f}:invert"]))
    assert_exact_epochs(report, topics["train"])
    assert (seen / "train" / "cpu").exists() and (seen / "eval" / "cpu").exists()
    assert report["final"]["test_accuracy"] > 0.5   # inverted in training and evaluation alike
    with pytest.raises(UserError, match=f"rank [01]: UserError: transform {f}:fails_on_data raised ValueError: "
                                        "cannot handle real pixels"):
        fit(kcfg, tmp_path / "bad", **on(topics, epochs=1, num_processes=1, transforms=[f"{f}:fails_on_data"]))
    with pytest.raises(ConfigError, match=f"--transform {f}:missing: .* has no missing"):
        fit(kcfg, tmp_path / "bad2", **on(topics, epochs=1, transforms=[f"{f}:missing"]))


def test_a_python_callable_model_through_the_api(kcfg, spark, topics, tmp_path):
    from torch import nn

    import ddp_kbit

    def tiny(shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1], num_classes))

    report = ddp_kbit.fit(bootstrap_servers=kcfg.bootstrap_servers, run_dir=str(tmp_path), progress=False,
                          log_level="WARNING", model=tiny, epochs=1, num_processes=1, **on(topics))
    assert report["model"]["parameters"] == 784 * 10 + 10 and report["model"]["spec"].endswith("tiny")
    assert_exact_epochs(report, topics["train"])


def test_publish_from_python(kcfg, topic_name):
    import ddp_kbit

    summary = ddp_kbit.publish("fashion-mnist", bootstrap_servers=kcfg.bootstrap_servers, split="test", limit=120,
                               format="json", topic=topic_name, partitions=2)
    assert summary["records"] == 120 and sum(b - a for a, b in summary["partitions"].values()) == 120
    assert kafka.topics(kcfg)[topic_name] == 2
