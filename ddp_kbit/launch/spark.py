"""SparkSession from spark_conf/ and the TorchDistributor launch.

``local_mode=True`` runs the ranks as torchrun processes on the driver;
``--distributed`` runs them as a barrier stage on executors. A failed barrier
stage is not retried by Spark (spark.task.maxFailures=1); the driver restarts
from the newest checkpoint instead, up to --max-restarts.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from ddp_kbit.config import SparkConfig

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parents[2] / "spark_conf"


def read_conf(path: Path) -> dict[str, str]:
    """A spark-defaults.conf, read as Spark reads it (``java.util.Properties``):
    ``key value``, ``key=value`` or ``key: value``; ``#``/``!`` comments; a trailing
    backslash continues a line; ``\\t``-style and ``\\uXXXX`` escapes; values trimmed."""
    out = {}
    for line in _logical_lines(path.read_text(encoding="utf-8")):
        key, value = _split_property(line)
        out[key] = value.strip()
    return out


def _logical_lines(text: str):
    pending = ""
    for raw in text.splitlines():
        line = raw.lstrip()  # continuation lines lose their leading white space too
        if not pending and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:  # an odd number of backslashes: the line goes on
            pending += line[:-1]
            continue
        pending += line
        if pending:
            yield pending
        pending = ""
    if pending:
        yield pending


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _split_property(line: str) -> tuple[str, str]:
    key, i = _scan(line, 0, "=: \t\f")
    while i < len(line) and line[i] in " \t\f":
        i += 1
    if i < len(line) and line[i] in "=:":
        i += 1
    value, _ = _scan(line, i, "")
    return key, value.lstrip(" \t\f")


def _scan(line: str, i: int, stop: str) -> tuple[str, int]:
    """Characters from ``i`` up to an unescaped one in ``stop`` (or the end), unescaped."""
    out = []
    while i < len(line) and line[i] not in stop:
        if line[i] == "\\" and i + 1 < len(line):
            ch, i = _unescape(line, i)
        else:
            ch, i = line[i], i + 1
        out.append(ch)
    return "".join(out), i


def _unescape(line: str, i: int) -> tuple[str, int]:
    """The character escaped at ``line[i] == '\\'`` and the index after it."""
    ch = line[i + 1]
    if ch == "u" and i + 6 <= len(line):
        return chr(int(line[i + 2:i + 6], 16)), i + 6
    return _ESCAPES.get(ch, ch), i + 2


def under_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands Python its gateway."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def session_conf(cfg: SparkConfig) -> dict[str, str]:
    conf_dir = Path(cfg.conf_dir) if cfg.conf_dir else CONF_DIR
    # Under spark-submit its --master/--conf/properties file rule; only our explicit flags apply.
    conf = {} if under_spark_submit() else read_conf(conf_dir / "spark-defaults.conf")
    if cfg.gpu:
        conf.update(read_conf(conf_dir / "rapids.conf"))
        script = conf.get("spark.executor.resource.gpu.discoveryScript", "")
        if script and not os.path.isabs(script):
            for key in ("spark.executor.resource.gpu.discoveryScript", "spark.driver.resource.gpu.discoveryScript"):
                conf[key] = str(conf_dir.parent / script)
    if cfg.master:
        conf["spark.master"] = cfg.master
    elif "spark.master" in conf and conf["spark.master"].startswith("local"):
        conf["spark.master"] = f"local[{max(cfg.num_processes, 2)}]"  # a slot per barrier task
    for kv in cfg.conf:
        key, _, value = kv.partition("=")
        conf[key.strip()] = value.strip()
    return conf


def get_session(cfg: SparkConfig):
    from pyspark.sql import SparkSession

    # Executors' Python must be ours (same venv, same ddp_kbit).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    active = SparkSession.getActiveSession()
    if active is not None:  # under spark-submit the session's conf comes from there
        return active
    conf = session_conf(cfg)
    if conf.get("spark.master", "").startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # no guessing at interfaces for a local run
    builder = SparkSession.builder
    for k, v in conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def launch(cfg: SparkConfig, train_fn, spec) -> tuple[dict, dict]:
    """Run ``train_fn(spec)`` on ``num_processes`` ranks; returns rank 0's result
    and where it ran (master, application id, Spark version) for the report."""
    from pyspark.ml.torch.distributor import TorchDistributor

    spark = get_session(cfg)
    sc = spark.sparkContext
    where = {"master": sc.master, "app_id": sc.applicationId, "spark_version": spark.version,
             "mode": "barrier" if cfg.distributed else "local"}
    distributor = TorchDistributor(num_processes=cfg.num_processes, local_mode=not cfg.distributed,
                                   use_gpu=cfg.gpu)
    distributor.logger.setLevel(logging.WARNING)
    if not cfg.distributed:  # local mode: Ctrl-C raises at once and the torchrun child is terminated
        return distributor.run(train_fn, spec), where
    with cancel_on_interrupt(sc):
        return distributor.run(train_fn, spec), where


@contextlib.contextmanager
def cancel_on_interrupt(sc):
    """Ctrl-C while a Spark job runs: cancel the job from another thread (py4j is not
    reentrant, so pyspark's own handler, which cancels from inside the signal handler,
    prints py4j tracebacks), silence the JVM and our logs, and raise KeyboardInterrupt
    once the job is gone. A second Ctrl-C raises at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = threading.Event()

    def on_sigint(signum, frame):
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        logging.disable(logging.CRITICAL)
        threading.Thread(target=_cancel_all, args=(sc,), daemon=True).start()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    except Exception:
        if interrupted.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
        raise KeyboardInterrupt


def _cancel_all(sc) -> None:
    with contextlib.suppress(Exception):
        sc.setLogLevel("OFF")
        sc.cancelAllJobs()


def stop_session() -> None:
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    if spark is not None:
        spark.stop()
