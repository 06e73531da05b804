"""Training end to end through the CLI: embedded broker + local Spark +
TorchDistributor, in local mode and barrier mode, on skewed partitions, with
malformed records, and interrupted-then-resumed runs with exact epochs."""
import subprocess
import sys
import time

import pytest
import torch

from ddp_kbit import kafka
from ddp_kbit.config import PublishConfig
from ddp_kbit.data.datasets import load_dataset
from ddp_kbit.data.publish import publish

from runs import assert_exact_epochs, spark_submit, train, write_topic

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


def test_local_mode_trains_and_report_matches(kcfg, topics, tmp_path):
    report = train(kcfg, tmp_path, "--train-topic", topics["train"].topic, "--test-topic", topics["test"].topic,
                   "--epochs", "2", "--num-processes", "2")
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
                                     "dlq_topic": topics["train"].topic + ".dlq"}
    state = torch.load(final["checkpoint"], weights_only=True)["run"]
    assert state["epoch"] == 2 and state["consumed"] == [] and len(state["history"]) == 2
    assert torch.load(final["model"], weights_only=True)["0.weight"].shape == (32, 1, 3, 3)
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert report["config"]["train"]["batch_size"] == 64


def test_barrier_mode_trains(kcfg, topics, tmp_path):
    report = train(kcfg, tmp_path, "--train-topic", topics["train"].topic, "--test-topic", topics["test"].topic,
                   "--epochs", "1", "--num-processes", "2", "--distributed", "--model", "mlp")
    assert report["world_size"] == 2 and report["config"]["spark"]["distributed"] is True
    assert report["spark"]["mode"] == "barrier" and report["spark"]["master"] == "local[2]"
    assert_exact_epochs(report, topics["train"])
    assert report["final"]["test_accuracy"] > 0.5


@pytest.mark.parametrize("procs", [2, 3])
def test_skewed_partitions_finish_without_hanging(kcfg, topics, tmp_path, procs):
    m = write_topic(kcfg, f"skew.{procs}.{time.time_ns()}", [100, 1000])
    report = train(kcfg, tmp_path, "--train-topic", m.topic, "--test-topic", topics["test"].topic,
                   "--epochs", "1", "--num-processes", str(procs), "--batch-size", "32", timeout=300)
    assert report["world_size"] == procs
    assert_exact_epochs(report, m)
    per_rank = {}
    for c in report["epochs"][0]["consumed"]:
        per_rank[c["rank"]] = per_rank.get(c["rank"], 0) + c["end"] - c["start"]
    assert max(per_rank.values()) - min(per_rank.values()) <= 1


def test_interrupted_run_resumes_with_exact_epochs(kcfg, topics, tmp_path):
    ckpt = tmp_path / "ckpt"
    common = ["--train-topic", topics["train"].topic, "--test-topic", topics["test"].topic, "--epochs", "2",
              "--num-processes", "2", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "7"]
    # 2400 records / 2 ranks / 64 = 19 steps an epoch; crash in epoch 2 at step 31, after the step-28 checkpoint
    r = train(kcfg, tmp_path / "a", *common, crash_at=31, expect_rc=1)
    assert "injected failure at step 31" in r.stderr and "Traceback" not in r.stderr.splitlines()[-1]
    saved = torch.load(sorted(ckpt.glob("ckpt-*.pt"))[-1], weights_only=True)["run"]
    assert (saved["epoch"], saved["global_step"]) == (1, 28)   # mid epoch 2 (0-based 1), 9 steps in
    assert sum(c["end"] - c["start"] for c in saved["consumed"]) == 9 * 64 * 2
    report = train(kcfg, tmp_path / "b", *common, "--resume")
    assert [e["epoch"] for e in report["epochs"]] == [1, 2]
    assert_exact_epochs(report, topics["train"])


@pytest.mark.parametrize("before, after", [(2, 3), (3, 2)])
def test_resume_on_a_different_number_of_processes(kcfg, topics, tmp_path, before, after):
    """Checkpointed offsets, not rank positions: ``before`` ranks crash mid-epoch, ``after``
    finish it. 3 ranks cut partitions of the 4, so 2 ranks then hold two slices of one."""
    ckpt = tmp_path / "ckpt"
    common = ["--train-topic", topics["train"].topic, "--test-topic", topics["test"].topic, "--epochs", "1",
              "--checkpoint-dir", str(ckpt), "--checkpoint-every", "5"]
    train(kcfg, tmp_path / "a", *common, "--num-processes", str(before), crash_at=12, expect_rc=1)
    report = train(kcfg, tmp_path / "b", *common, "--num-processes", str(after), "--resume")
    assert report["world_size"] == after
    assert_exact_epochs(report, topics["train"])
    ranks = {c["rank"] for c in report["epochs"][0]["consumed"]}
    assert ranks == {0, 1, 2}   # each range keeps the rank that consumed it; the 3-rank part brings rank 2


