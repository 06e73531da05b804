"""SparkSession from the shipped Spark settings (``spark_conf/``) and the TorchDistributor launch.

``local_mode=True`` runs the ranks as torchrun processes on the driver;
``--distributed`` runs them as a barrier stage on executors. A failed barrier
stage is not retried by Spark (spark.task.maxFailures=1); the driver restarts
from the newest checkpoint instead, up to --max-restarts.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from ddp_kbit import assets
from ddp_kbit.config import SparkConfig
from ddp_kbit.errors import ConfigError, UserError
from ddp_kbit.launch.cluster import auth_properties, read_secret, recorded_secret, write_private
from ddp_kbit.launch.spark_errors import known_failure, spark_line

log = logging.getLogger(__name__)
DISCOVERY_KEYS = ("spark.executor.resource.gpu.discoveryScript", "spark.driver.resource.gpu.discoveryScript")
RAPIDS_PLUGIN = "com.nvidia.spark.SQLPlugin"
RAPIDS_JAR = "rapids-4-spark"


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


def conf_file(cfg: SparkConfig, name: str) -> dict[str, str]:
    """A settings file of ``--spark-conf-dir``, else the shipped one."""
    if cfg.conf_dir:
        return read_conf(Path(cfg.conf_dir) / name)
    with assets.as_file(assets.SPARK_CONF, name) as path:
        return read_conf(path)


def script_path(cfg: SparkConfig, script: str) -> str:
    """A discovery script as a path Spark can run: absolute as given, else in
    ``--spark-conf-dir`` or the shipped folder (extracted, executable, when the
    package is a zip)."""
    if os.path.isabs(script):
        return script
    if cfg.conf_dir:
        return str(Path(cfg.conf_dir).resolve() / script)
    shipped = assets.folder(assets.SPARK_CONF).joinpath(Path(script).name)
    if isinstance(shipped, Path):
        return str(shipped)
    out = Path(tempfile.gettempdir()) / f"ddp_kbit-{Path(script).name}"
    out.write_bytes(shipped.read_bytes())
    out.chmod(0o755)
    return str(out)


def session_conf(cfg: SparkConfig) -> dict[str, str]:
    # Under spark-submit its --master/--conf/properties file rule; only our explicit flags apply.
    conf = {} if under_spark_submit() else conf_file(cfg, "spark-defaults.conf")
    if cfg.gpu or cfg.rapids:   # RAPIDS needs the GPUs scheduled too
        conf.update(conf_file(cfg, "gpu.conf"))
    if cfg.rapids:
        conf.update(conf_file(cfg, "rapids.conf"))
    for key in DISCOVERY_KEYS:
        if key in conf:
            conf[key] = script_path(cfg, conf[key])
    if cfg.master:
        conf["spark.master"] = cfg.master
    elif "spark.master" in conf and conf["spark.master"].startswith("local"):
        conf["spark.master"] = f"local[{max(cfg.num_processes, 2)}]"  # a slot per barrier task
    if cfg.gpu:
        gpu_scheduling(cfg, conf)
    # Spark re-checks a barrier stage's slots every interval, maxFailures times (default:
    # 40 x 15 s); bound it by our launch timeout, which the driver enforces as well.
    conf.setdefault("spark.scheduler.barrier.maxConcurrentTasksCheck.interval", "5s")
    conf.setdefault("spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures",
                    str(max(1, math.ceil(cfg.launch_timeout_s / 5))))
    for kv in cfg.conf:
        key, _, value = kv.partition("=")
        conf[key.strip()] = value.strip()
    if RAPIDS_PLUGIN in conf.get("spark.plugins", ""):
        check_rapids_jar(conf)
    return conf


def gpu_scheduling(cfg: SparkConfig, conf: dict[str, str]) -> None:
    """GPUs where the master can schedule them. ``local[N]``: the ranks are torchrun
    processes on the driver (local mode), one of the driver's GPUs each, so the
    driver needs ``num_processes`` of them; a barrier stage cannot be given GPUs
    there. ``local-cluster[...]``: its workers discover GPUs like a cluster's."""
    master = conf.get("spark.master", "")
    if master.startswith("local["):
        if cfg.distributed:
            raise ConfigError("--gpu --distributed needs a master whose workers schedule GPUs (standalone, YARN, "
                              "Kubernetes, or local-cluster[N,C,MB] on one machine); with local[N] leave out "
                              "--distributed: the ranks run on the driver, one GPU each")
        conf.setdefault("spark.driver.resource.gpu.amount", str(cfg.num_processes))
        conf["spark.driver.resource.gpu.amount"] = str(max(int(conf["spark.driver.resource.gpu.amount"]),
                                                           cfg.num_processes))
    elif master.startswith("local-cluster"):
        for key in ("amount", "discoveryScript"):
            conf.setdefault(f"spark.worker.resource.gpu.{key}", conf[f"spark.executor.resource.gpu.{key}"])


