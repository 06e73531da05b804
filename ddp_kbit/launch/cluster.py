"""A real Spark standalone cluster on this machine, from the installed pyspark
(no download): a master and N workers, each its own JVM, bound to 127.0.0.1 on
free ports with their own work directories.

    with StandaloneCluster(workers=2) as cluster:     # tests, local trials
        cluster.master_url                             # spark://127.0.0.1:PORT

With a secret file the daemons require Spark's RPC authentication (``spark.authenticate``):
a driver without the secret is refused. It is ready when the master lists every worker ALIVE; it stops by process group
(the workers' executor JVMs included), on exit and, unless ``detach``, also when
the process that started it dies (PR_SET_PDEATHSIG). ``python -m ddp_kbit.main_cluster
up|down|status`` runs one for trying cluster mode from the command line.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from ddp_kbit.errors import UserError
from ddp_kbit.procs import free_port, kill_group, own_group


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


STATE = Path.home() / ".ddp_kbit" / "cluster.json"   # what `main_cluster up` started, for status, down and runs


def recorded_secret(master_url: str, state: Path = STATE) -> str | None:
    """The secret file of the cluster `main_cluster up` recorded, if its master is ``master_url``."""
    try:
        info = json.loads(state.read_text())
    except (OSError, ValueError):
        return None
    return info.get("secret_file") if info.get("master_url") == master_url else None


def read_secret(path: str | Path) -> str:
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise UserError(f"cannot read --spark-secret-file {path}: {exc.strerror}") from None
    if not secret:
        raise UserError(f"--spark-secret-file {path} is empty")
    return secret


def write_private(path: Path, text: str) -> Path:
    """A file only its owner can read, created so (never readable by others for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def auth_properties(secret: str) -> str:
    """Spark settings that turn on RPC authentication with ``secret`` (a properties file's text)."""
    return f"spark.authenticate true\nspark.authenticate.secret {secret}\n"


MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def master_args(host: str, port: int = 7077, webui_port: int = 8080) -> list[str]:
    """spark-class arguments of a master (docker-compose.yml uses the same)."""
    return [MASTER_CLASS, "--host", host, "--port", str(port), "--webui-port", str(webui_port)]


def worker_args(master_url: str, cores: int, memory: str, work_dir: str | None = None, host: str | None = None,
                webui_port: int | None = None) -> list[str]:
    """spark-class arguments of a worker (docker-compose.yml uses the same)."""
    args = [WORKER_CLASS, master_url, "--cores", str(cores), "--memory", memory]
    for flag, value in (("--work-dir", work_dir), ("--host", host), ("--webui-port", webui_port)):
        if value is not None:
            args += [flag, str(value)]
    return args


class StandaloneCluster:
    def __init__(self, workers: int = 2, cores: int = 1, memory: str = "1g", work_dir: str | Path | None = None,
                 host: str = "127.0.0.1", detach: bool = False, env: dict | None = None, start_timeout: float = 90,
                 secret_file: str | Path | None = None):
        """``secret_file``: RPC authentication (spark.authenticate) with the secret it holds;
        drivers must then have it too (``--spark-secret-file``)."""
        self.workers, self.cores, self.memory, self.host = workers, cores, memory, host
        self.secret_file = secret_file
        self.work_dir = Path(work_dir or f"/tmp/ddp_kbit-cluster-{os.getpid()}").resolve()
        self.detach, self.env, self.start_timeout = detach, env, start_timeout
        self.master_port, self.webui_port = free_port(host), free_port(host)
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def master_url(self) -> str:
        return f"spark://{self.host}:{self.master_port}"

    @property
    def webui(self) -> str:
        return f"http://{self.host}:{self.webui_port}"

    @property
    def auth_conf(self) -> Path:
        """The daemons' settings file when authentication is on (owner-only; removed by stop)."""
        return self.work_dir / "auth.properties"

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        env = {**os.environ, **(self.env or {}), "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": self.host,
               "SPARK_LOG_DIR": str(self.work_dir / "logs"), "SPARK_NO_DAEMONIZE": "1"}
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.secret_file is not None:
            if not self.auth_conf.exists():
                write_private(self.auth_conf, auth_properties(read_secret(self.secret_file)))
            args = (*args, "--properties-file", str(self.auth_conf))
        log = open(self.work_dir / f"{name}.log", "ab")  # noqa: SIM115 (the JVM writes it while it runs)
        proc = subprocess.Popen([str(spark_home() / "bin" / "spark-class"), *args], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=own_group(None if self.detach else signal.SIGKILL))
        log.close()
        self.procs[name] = proc
        return proc

    def start(self) -> StandaloneCluster:
        try:
            self._spawn("master", *master_args(self.host, self.master_port, self.webui_port))
            for i in range(self.workers):
                self.start_worker(i)
            self.wait_alive(self.workers)
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(self, i: int) -> None:
        wdir = self.work_dir / f"worker{i}"
        wdir.mkdir(parents=True, exist_ok=True)
        self._spawn(f"worker{i}", *worker_args(self.master_url, self.cores, self.memory, str(wdir), self.host,
                                               free_port(self.host)))

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.webui}/json/", timeout=2) as r:
            return json.loads(r.read())

    def alive_workers(self) -> int:
        try:
            return sum(1 for w in self.state().get("workers", []) if w.get("state") == "ALIVE")
        except (OSError, ValueError):
            return 0

    def wait_alive(self, n: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        while self.alive_workers() < n:
            dead = [k for k, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise UserError(f"standalone cluster: {', '.join(dead)} exited; see {self.work_dir}/*.log")
            if time.monotonic() > deadline:
                raise UserError(f"standalone cluster: {self.alive_workers()} of {n} workers ALIVE after "
                                f"{self.start_timeout:.0f}s; see {self.work_dir}/*.log")
            time.sleep(0.5)

    def pids(self) -> dict[str, int]:
        return {k: p.pid for k, p in self.procs.items()}

    def stop(self, timeout: float = 10.0) -> None:
        for name in sorted(self.procs, reverse=True):   # workers (and their executors) before the master
            proc = self.procs[name]
            kill_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
            kill_group(proc.pid, signal.SIGKILL)   # anything its group left behind
        self.procs.clear()
        self.auth_conf.unlink(missing_ok=True)

    def __enter__(self) -> StandaloneCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

