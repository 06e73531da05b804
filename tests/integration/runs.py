"""Helpers the integration tests share: write a topic with a plain producer, train
through the Python API in this process (the shared Spark session) or through the
CLI as a user would, and check that epochs are exact."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ddp_kbit import kafka
from ddp_kbit.data import manifest
from ddp_kbit.data.local_datasets import load_dataset
from ddp_kbit.wire import get_codec

import chaos

ROOT = Path(__file__).resolve().parents[2]


def write_topic(kcfg, topic: str, counts: list[int], bad: set = frozenset(), fmt: str = "protobuf"):
    """Partition p gets counts[p] Fashion-MNIST samples (some replaced by garbage), plus a manifest."""
    ds = load_dataset("fashion-mnist", "train", limit=sum(counts))
    with kafka.make_admin(kcfg) as admin:
        admin.create_topic(topic, len(counts))
    codec, i = get_codec(fmt), 0
    with kafka.make_producer(kcfg) as producer:
        for p, n in enumerate(counts):
            for _ in range(n):
                value = b"\x07not a sample" if i in bad else codec.encode_array(i, int(ds.labels[i]), ds.images[i])
                producer.send(topic, value, key=str(i).encode(), partition=p, headers=codec.headers)
                i += 1
        assert producer.flush(30) == 0
        ranges = {p: tuple(r) for (t, p), r in producer.report.ranges.items()}
    m = manifest.Manifest(topic=topic, dataset="fashion-mnist", split="train", format=fmt, layout="bytes",
                          num_samples=sum(counts), shape=(28, 28), dtype="uint8", num_classes=10,
                          class_names=None, partitions=ranges)
    manifest.write(kcfg, m)
    return m


# The tests' small recipe: a few thousand records and 1-2 epochs are too few steps for the
# default one-cycle schedule's warm-up; correctness, not accuracy, is under test.
SMALL = {"model": "cnn", "lr_schedule": "cosine", "lr": 1e-3, "label_smoothing": 0.0}
SMALL_FLAGS = ["--model", "cnn", "--lr-schedule", "cosine", "--lr", "0.001", "--label-smoothing", "0"]


def fit(kcfg, run_dir, *, crash_at=None, kill_at=None, stop_at=None, fault_rank=None, **fields):
    """``ddp_kbit.fit`` in this process, on the shared Spark session (request the
    ``spark`` fixture), with the CLI helper's small defaults; the report.
    ``crash_at``/``kill_at``/``stop_at``: raise on rank 0 / SIGKILL / SIGSTOP
    ``fault_rank`` (default 1) at that global step."""
    import ddp_kbit

    fields = {"bootstrap_servers": kcfg.bootstrap_servers, "batch_size": 64, "eval_batch_size": 200,
              "progress": False, "run_dir": str(run_dir), "log_level": "WARNING", **SMALL, **fields}
    for step, action, rank in ((crash_at, "raise", 0), (kill_at, "kill", 1), (stop_at, "stop", 1)):
        if step is not None:
            handler = chaos.arm(run_dir, step, action, rank if fault_rank is None else fault_rank)
            fields["handlers"] = [*fields.get("handlers", ()), handler]
    return ddp_kbit.fit(**fields)


def train(kcfg, tmp_path, *args, expect_rc=0, timeout=600, crash_at=None, kill_at=None, kill_rank=1, env=None):
    """The CLI as a user runs it (no --format: the manifests say what the topics hold).
    ``crash_at``: rank 0 raises at that global step; ``kill_at``: ``kill_rank`` is SIGKILLed."""
    cmd = [sys.executable, "-m", "ddp_kbit.main", "--mode", "train", "--bootstrap-servers", kcfg.bootstrap_servers,
           "--batch-size", "64", "--eval-batch-size", "200", "--no-progress",
           "--run-dir", str(tmp_path), "--log-level", "WARNING", *SMALL_FLAGS, *args]
    if crash_at is not None:
        cmd += ["--handler", chaos.arm(tmp_path, crash_at, "raise", 0)]
    if kill_at is not None:
        cmd += ["--handler", chaos.arm(tmp_path, kill_at, "kill", kill_rank)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == expect_rc, r.stdout[-3000:] + r.stderr[-5000:]
    if expect_rc:
        return r
    return json.loads((tmp_path / "report.json").read_text())


TEARDOWN_ABORT = "terminate called without an active exception"


def torchrun(procs: int, *args, expect_rc=0, done=None, cwd=None, env=None, timeout=300):
    """A user's script under ``torchrun --standalone``. ``done(result)``: whether every
    rank recorded its finished work; then a rank's SIGABRT with ``TEARDOWN_ABORT`` in
    torch's teardown at interpreter exit (seen twice under CI load in user loops,
    never in 30 runs here, quiet or loaded) does not fail the run: what the test
    checks was already written."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
           *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    ok = r.returncode == 0
    if not ok and expect_rc == 0 and done is not None and TEARDOWN_ABORT in r.stdout + r.stderr and done(r):
        ok = True
    assert ok == (expect_rc == 0), r.stdout[-2000:] + r.stderr[-4000:]
    return r


def assert_exact_epochs(report, m: manifest.Manifest, bad: int = 0):
    """Each epoch's consumed ranges tile the manifest: every offset exactly once,
    and every valid record went into a step exactly once."""
    for e in report["epochs"]:
        seen = {}
        for c in e["consumed"]:
            assert c["topic"] == m.topic
            seen.setdefault(c["partition"], []).append((c["start"], c["end"]))
        assert sorted(seen) == sorted(m.partitions)
        for p, (start, end) in m.partitions.items():
            ivs = sorted(seen[p])
            assert ivs[0][0] == start and ivs[-1][1] == end
            assert all(a[1] == b[0] for a, b in zip(ivs, ivs[1:])), f"gap or overlap in partition {p}: {ivs}"
        assert sum(c["count"] for c in e["consumed"]) == e["samples"] == m.record_count - bad
        assert e["bad_records"] == bad and e["missing_records"] == 0


def spark_submit(kcfg, master: str, tmp_path, *args) -> dict:
    """`spark-submit --master M ddp_kbit/main.py --mode train --distributed ...` as a user
    with an activated venv runs it (Spark and Python found on PATH); the report."""
    submit = Path(sys.executable).parent / "spark-submit"
    cmd = [str(submit), "--master", master, str(ROOT / "ddp_kbit" / "main.py"), "--mode", "train", "--distributed",
           "--bootstrap-servers", kcfg.bootstrap_servers, "--epochs", "1", "--num-processes", "2", "--batch-size",
           "64", "--no-progress", "--run-dir", str(tmp_path), "--log-level", "WARNING", *SMALL_FLAGS, *args]
    env = {**os.environ, "PATH": f"{submit.parent}{os.pathsep}{os.environ['PATH']}", "PYSPARK_PYTHON": sys.executable}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return json.loads((Path(tmp_path) / "report.json").read_text())


def started_training(run_dir, timeout: float = 180) -> bool:
    """A rank has taken steps: its heartbeat (the pid file's mtime) moved after it appeared."""
    first: dict = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in run_dir.glob("rank*.pid"):
            try:
                mtime = f.stat().st_mtime
            except FileNotFoundError:
                continue
            if mtime > first.setdefault(f.name, mtime):
                return True
        time.sleep(0.2)
    return False