def check_rapids_jar(conf: dict[str, str], spark_home: str | None = None) -> None:
    """The RAPIDS plugin without its jar fails deep in the JVM at session start
    (ClassNotFoundException); say so first, in one line."""
    listed = [conf.get(k, "") for k in ("spark.jars", "spark.driver.extraClassPath", "spark.executor.extraClassPath")]
    if any(RAPIDS_JAR in part for part in ",".join(listed).replace(os.pathsep, ",").split(",")):
        return
    if RAPIDS_JAR in conf.get("spark.jars.packages", ""):
        return  # resolved by Spark from a repository at start-up
    jars = Path(spark_home or _spark_home()) / "jars"
    if any(jars.glob(f"{RAPIDS_JAR}*.jar")):
        return
    raise ConfigError(f"--rapids loads {RAPIDS_PLUGIN}, but no {RAPIDS_JAR}_<scala>-<version>.jar is on Spark's "
                      f"classpath (spark.jars, extraClassPath or {jars}); pass --spark-conf spark.jars=/path/to/"
                      f"{RAPIDS_JAR}_2.13-<version>.jar")


def _spark_home() -> str:
    if os.environ.get("SPARK_HOME"):
        return os.environ["SPARK_HOME"]
    import pyspark

    return str(Path(pyspark.__file__).parent)


def preflight(cfg: SparkConfig) -> None:
    """What can be checked before Spark (or Kafka) is touched, each in one line: the
    settings files, GPUs for a local master, a standalone master that answers."""
    from pyspark.sql import SparkSession

    if under_spark_submit() or SparkSession.getActiveSession() is not None:
        return   # the session exists: what it has is what there is
    conf = session_conf(cfg)
    master = conf.get("spark.master", "")
    if cfg.gpu and master.startswith("local["):
        have = discovered(conf.get("spark.driver.resource.gpu.discoveryScript"))
        if have < cfg.num_processes:
            raise ConfigError(f"--gpu: this machine has {have} GPU{'s' if have != 1 else ''}, {cfg.num_processes} "
                              f"processes need {cfg.num_processes}")
    if master.startswith("spark://"):
        for hostport in master.removeprefix("spark://").split(","):
            host, _, port = hostport.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=3).close()
            except (OSError, ValueError):
                raise UserError(f"cannot reach the Spark master {master} ({hostport} does not answer): is it "
                                "running, and is --master right?") from None


def discovered(script: str | None) -> int:
    """GPUs a Spark discovery script reports (what Spark would count)."""
    if not script:
        return 0
    try:
        out = subprocess.run([script], capture_output=True, text=True, timeout=30).stdout
        return len([a for a in json.loads(out).get("addresses", []) if str(a).strip()])
    except (OSError, ValueError, subprocess.TimeoutExpired, AttributeError):
        return 0


def on_loopback(master: str) -> bool:
    """A local master, or a standalone one on this machine's loopback address."""
    return master.startswith("local") or urlparse(master).hostname in ("127.0.0.1", "localhost")


LOG4J = "log4j2.properties"


def java_logging(cfg: SparkConfig, conf: dict[str, str], log_file: str | Path | None) -> None:
    """The driver JVM's logging (spark_conf/log4j2.properties): one line per warning on
    the terminal, everything in ``log_file``. Added to the extra Java options, so a
    user's own (``--spark-conf spark.driver.extraJavaOptions=...``) stay."""
    config = script_path(cfg, LOG4J) if cfg.conf_dir is None or (Path(cfg.conf_dir) / LOG4J).exists() else None
    if config is None or not Path(config).exists():
        return
    opts = [conf.get("spark.driver.extraJavaOptions", ""), f"-Dlog4j2.configurationFile={config}"]
    if log_file:
        opts.append(f"-Dddp_kbit.spark_log={log_file}")
    conf["spark.driver.extraJavaOptions"] = " ".join(o for o in opts if o)


