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
from ddp_kbit.data.datasets import load_dataset
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
