"""Files a run leaves behind: the run directory, atomic JSON reports, and the lock
of a directory that belongs to one run at a time."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

from ddp_kbit.errors import UserError

log = logging.getLogger(__name__)


def make_run_dir(run_dir: str | Path | None, base: str | Path = "runs") -> Path:
    """The run's directory, created, as an absolute path: ranks on Spark executors
    start in their own working directories, so a relative path would point elsewhere."""
    path = Path(run_dir) if run_dir else Path(base) / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | Path, obj) -> Path:
    """Atomic and durable: a reader never sees half a report, a crash never leaves one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(obj, indent=2, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


class DirectoryLock:
    """One run at a time in a directory (a checkpoint directory): ``.lock`` names its
    holder (pid, host, since) and is refreshed every ``beat_s`` seconds while held. A
    second run is refused in one line naming the holder; a stale lock (its holder gone
    from this host, or silent for ``stale_s`` on another) is taken over with a warning."""

    NAME = ".lock"

    def __init__(self, directory: str | Path, beat_s: float = 30.0, stale_s: float = 300.0):
        self.path = Path(directory) / self.NAME
        self.beat_s, self.stale_s = beat_s, stale_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DirectoryLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if not self._stale(holder):
                    raise UserError(f"{self.path.parent} is in use by another run ({_describe(holder)}); wait for "
                                    "it to end, or choose another --checkpoint-dir") from None
                log.warning("taking over the stale lock of %s (%s)", self.path.parent, _describe(holder))
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, fh)
            self._thread = threading.Thread(target=self._beat, daemon=True, name="lock-heartbeat")
            self._thread.start()
            return self
        raise UserError(f"{self.path.parent} is in use by another run (its lock came back while being taken over)")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._holder().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_s):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
            return {**holder, "mtime": self.path.stat().st_mtime} if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def _stale(self, holder: dict) -> bool:
        if not holder:   # unreadable: half-written by a holder that died at once, or gone
            return not self.path.exists() or time.time() - self.path.stat().st_mtime > 5
        if holder.get("host") == socket.gethostname():
            return not _alive(int(holder.get("pid", -1)))
        return time.time() - holder.get("mtime", 0) > self.stale_s


def _alive(pid: int) -> bool:
    """A process of this host that exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    return True


def _describe(holder: dict) -> str:
    if not holder:
        return "its lock file is unreadable"
    since = datetime.fromtimestamp(holder.get("since", 0)).strftime("%Y-%m-%d %H:%M:%S")
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {since}"
