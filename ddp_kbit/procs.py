"""Child processes this package starts (the embedded broker, Spark's JVMs): a free
port to give them, dying with their parent, and stopping a whole process group."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """For ``preexec_fn`` (runs in the child between fork and exec): the kernel
    sends ``sig`` when the parent dies, so a killed trainer leaves no child behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except OSError:
        pass


def exit_with_parent(poll_s: float = 0.5) -> None:
    """For a rank under torchrun: when torchrun is gone (pyspark's wrapper SIGKILLs it
    0.5 s after a cancelled Spark task), this process ends at once. A rank only stops
    gracefully when its torchrun asks; an orphan would keep its ports, collectives and
    checkpoint writes while the restarted attempt starts. A thread, not
    ``PR_SET_PDEATHSIG``: that fires when the parent's *thread* that forked exits."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def own_group(with_parent: int | None = None) -> Callable[[], None]:
    """A ``preexec_fn``: the child leads a process group of its own (stopping the group
    stops what it started), and gets ``with_parent`` when the parent dies, if given."""
    def setup() -> None:
        os.setsid()
        if with_parent is not None:
            die_with_parent(with_parent)
    return setup


def kill_group(pid: int, sig: int) -> None:
    """Signal the process group ``pid`` leads; gone already is fine."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
