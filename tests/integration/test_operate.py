"""Operating a run: Prometheus metrics scraped while 2 ranks train (parsed with
prometheus_client's parser), committed offsets read back with an independent
consumer, --mode evaluate (and its predictions topic, exactly one record per input
across a kill), --mode inspect."""
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import torch
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from ddp_kbit import kafka
from ddp_kbit.config import PublishConfig
from ddp_kbit.data.local_datasets import load_dataset
from ddp_kbit.data.publish import publish

from runs import fit, write_topic

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def topics(kcfg):
    stamp = time.time_ns()
    train = publish(kcfg, PublishConfig(topic=f"ops.train.{stamp}"), load_dataset("fashion-mnist", "train",
                                                                                   limit=3000), progress=False)
    test = publish(kcfg, PublishConfig(split="test", topic=f"ops.test.{stamp}", partitions=2),
                   load_dataset("fashion-mnist", "test", limit=600), progress=False)
    return train.manifest, test.manifest


def series(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(values: dict, name: str) -> float:
    return sum(v for (n, _), v in values.items() if n == name)


def test_metrics_are_scraped_while_training_and_committed_offsets_follow_checkpoints(kcfg, spark, topics, tmp_path):
    train, test = topics
    port, scrapes, done = free_port(), [], threading.Event()

    def scrape():
        while not done.is_set():
            try:
                scrapes.append(series(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
                                      .read().decode()))
            except OSError:
                pass
            time.sleep(0.3)

    group, ckpt, matched = f"lag.{time.time_ns()}", tmp_path / "ckpt", []

    def committed():
        c = Consumer({"bootstrap.servers": kcfg.bootstrap_servers, "group.id": group})
        try:
            return {g.partition: g.offset for g in c.committed([TopicPartition(train.topic, p)
                                                                for p in train.partitions], timeout=10)}
        finally:
            c.close()

    def watch():
        """After each checkpoint: its trained offsets (first offset + records passed, per
        partition) equal what an independent consumer reads back as committed."""
        seen = set()
        while not done.is_set():
            for f in sorted(ckpt.glob("ckpt-*.pt")):
                if f.name in seen:
                    continue
                try:
                    run = torch.load(f, weights_only=True)["run"]
                except Exception:
                    continue   # being replaced
                seen.add(f.name)
                rows, want = run["consumed"]["rows"].tolist(), {}
                for _, p, a, b, _, _ in rows:
                    want[p] = want.get(p, 0) + b - a
                want = {p: s + want.get(p, 0) for p, (s, e) in train.partitions.items()} if rows else \
                    {p: e for p, (s, e) in train.partitions.items()}
                deadline = time.monotonic() + 5
                while committed() != want and time.monotonic() < deadline:
                    time.sleep(0.1)
                matched.append(committed() == want)
            time.sleep(0.2)

    threads = [threading.Thread(target=scrape, daemon=True), threading.Thread(target=watch, daemon=True)]
    for t in threads:
        t.start()
    try:
        report = fit(kcfg, tmp_path, train_topic=train.topic, test_topic=test.topic, epochs=2, num_processes=2,
                     metrics_port=port, commit_group=group, checkpoint_every=10, checkpoint_dir=str(ckpt))
    finally:
        done.set()
        for t in threads:
            t.join()
    assert len(matched) >= 2 and all(matched), matched
    trained = [total(s, "ddp_kbit_records_trained_total") for s in scrapes]
    assert len([x for x in trained if x > 0]) >= 3, "no scrape saw the ranks training"
    assert trained == sorted(trained)                                             # counters only grow
    assert any(k[0] == "ddp_kbit_step_seconds_bucket" for k in scrapes[-1])
    final = series((tmp_path / "metrics.prom").read_text())
    assert total(final, "ddp_kbit_records_trained_total") == sum(e["samples"] for e in report["epochs"])
    lag = {dict(labels)["partition"]: v for (n, labels), v in final.items() if n == "ddp_kbit_consumer_lag_records"}
    assert lag == {str(p): 0 for p in train.partitions}                            # a bounded run ends caught up
    assert total(final, "ddp_kbit_restarts_total") == 0 and total(final, "ddp_kbit_eval_accuracy") > 0
    assert committed() == {p: end for p, (_, end) in train.partitions.items()}


def test_evaluate_matches_the_runs_accuracy_and_predictions_are_exactly_once(kcfg, spark, topics, tmp_path):
    from ddp_kbit import api

    train, test = topics
    report = fit(kcfg, tmp_path / "run", train_topic=train.topic, test_topic=test.topic, epochs=1, num_processes=2)
    pred_topic = f"predictions.{time.time_ns()}"
    common = ["--bootstrap-servers", kcfg.bootstrap_servers, "--mode", "evaluate", "--model", "cnn", "--test-topic",
              test.topic, "--model-path", report["final"]["model"], "--predictions-topic", pred_topic, "--eval-batch-size", "20",
              "--no-progress", "--log-level", "WARNING"]
    proc = subprocess.Popen([sys.executable, "-m", "ddp_kbit.main", *common, "--run-dir", str(tmp_path / "a")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and \
            sum(hi - lo for lo, hi in (kafka.partition_bounds(kcfg, pred_topic, range(2)).values()
                                       if pred_topic in kafka.topics(kcfg) else [])) == 0:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)   # mid-way (or just after it finished: either way, no duplicates below)
    proc.communicate()
    job = api.job_from(bootstrap_servers=kcfg.bootstrap_servers, test_topic=test.topic, run_dir=str(tmp_path / "b"),
                       model_path=report["final"]["model"], predictions_topic=pred_topic, progress=False, model="cnn")
    again = api.run_mode("evaluate", job)
    assert again["test_accuracy"] == pytest.approx(report["final"]["test_accuracy"], abs=1e-9)
    assert again["records"] == 600 and sum(c["support"] for c in again["per_class"].values()) == 600
    recs = kafka.read_topic(kcfg, pred_topic, headers=True)
    keys = sorted(int(r.key) for r in recs)
    assert keys == list(range(600))                                  # one per input, its own key, none twice
    value = json.loads(recs[0].value)
    assert set(value) == {"index", "label", "prediction", "probabilities"} and len(value["probabilities"]) == 10
    assert value["index"] == int(recs[0].key)
    assert dict(recs[0].headers)["ddp_kbit.model.spec"] == b"cnn"
    png = (tmp_path / "b" / "confusion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_inspect_reports_bad_records_a_png_and_a_sample_batch(kcfg, tmp_path):
    m = write_topic(kcfg, f"inspect.{time.time_ns()}", [150, 150], bad={4, 77, 200})
    r = subprocess.run([sys.executable, "-m", "ddp_kbit.main", "--mode", "inspect", "--topic", m.topic,
                        "--bootstrap-servers", kcfg.bootstrap_servers, "--run-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{m.topic}: 300 of 300 records read ([0] 150, [1] 150)" in r.stdout
    assert "bad: 3 malformed (e.g. [0]@4, [0]@77, [1]@50)" in r.stdout
    found = json.loads((tmp_path / "report.json").read_text())["findings"]
    assert found["good"] == 297 and sum(found["labels"].values()) == 297 and found["shape"] == [28, 28]
    png = (tmp_path / "samples.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    batch = torch.load(tmp_path / "sample_batch.pt", weights_only=True)
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (64, 28, 28)
    assert batch["labels"].dtype == torch.int64 and len(batch["labels"]) == 64
