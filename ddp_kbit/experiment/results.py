"""A study's files: ``results.csv`` grows a row per condition x iteration as each
is measured (a killed study keeps what it measured), and the environment the
numbers were taken in."""
from __future__ import annotations

import csv
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from ddp_kbit.experiment.grid import COLUMNS, Condition

FIELDS = (*COLUMNS, "iteration", "warmup", "records", "seconds", "records_per_s", "mb_per_s", "bytes_per_record",
          "data_wait_fraction", "test_accuracy", "rank_records_per_s", "error")


def append_row(path: str | Path, cond: Condition, iteration: int, warmup: bool, values: dict) -> dict:
    """One measured (or failed) iteration, written and synced at once."""
    row = {**cond.as_row(), "iteration": iteration, "warmup": warmup, "error": "", **values}
    path = Path(path)
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(row.get(k)) for k in FIELDS})
        fh.flush()
        os.fsync(fh.fileno())
    return row


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The checkout's commit when the package runs from one (an installed package has none)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (out.stdout.strip() + ("+dirty" if dirty else "")) if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment(broker: str, servers: str) -> dict:
    import torch

    try:
        import confluent_kafka

        librdkafka = confluent_kafka.libversion()[0]
    except ImportError:
        librdkafka = None
    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "versions": {name: _version(name) for name in ("torch", "pyspark", "pytorch-ignite", "confluent-kafka",
                                                       "kafka-python", "fastavro", "protobuf", "pymongo", "numpy",
                                                       "pandas", "scipy")} | {"librdkafka": librdkafka},
        "cpu_count": os.cpu_count(), "cpu_model": _cpu_model(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "broker": {"kind": broker, "bootstrap_servers": servers}, "git_commit": _git_commit(),
    }
