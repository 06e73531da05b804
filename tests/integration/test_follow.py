"""Continuous training on a live topic: a producer thread writes at ~1,000 records/s
while --follow trains; windows close, every record produced up to the stop is
trained exactly once (the union of the windows' ranges is [start, end) of every
partition, no overlap), lag is reported; a killed rank restarts exactly; SIGTERM
stops cleanly with a checkpoint and a snapshot, and --resume goes on; --start-at
a time starts at the right offsets."""
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from ddp_kbit import kafka
from ddp_kbit.config import PublishConfig
from ddp_kbit.data import manifest
from ddp_kbit.data.local_datasets import load_dataset
from ddp_kbit.data.publish import publish
from ddp_kbit.wire import get_codec

from runs import fit

pytestmark = pytest.mark.slow
PARTS = 2


@pytest.fixture(scope="module")
def fm():
    return load_dataset("fashion-mnist", "train", limit=6000)


@pytest.fixture(scope="module")
def test_topic(kcfg):
    return publish(kcfg, PublishConfig(split="test", topic=f"follow.test.{time.time_ns()}", partitions=2),
                   load_dataset("fashion-mnist", "test", limit=500), progress=False).manifest


def seeded_topic(kcfg, fm, n: int) -> str:
    """A topic with ``n`` records and a manifest (the sample type), as a first publish leaves it."""
    topic = f"live.{time.time_ns()}"
    publish(kcfg, PublishConfig(topic=topic, partitions=PARTS), load_dataset("fashion-mnist", "train", limit=n),
            progress=False)
    return topic


class LiveProducer(threading.Thread):
    """A plain producer writing ``count`` records at ``rate`` records/s."""

    def __init__(self, kcfg, topic, fm, start: int, count: int, rate: float):
        super().__init__(daemon=True)
        self.args = (kcfg, topic, fm, start, count, rate)

    def run(self):
        kcfg, topic, fm, start, count, rate = self.args
        codec, p, t0 = get_codec("avro"), Producer({"bootstrap.servers": kcfg.bootstrap_servers}), time.time()
        for j in range(count):
            i = start + j
            time.sleep(max(0.0, t0 + j / rate - time.time()))
            p.produce(topic, value=codec.encode_array(i, int(fm.labels[i % len(fm)]), fm.images[i % len(fm)]),
                      key=str(i).encode(), partition=i % PARTS, headers=codec.headers)
            p.poll(0)
        assert p.flush(30) == 0


def assert_exact_windows(report, kcfg, topic):
    """The windows' new ranges tile [start, high watermark) of every partition, once."""
    ends = kafka.partition_bounds(kcfg, topic, range(PARTS))
    seen = {}
    for w in report["windows"]:
        assert w["new_records"] > 0 and w["samples"] >= w["new_records"] - w["bad_records"]   # never empty
        for c in w["consumed"]:
            seen.setdefault(c["partition"], []).append((c["start"], c["end"]))
    start = {int(p): o for p, o in report["follow"]["start"].items()}
    for p in range(PARTS):
        ivs = sorted(seen.get(p, []))
        assert ivs[0][0] == start[p] and ivs[-1][1] == ends[p][1], (p, ivs[:3], ivs[-3:], ends[p])
        assert all(a[1] == b[0] for a, b in zip(ivs, ivs[1:])), f"gap or overlap in partition {p}"
    assert sum(w["new_records"] for w in report["windows"]) == sum(hi - start[p] for p, (_, hi) in ends.items())


