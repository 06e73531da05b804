"""Reliability end to end through the CLI (embedded broker + local Spark): a plain
producer's bad records of every kind never stop training and are counted and
dead-lettered exactly once, across epochs, a killed rank and a restart; killed
ranks are named; missing records, foreign checkpoints, secrets and bad inputs
end in one clear line."""
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from confluent_kafka import Producer

from ddp_kbit import kafka
from ddp_kbit.data import manifest
from ddp_kbit.data.local_datasets import load_dataset
from ddp_kbit.errors import UserError
from ddp_kbit.wire import Sample, get_codec

from runs import assert_exact_epochs, fit, started_training, train, write_topic

pytestmark = pytest.mark.slow

N, PARTS = 2400, 2
KINDS = ("random_bytes", "tombstone", "bad_label", "deep_json", "huge_int", "wrong_shape")


def bad_value(kind: str, i: int, rng: random.Random) -> bytes | None:
    codec = get_codec("json")
    if kind == "random_bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
    if kind == "tombstone":
        return None
    if kind == "bad_label":
        return codec.encode(Sample(i, rng.choice([99, -5, 10]), (28, 28), "uint8", data=bytes(784)))
    if kind == "deep_json":
        return b'{"index":' + b"[" * 20000 + b"]" * 20000 + b"}"
    if kind == "huge_int":
        return b'{"index":' + b"7" * 6000 + b',"label":1,"shape":[28,28],"dtype":"uint8","data":""}'
    return codec.encode(Sample(i, 1, (14, 14), "uint8", data=bytes(196)))