def get_session(cfg: SparkConfig, log_file: str | Path | None = None):
    """The active session, or a new one from the shipped settings; ``log_file``: where
    a new session's JVM writes its whole log."""
    from pyspark.sql import SparkSession

    # Executors' Python must be ours (same venv, same ddp_kbit).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    active = SparkSession.getActiveSession()
    if active is not None:  # under spark-submit the session's conf comes from there
        return active
    conf = session_conf(cfg)
    java_logging(cfg, conf, log_file)
    if on_loopback(conf.get("spark.master", "")):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # no guessing at interfaces for a local run
        conf.setdefault("spark.driver.host", "127.0.0.1")
    builder = SparkSession.builder
    for k, v in conf.items():
        builder = builder.config(k, v)
    secret_file = cfg.secret_file or recorded_secret(conf.get("spark.master", ""))
    with authenticated(secret_file):
        spark = start_watched(builder, log_file)
    spark.sparkContext.setLogLevel("WARN")
    return spark


@contextlib.contextmanager
def authenticated(secret_file: str | None):
    """Spark's RPC authentication with the secret in ``secret_file`` for the JVM about
    to start: handed over in an owner-only properties file (``PYSPARK_SUBMIT_ARGS``),
    never on a command line, and deleted once the JVM has read it."""
    if not secret_file:
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="ddp_kbit-auth-"))
    props = write_private(folder / "auth.properties", auth_properties(read_secret(secret_file)))
    before = os.environ.get("PYSPARK_SUBMIT_ARGS")
    os.environ["PYSPARK_SUBMIT_ARGS"] = f"--properties-file {props} {before or 'pyspark-shell'}"
    try:
        yield
    finally:
        props.unlink(missing_ok=True)
        folder.rmdir()
        if before is None:
            os.environ.pop("PYSPARK_SUBMIT_ARGS", None)
        else:
            os.environ["PYSPARK_SUBMIT_ARGS"] = before


# fatal at start-up, known from the JVM's log long before Spark gives up (a master that
# refuses this driver is retried 3 x 20 s before SparkContext fails)
_FATAL_AT_START = ("Expected SaslMessage", "DIGEST-MD5", "SaslException")


def start_watched(builder, log_file: str | Path | None):
    """``builder.getOrCreate()``, one line on failure. With the JVM's log file, a
    failure the log shows first (RPC authentication refused) ends the start at once:
    the JVM is stopped and the line says why."""
    box: dict = {}

    def start():
        try:
            box["spark"] = builder.getOrCreate()
        except Exception as exc:   # noqa: BLE001 (reported by the caller's thread)
            box["error"] = exc

    worker = threading.Thread(target=start, daemon=True, name="spark-start")
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
        text = _read(log_file)
        if worker.is_alive() and any(k in text for k in _FATAL_AT_START):
            _stop_jvm()
            worker.join(15)
            raise UserError(f"Spark did not start: {known_failure(text)}")
    if "error" in box:   # a JVM failure: its exception line (or the log's known one), never a stack frame
        text = f"{box['error']}\n{_read(log_file)}"
        line = known_failure(text) or spark_line(str(box["error"]))
        if line is None:
            raise box["error"]
        raise UserError(f"Spark did not start: {line}") from None
    return box["spark"]


def _read(path) -> str:
    try:
        return Path(path).read_text(errors="replace") if path else ""
    except OSError:
        return ""


def _stop_jvm() -> None:
    from pyspark import SparkContext

    proc = getattr(SparkContext._gateway, "proc", None)
    if proc is not None:
        with contextlib.suppress(OSError):
            proc.kill()


def slots(sc) -> int:
    """Barrier tasks the cluster can run at once now (what Spark's own check counts)."""
    jsc = sc._jsc.sc()
    try:
        return int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))
    except Exception:  # an API this Spark does not have: executors x their cores
        return max(0, jsc.getExecutorMemoryStatus().size() - 1) or sc.defaultParallelism


def wait_for_slots(sc, wanted: int, timeout: float, at_least: int | None = None, settle: float = 5.0) -> int:
    """Wait until ``wanted`` slots are there and return the count. With ``at_least``
    (a restart, which may run on fewer ranks), take what there is once at least that
    many are there and the count had ``settle`` seconds for lost executors to drop out
    and returning ones to register. A barrier stage that cannot start is one clear
    error within ``timeout``, never an endless wait."""
    need, start = at_least or wanted, time.monotonic()
    while True:
        have = slots(sc)
        if have >= wanted or (have >= need and time.monotonic() - start >= settle):
            return min(have, wanted)
        if time.monotonic() - start > timeout:
            raise UserError(f"the barrier stage needs {need} task slot(s) but the cluster ({sc.master}) offers "
                            f"{have} after {timeout:.0f}s (--launch-timeout); add workers or pass fewer "
                            "--num-processes")
        time.sleep(0.5)