def test_kafka_python_client_trains(kcfg, topics, tmp_path):
    report = train(kcfg, tmp_path, "--train-topic", topics["train"].topic, "--test-topic", topics["test"].topic,
                   "--epochs", "1", "--num-processes", "2", "--client", "kafka-python")
    assert report["config"]["kafka"]["client"] == "kafka-python"
    assert_exact_epochs(report, topics["train"])


def test_failure_restarts_from_checkpoint(kcfg, topics, tmp_path):
    report = train(kcfg, tmp_path, "--train-topic", topics["train"].topic, "--test-topic", topics["test"].topic,
                   "--epochs", "1", "--num-processes", "2", "--checkpoint-every", "4", "--max-restarts", "1",
                   crash_at=10)
    assert report["restarts"] == 1
    assert_exact_epochs(report, topics["train"])


def test_malformed_records_go_to_dlq_and_training_continues(kcfg, topics, tmp_path):
    bad = {3, 500, 1999}
    m = write_topic(kcfg, f"bad.{time.time_ns()}", [1000, 1000], bad=bad)
    report = train(kcfg, tmp_path, "--train-topic", m.topic, "--test-topic", topics["test"].topic, "--epochs", "1",
                   "--num-processes", "2", "--max-bad-fraction", "0.05")
    assert report["bad_records"]["count"] == 3 and report["bad_records"]["by_reason"] == {"malformed": 3}
    assert_exact_epochs(report, m, bad=3)
    recs = kafka.read_topic(kcfg, m.topic + ".dlq", headers=True)
    origin = sorted((dict(r.headers)["ddp_kbit.source.partition"], int(dict(r.headers)["ddp_kbit.source.offset"]))
                    for r in recs)
    assert origin == [(b"0", 3), (b"0", 500), (b"1", 999)]
    assert all(r.value == b"\x07not a sample" for r in recs)


def test_too_many_malformed_records_stop_with_one_line(kcfg, topics, tmp_path):
    m = write_topic(kcfg, f"verybad.{time.time_ns()}", [400], bad=set(range(0, 400, 4)))
    r = train(kcfg, tmp_path, "--train-topic", m.topic, "--test-topic", topics["test"].topic, "--epochs", "1",
              "--num-processes", "1", expect_rc=1)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ddp-kbit: error: training failed") and "--max-bad-fraction" in last


def test_missing_topic_fails_fast(kcfg, tmp_path):
    start = time.monotonic()
    r = train(kcfg, tmp_path, "--train-topic", "no.such.topic", "--test-topic", "no.such.test", expect_rc=1,
              timeout=60)
    assert time.monotonic() - start < 30
    assert r.stderr.strip().splitlines()[-1] == (
        f"ddp-kbit: error: topic no.such.topic does not exist on {kcfg.bootstrap_servers}")


def test_bad_flag_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ddp_kbit.main", "--epochs", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "ddp-kbit: error: epochs must be > 0; got 0"


def test_help_explains_every_flag():
    from ddp_kbit.main import build_parser as main_parser
    from producers.publish import build_parser as publish_parser

    for parser in (main_parser(), publish_parser()):
        undocumented = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
        assert undocumented == []
    out = subprocess.run([sys.executable, "-m", "ddp_kbit.main", "--help"], capture_output=True, text=True).stdout
    assert "--checkpoint-every" in out and "--spark-conf" in out and "--sasl-mechanism" in out


def test_spark_submit_entry_point(kcfg, topics, tmp_path):
    """`spark-submit ddp_kbit/main.py ...`: the file runs as a script, and spark-submit's
    --master is kept, not replaced by spark_conf/spark-defaults.conf."""
    report = spark_submit(kcfg, "local[3]", tmp_path, "--format", "protobuf", "--train-topic",
                          topics["train"].topic, "--test-topic", topics["test"].topic)
    assert report["world_size"] == 2
    # spark-defaults.conf alone would have made it local[2]
    assert report["spark"]["master"] == "local[3]" and report["spark"]["mode"] == "barrier"
    assert_exact_epochs(report, topics["train"])