@pytest.mark.parametrize("distributed", [False, True])
def test_follow_trains_every_record_of_a_live_topic_once(kcfg, spark, fm, test_topic, tmp_path, distributed):
    topic = seeded_topic(kcfg, fm, 1000)
    producer = LiveProducer(kcfg, topic, fm, 1000, 3000, rate=1000)
    producer.start()
    report = fit(kcfg, tmp_path, train_topic=topic, test_topic=test_topic.topic, num_processes=2,
                 distributed=distributed, follow=True, window_records=1000, window_seconds=2, until_idle=6,
                 replay_fraction=0.2, publish_model=str(tmp_path / "models"))
    producer.join()
    assert len(report["windows"]) >= 3
    assert_exact_windows(report, kcfg, topic)
    last = report["windows"][-1]
    assert last["lag"]["records_behind_at_end"] == {"0": 0, "1": 0}       # caught up once the producer stopped
    assert all(w["lag"]["seconds_behind"] is not None for w in report["windows"])
    assert all(w["replayed_records"] > 0 for w in report["windows"][1:])   # rehearsal from the second window on
    assert all(0 <= w["prequential_accuracy"] <= 1 for w in report["windows"]) and last["val_accuracy"] > 0.3
    latest = json.loads((tmp_path / "models" / "latest.json").read_text())
    assert latest["window"] == len(report["windows"]) and Path(latest["path"]).exists()
    assert latest["offsets"] == {str(p): hi for p, (_, hi) in kafka.partition_bounds(kcfg, topic, range(PARTS)).items()}


def test_a_killed_rank_mid_window_restarts_exactly(kcfg, spark, fm, test_topic, tmp_path):
    topic = seeded_topic(kcfg, fm, 3000)
    report = fit(kcfg, tmp_path, train_topic=topic, test_topic=test_topic.topic, num_processes=2, follow=True,
                 window_records=1200, window_seconds=1, until_idle=3, checkpoint_every=4, max_restarts=1, kill_at=14)
    assert report["restarts"] == 1
    assert_exact_windows(report, kcfg, topic)


def test_sigterm_stops_cleanly_then_resume_goes_on(kcfg, fm, test_topic, tmp_path):
    topic = seeded_topic(kcfg, fm, 2000)
    producer = LiveProducer(kcfg, topic, fm, 2000, 4000, rate=400)
    producer.start()
    ckpt, models = tmp_path / "ckpt", tmp_path / "models"
    common = ["--bootstrap-servers", kcfg.bootstrap_servers, "--train-topic", topic, "--test-topic",
              test_topic.topic, "--num-processes", "2", "--batch-size", "64", "--follow", "--window-records", "800",
              "--window-seconds", "2", "--checkpoint-dir", str(ckpt), "--publish-model", str(models),
              "--no-progress", "--log-level", "WARNING"]
    proc = subprocess.Popen([sys.executable, "-m", "ddp_kbit.main", *common, "--run-dir", str(tmp_path / "a")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (models / "latest.json").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (models / "latest.json").exists(), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert re.fullmatch(r"ddp-kbit: stopped by SIGTERM after (step \d+ of )?window \d+; `--resume` continues",
                        err.strip().splitlines()[-1]), err[-3000:]
    first = json.loads((tmp_path / "a" / "report.json").read_text())
    assert first["spark"]["stopped_by"] == "SIGTERM" and first["follow"]["stopped"] and sorted(ckpt.glob("ckpt-*.pt"))
    producer.join()
    r = subprocess.run([sys.executable, "-m", "ddp_kbit.main", *common, "--resume", "--until-idle", "4",
                        "--run-dir", str(tmp_path / "b")], capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["windows"][:len(first["windows"])] == first["windows"]   # the lineage goes on from the checkpoint
    assert_exact_windows(report, kcfg, topic)


def test_start_at_a_time_starts_at_the_right_offsets(kcfg, spark, fm, test_topic, tmp_path):
    topic = seeded_topic(kcfg, fm, 600)
    time.sleep(1.5)
    cut = time.time()
    time.sleep(1.5)
    LiveProducer(kcfg, topic, fm, 600, 400, rate=2000).run()   # 200 more records per partition, after the cut
    from datetime import UTC, datetime

    report = fit(kcfg, tmp_path, train_topic=topic, test_topic=test_topic.topic, num_processes=1, follow=True,
                 start_at=datetime.fromtimestamp(cut, UTC).isoformat(), window_records=1000, window_seconds=1,
                 until_idle=2)
    assert report["follow"]["start"] == {"0": 300, "1": 300}
    assert sum(w["new_records"] for w in report["windows"]) == 400
    assert manifest.resolve(kcfg, topic).partitions == {0: (0, 300), 1: (0, 300)}