@pytest.fixture(scope="module")
def dirty(kcfg):
    """A JSON topic written with a plain confluent producer: 1% bad records, four of
    each kind, among valid Fashion-MNIST samples; plus its manifest."""
    topic, ds, rng = f"dirty.{time.time_ns()}", load_dataset("fashion-mnist", "train", limit=N), random.Random(7)
    bad_at = dict(zip(rng.sample(range(N), 4 * len(KINDS)), [k for k in KINDS for _ in range(4)]))
    with kafka.make_admin(kcfg) as admin:
        admin.create_topic(topic, PARTS)
    p, codec = Producer({"bootstrap.servers": kcfg.bootstrap_servers}), get_codec("json")
    for i in range(N):
        value = bad_value(bad_at[i], i, rng) if i in bad_at else codec.encode_array(i, int(ds.labels[i]), ds.images[i])
        p.produce(topic, value=value, key=f"user-{i}".encode(), partition=i % PARTS,
                  headers=[("trace-id", f"t{i}".encode()), ("source", b"plain-producer")])
    assert p.flush(30) == 0
    parts = {q: (0, N // PARTS) for q in range(PARTS)}
    manifest.write(kcfg, manifest.Manifest(topic=topic, dataset="fashion-mnist", split="train", format="json",
                                           layout="bytes", num_samples=N, shape=(28, 28), dtype="uint8",
                                           num_classes=10, class_names=None, partitions=parts))
    injected = {(i % PARTS, i // PARTS): kind for i, kind in bad_at.items()}
    return manifest.resolve(kcfg, topic), injected


@pytest.fixture(scope="module")
def test_topic(kcfg):
    from ddp_kbit.config import PublishConfig
    from ddp_kbit.data.publish import publish

    ds = load_dataset("fashion-mnist", "test", limit=400)
    return publish(kcfg, PublishConfig(format="json", split="test", topic=f"clean.test.{time.time_ns()}",
                                       partitions=2), ds, progress=False).manifest


def dead_letters(kcfg, topic: str) -> list[tuple[int, int]]:
    recs = kafka.read_topic(kcfg, topic + ".dlq", headers=True)
    out = []
    for r in recs:
        h = dict(r.headers)
        assert h["ddp_kbit.source.topic"] == topic.encode()
        out.append((int(h["ddp_kbit.source.partition"]), int(h["ddp_kbit.source.offset"])))
    return sorted(out)


def assert_bad_accounting(kcfg, report, m, injected):
    bad = report["bad_records"]
    assert bad["count"] == len(injected) == 24 and bad["seen"] == N
    assert bad["by_reason"]["tombstone"] == 4 and bad["by_reason"]["bad_label"] == 4
    assert bad["by_reason"]["shape_mismatch"] == 4 and sum(bad["by_reason"].values()) == 24
    assert_exact_epochs(report, m, bad=24)
    assert dead_letters(kcfg, m.topic) == sorted(injected)   # each bad record exactly once


def test_bad_records_of_every_kind_never_stop_two_epochs_and_keep_key_value_headers(kcfg, spark, dirty, test_topic,
                                                                                   tmp_path):
    m, injected = dirty
    report = fit(kcfg, tmp_path, train_topic=m.topic, test_topic=test_topic.topic, epochs=2, num_processes=2,
                 max_bad_fraction=0.05)
    assert report["restarts"] == 0 and len(report["epochs"]) == 2
    assert_bad_accounting(kcfg, report, m, injected)
    # Kafka Connect's convention: the source record's own key, value and headers, plus ours
    source = {(r.partition, r.offset): r for r in kafka.read_topic(kcfg, m.topic, headers=True)}
    dlq = kafka.read_topic(kcfg, m.topic + ".dlq", headers=True)
    assert len({r.key for r in dlq}) == len(dlq) == 24
    for r in dlq:
        h = dict(r.headers)
        src = source[(int(h["ddp_kbit.source.partition"]), int(h["ddp_kbit.source.offset"]))]
        assert r.key == src.key and r.value == src.value and r.headers[:2] == src.headers
        assert (r.value is None) == (injected[(src.partition, src.offset)] == "tombstone")   # tombstones stay
        assert h["ddp_kbit.error.reason"] and "ddp_kbit.value.dropped" not in h


def test_killed_rank_and_restart_keep_the_accounting_exact(kcfg, dirty, test_topic, tmp_path):
    m, injected = dirty
    clean = f"{m.topic}.again"   # a fresh DLQ: the same records, republished under another name
    recs = kafka.read_topic(kcfg, m.topic)
    with kafka.make_admin(kcfg) as admin:
        admin.create_topic(clean, PARTS)
    p = Producer({"bootstrap.servers": kcfg.bootstrap_servers})
    for r in sorted(recs, key=lambda r: (r.partition, r.offset)):
        p.produce(clean, value=r.value, key=r.key, partition=r.partition)
    assert p.flush(30) == 0
    manifest.write(kcfg, manifest.Manifest(**{**m.__dict__, "topic": clean, "origin": "manifest"}))
    m2 = manifest.resolve(kcfg, clean)
    # 19 steps an epoch: rank 1 is killed in epoch 2, after the step-25 checkpoint
    report = fit(kcfg, tmp_path, train_topic=clean, test_topic=test_topic.topic, epochs=2, num_processes=2,
                 max_bad_fraction=0.05, checkpoint_every=5, max_restarts=1, kill_at=27)
    assert report["restarts"] == 1
    assert_bad_accounting(kcfg, report, m2, injected)


@pytest.mark.parametrize("mode", ["local", "barrier-1", "barrier-2"])
def test_a_killed_rank_is_named_and_nobody_waits(kcfg, spark, dirty, test_topic, tmp_path, mode):
    m, _ = dirty
    with pytest.raises(UserError) as err:   # the collective timeout bounds every wait (no wall-clock assert here)
        fit(kcfg, tmp_path, train_topic=m.topic, test_topic=test_topic.topic, epochs=1, num_processes=2,
            max_bad_fraction=0.05, collective_timeout_s=30, distributed=mode.startswith("barrier"), kill_at=3)
    line = str(err.value)
    assert line.startswith("training failed after 0 restart(s): rank 1 "), line
    assert "SIGKILL" in line or "died without a Python error" in line


def test_a_stopped_rank_is_named_as_not_responding(kcfg, spark, dirty, test_topic, tmp_path):
    """SIGSTOP: the process is alive, it just never answers; its peer's collective
    times out, and the line says which rank stopped responding, not that it died."""
    m, _ = dirty
    with pytest.raises(UserError) as err:
        fit(kcfg, tmp_path, train_topic=m.topic, test_topic=test_topic.topic, epochs=1, num_processes=2,
            max_bad_fraction=0.05, collective_timeout_s=12, stop_at=3)
    line = str(err.value)
    assert line.startswith("training failed after 0 restart(s): rank 1 stopped responding: pid "), line
    assert "alive (stopped)" in line and "collective timeout is 12 s" in line


def test_a_bad_record_too_large_for_the_dlq_does_not_stop_training(kcfg, spark, test_topic, tmp_path):
    """One 8 MB record (a valid Sample, but 2048x4096) among normal ones: counted as
    bad (shape), dead-lettered without its value (a header says why), training goes on."""
    topic, ds, codec = f"huge.{time.time_ns()}", load_dataset("fashion-mnist", "train", limit=600), get_codec("json")
    with kafka.make_admin(kcfg) as admin:
        admin.create_topic(topic, 2)
    big = get_codec("protobuf").encode(Sample(9999, 1, (2048, 4096), "uint8", data=bytes(2048 * 4096)))
    codec = get_codec("protobuf")
    p = Producer({"bootstrap.servers": kcfg.bootstrap_servers, "message.max.bytes": 20_000_000})
    for i in range(600):
        value = big if i == 301 else codec.encode_array(i, int(ds.labels[i]), ds.images[i])
        p.produce(topic, value=value, key=f"k{i}".encode(), partition=i % 2)
    assert p.flush(30) == 0
    manifest.write(kcfg, manifest.Manifest(topic=topic, dataset=None, split="train", format="protobuf",
                                           layout="bytes", num_samples=600, shape=(28, 28), dtype="uint8",
                                           num_classes=10, class_names=None, partitions={0: (0, 300), 1: (0, 300)}))
    m = manifest.resolve(kcfg, topic)
    report = fit(kcfg, tmp_path, train_topic=topic, test_topic=test_topic.topic, epochs=1, num_processes=2)
    assert report["bad_records"]["by_reason"] == {"shape_mismatch": 1} and report["bad_records"]["dlq_value_dropped"] == 1
    assert_exact_epochs(report, m, bad=1)
    [dead] = kafka.read_topic(kcfg, topic + ".dlq", headers=True)
    h = dict(dead.headers)
    assert dead.key == b"k301" and dead.value is None and h["ddp_kbit.error.reason"] == b"shape_mismatch"
    assert h["ddp_kbit.value.dropped"].startswith(f"{len(big)} bytes exceed the dead-letter limit".encode())


def test_records_missing_from_the_broker_stop_with_one_line_or_are_skipped(kcfg, test_topic, tmp_path):
    ds = load_dataset("fashion-mnist", "train", limit=300)
    topic, codec = f"short.{time.time_ns()}", get_codec("json")
    with kafka.make_admin(kcfg) as admin:
        admin.create_topic(topic, 1)
    with kafka.make_producer(kcfg) as producer:
        for i in range(300):
            producer.send(topic, codec.encode_array(i, int(ds.labels[i]), ds.images[i]), partition=0)
    # the manifest claims 400 records: 100 the broker does not hold (as after retention)
    manifest.write(kcfg, manifest.Manifest(topic=topic, dataset=None, split="train", format="json", layout="bytes",
                                           num_samples=400, shape=(28, 28), dtype="uint8", num_classes=10,
                                           class_names=None, partitions={0: (0, 400)}))
    args = ["--train-topic", topic, "--test-topic", test_topic.topic, "--epochs", "1", "--num-processes", "1"]
    r = train(kcfg, tmp_path / "a", *args, expect_rc=1, timeout=120)
    assert r.stderr.strip().splitlines()[-1] == (
        f"ddp-kbit: error: records the manifest of {topic} covers are not on the broker: {topic}[0] offsets "
        "[300, 400) (deleted by retention?); pass --allow-missing-records to train on the rest")
    report = fit(kcfg, tmp_path / "b", train_topic=topic, test_topic=test_topic.topic, epochs=1, num_processes=1,
                 allow_missing_records=True)
    assert report["missing_records"] == [{"topic": topic, "partition": 0, "start": 300, "end": 400}]
    assert report["epochs"][0]["samples"] == 300


def test_foreign_corrupt_and_tampered_checkpoints_are_refused(kcfg, spark, dirty, test_topic, tmp_path):
    a = write_topic(kcfg, f"ckpt.a.{time.time_ns()}", [300, 300])
    b = write_topic(kcfg, f"ckpt.b.{time.time_ns()}", [200, 200])
    ckpt = tmp_path / "ckpt"
    common = {"test_topic": test_topic.topic, "epochs": 1, "num_processes": 1, "checkpoint_dir": str(ckpt)}
    fit(kcfg, tmp_path / "a", train_topic=a.topic, **common)
    saved = sorted(ckpt.glob("ckpt-*.pt"))[-1]
    with pytest.raises(UserError) as err:
        fit(kcfg, tmp_path / "b", train_topic=b.topic, resume=True, **common)
    assert f"checkpoint {saved}: checkpoint is for another run: " in str(err.value)
    assert f"train_topic '{a.topic}' in the checkpoint, '{b.topic}' now" in str(err.value)
    for content in (b"", b"not a checkpoint at all", saved.read_bytes()[:1000]):
        saved.write_bytes(content)   # the only checkpoint: nothing readable to fall back to
        with pytest.raises(UserError) as err:
            fit(kcfg, tmp_path / "c", train_topic=a.topic, resume=True, **common)
        assert str(err.value).startswith(f"no checkpoint in {ckpt} is readable: {saved.name} is unreadable") \
            and "weights_only" not in str(err.value)
    torch.save({"run": {"version": 1}, "model": {"x": torch.nn.Linear(1, 1)}}, saved)   # tampered: not plain data
    r = train(kcfg, tmp_path / "d", "--train-topic", a.topic, "--test-topic", test_topic.topic, "--epochs", "1",
              "--num-processes", "1", "--checkpoint-dir", str(ckpt), "--resume", expect_rc=1, timeout=120)
    last = r.stderr.strip().splitlines()[-1]
    assert f"{saved.name} is unreadable: it holds objects other than tensors" in last


SECRET = "PLANTED-s3cr3t-9f27c1"


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_no_secret_in_any_output_at_debug(kcfg, dirty, test_topic, tmp_path, client):
    m, _ = dirty
    sec = ["--client", client, "--sasl-mechanism", "PLAIN", "--sasl-username", "user", "--sasl-password", SECRET,
           "--log-level", "DEBUG"]
    pub = subprocess.run([sys.executable, "-m", "producers.publish", "--bootstrap-servers", kcfg.bootstrap_servers,
                          "--limit", "50", "--topic", f"secret.{client}.{time.time_ns()}", "--run-dir",
                          str(tmp_path / "pub"), "--no-progress", *sec], capture_output=True, text=True, timeout=120)
    assert pub.returncode == 0, pub.stderr[-3000:]
    cmd = [sys.executable, "-m", "ddp_kbit.main", "--bootstrap-servers", kcfg.bootstrap_servers, "--train-topic",
           test_topic.topic, "--test-topic", test_topic.topic, "--epochs", "1", "--num-processes", "1",
           "--no-progress", "--run-dir", str(tmp_path / "train"), *sec]
    tr = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert tr.returncode == 0, tr.stderr[-3000:]
    assert "DEBUG" in tr.stderr and "DEBUG" in pub.stderr    # really at DEBUG
    for out in (pub.stdout, pub.stderr, tr.stdout, tr.stderr):
        assert SECRET not in out
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


def run_cli(module, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("content,message", [
    ('[trian]\nepochs = 3\n', "unknown section(s) [trian]; allowed: [general], [kafka], [data], [train], "
                              "[checkpoint], [spark]"),
    ('[train]\nepochs = "five"\n', "train.epochs must be an integer; got 'five'"),
    ('[train]\nepoch = 5\n', "unknown train key(s) epoch; allowed: model, epochs,"),
])
def test_config_file_mistakes_exit_2_with_one_line(tmp_path, content, message):
    f = tmp_path / "job.toml"
    f.write_text(content)
    r = run_cli("ddp_kbit.main", "--config", str(f))
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["--dataset", "synthetic", "--shape", "abc"], "shape must be H,W or H,W,C integers"),
    (["--dataset", "synthetic", "--shape", "0,28"], "shape must be H,W or H,W,C with every dimension > 0"),
    (["--dataset", "gtsrb", "--data-dir", "/nonexistent/x"], "dataset folder /nonexistent/x does not exist"),
])
def test_publish_input_mistakes_are_one_line(args, message):
    r = run_cli("producers.publish", *args)
    assert r.returncode in (1, 2) and message in r.stderr and "Traceback" not in r.stderr


def test_corrupt_gtsrb_pickle_is_one_line(tmp_path):
    (tmp_path / "train.p").write_bytes(b"\x80\x02}q\x00(X\x08\x00\x00\x00features")
    r = run_cli("producers.publish", "--dataset", "gtsrb", "--data-dir", str(tmp_path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1
    assert lines[0].startswith(f"publish: error: {tmp_path}/train.p is not a readable dataset pickle (")


def test_a_manifest_is_the_source_of_truth_for_format(kcfg, dirty, test_topic, tmp_path):
    m, _ = dirty
    r = train(kcfg, tmp_path, "--train-topic", m.topic, "--test-topic", test_topic.topic, "--format", "avro",
              expect_rc=1, timeout=120)
    assert r.stderr.strip().splitlines()[-1] == (
        f"ddp-kbit: error: topic {m.topic} is json (its manifest says so), but --format avro was given; "
        "leave --format out or name another topic")


def test_ctrl_c_in_barrier_mode_is_one_line_and_exit_130(kcfg, dirty, test_topic, tmp_path):
    m, _ = dirty
    cmd = [sys.executable, "-m", "ddp_kbit.main", "--bootstrap-servers", kcfg.bootstrap_servers, "--train-topic",
           m.topic, "--test-topic", test_topic.topic, "--epochs", "5", "--num-processes", "2", "--distributed",
           "--max-bad-fraction", "0.05", "--no-progress", "--run-dir", str(tmp_path), "--log-level", "INFO"]
    # a shell's background job ignores SIGINT, and children inherit that: start with the default
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert started_training(tmp_path), "the ranks never started training"
    proc.send_signal(signal.SIGINT)   # graceful: the ranks finish their step and checkpoint
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert re.fullmatch(r"ddp-kbit: stopped by SIGINT after (step \d+ of )?epoch 1; `--resume --checkpoint-dir "
                        r"\S+` continues", err.strip().splitlines()[-1]), err[-3000:]
    for trace in ("Traceback", "py4j", "at org.apache", "Exception"):
        assert trace not in err, err[-3000:]


def test_records_appended_after_the_manifest_are_reported_once(kcfg, spark, test_topic, tmp_path, caplog):
    m = write_topic(kcfg, f"grown.{time.time_ns()}", [150, 150])
    p = Producer({"bootstrap.servers": kcfg.bootstrap_servers})
    for i in range(25):
        p.produce(m.topic, value=b"appended later", partition=i % 2)
    assert p.flush(30) == 0
    with caplog.at_level("WARNING", logger="ddp_kbit"):
        report = fit(kcfg, tmp_path, train_topic=m.topic, test_topic=test_topic.topic, epochs=1, num_processes=1)
    assert caplog.text.count(f"topic {m.topic} holds 25 records beyond its manifest") == 1
    assert report["epochs"][0]["samples"] == 300