def available_ranks(cfg: SparkConfig) -> int:
    """How many ranks a restart can have now: up to the requested count, at least one."""
    return wait_for_slots(get_session(cfg).sparkContext, cfg.num_processes, cfg.launch_timeout_s, at_least=1)


def launch(cfg: SparkConfig, train_fn, spec, stop_file: str | None = None,
           log_path: str | None = None) -> tuple[dict, dict]:
    """Run ``train_fn(spec)`` on ``num_processes`` ranks; returns the result and where
    it ran (master, application id, Spark version, mode, the signal that stopped it)
    for the report. SIGINT/SIGTERM ask the ranks to stop gracefully (``stop_file``,
    which they watch; without one, the ranks cannot stop gracefully and the first
    signal stops them at once); a second one stops at once. The ranks' output goes to
    ``log_path`` whole, and to the terminal without tracebacks (:mod:`torchrun`)."""
    from pyspark.ml.torch.distributor import TorchDistributor

    from ddp_kbit.launch import torchrun

    launched_at = time.time()
    spark = get_session(cfg, Path(log_path).with_name("spark.log") if log_path else None)
    sc = spark.sparkContext
    where = {"master": sc.master, "app_id": sc.applicationId, "spark_version": spark.version,
             "mode": "barrier" if cfg.distributed else "local", "launched_at": launched_at}
    fn, args = (shipped(train_fn, spec) if cfg.ship_package else (train_fn, (spec,)))
    distributor = TorchDistributor(num_processes=cfg.num_processes, local_mode=not cfg.distributed,
                                   use_gpu=cfg.gpu)
    distributor.logger.setLevel(logging.WARNING)
    if cfg.distributed:
        wait_for_slots(sc, cfg.num_processes, cfg.launch_timeout_s)
    if cfg.ship_package:   # the runner travels too, by value
        from pyspark import cloudpickle

        cloudpickle.register_pickle_by_value(torchrun)
    runner = functools.partial(torchrun.run_ranks, log_path=log_path)
    with interrupts(stop_file, sc if cfg.distributed else None) as stopped:
        # pyspark's own path with our torchrun runner (its public run() takes none)
        result = distributor._run(fn, runner, *args) if hasattr(distributor, "_run") else distributor.run(fn, *args)
    return result, where | {"stopped_by": stopped.get("signal")}


@contextlib.contextmanager
def interrupts(stop_file: str | None, sc=None):
    """SIGINT or SIGTERM: write ``stop_file`` (the ranks finish their step, checkpoint
    and return) and note which. A second one stops at once: KeyboardInterrupt; in
    barrier mode (``sc``) the Spark job is cancelled first, from another thread (py4j
    is not reentrant: pyspark's own handler, which cancels from inside the signal
    handler, prints py4j tracebacks), with the JVM and our logs silenced."""
    if threading.current_thread() is not threading.main_thread():
        yield {}
        return
    state: dict = {}
    hard = threading.Event()

    def on_signal(signum, frame):
        if not state and stop_file is not None:
            state["signal"] = signal.Signals(signum).name
            Path(stop_file).parent.mkdir(parents=True, exist_ok=True)
            Path(stop_file).write_text(state["signal"])
            log.warning("%s: stopping after the current step, with a checkpoint; again to stop at once",
                        state["signal"])
        elif sc is None:
            raise KeyboardInterrupt
        elif not hard.is_set():
            hard.set()
            logging.disable(logging.CRITICAL)
            threading.Thread(target=_cancel_all, args=(sc,), daemon=True).start()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    except Exception:
        if hard.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if hard.is_set():
        raise KeyboardInterrupt


def shipped(fn, arg):
    """``fn(arg)`` as a call the ranks can make without ddp_kbit installed: a
    bootstrap pickled by value, the package zip, and ``arg`` pickled to bytes."""
    import pickle

    from pyspark import cloudpickle

    from ddp_kbit.launch import bootstrap, pack

    cloudpickle.register_pickle_by_value(bootstrap)
    return bootstrap.run_shipped, (pack.package_bytes(), fn.__module__, fn.__name__, pickle.dumps(arg))


def _cancel_all(sc) -> None:
    with contextlib.suppress(Exception):
        sc.setLogLevel("OFF")
        sc.cancelAllJobs()


@contextlib.contextmanager
def session_scope():
    """A Spark session that is active on entry (spark-submit's, a notebook's, a test
    fixture's) is used and left running; one started inside is stopped on exit."""
    from pyspark.sql import SparkSession

    had = SparkSession.getActiveSession() is not None
    try:
        yield
    finally:
        if not had:
            stop_session()


def stop_session() -> None:
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    if spark is not None:
        spark.stop()
