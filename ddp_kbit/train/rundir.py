"""The files by which a run's driver and its ranks talk, and their one owner. This
module owns every name and both sides (ranks write, the driver reads):

In the run directory (what happened to each rank; TorchDistributor's own error only
says "see the logs", and a rank killed outright, or stopped, says nothing at all):

    rank<N>.pid          "<pid> <host>" while the rank runs (removed when it finishes);
                         its modification time is the rank's last sign of progress
    failure.rank<N>.txt  the rank's own one-line reason, on a Python error (a second line
                         when no restart can help)
    stalled.rank<N>.txt  written by a rank whose collective failed, about peer N: alive
                         (or at least silent) but no progress for the collective timeout
    ranks.log            every line the ranks printed (torchrun's output), tracebacks included

In the checkpoint directory (shared storage on a cluster, so executors see it):

    stop                 a graceful stop asked (the driver writes the signal's name; a user
                         may create it): ranks finish the step, checkpoint and return
    metrics.rank<N>      "<host>:<port>" of rank N's Prometheus endpoint (--metrics-port)
    metrics.rank<N>.last its last values, once it is gone (the driver still serves them)
"""
import contextlib
import os
import socket
import time
from pathlib import Path

_PID, _FAILURE, _STALLED = "rank{}.pid", "failure.rank{}.txt", "stalled.rank{}.txt"
_FINAL = "final: no restart can help"
_STATES = {"T": "stopped", "t": "stopped by a debugger", "D": "in uninterruptible I/O", "Z": "a zombie",
           "R": "running", "S": "sleeping"}


# ------------------------------------------------------------------ rank side
def started(run_dir: str | Path, rank: int) -> None:
    with contextlib.suppress(OSError):
        (Path(run_dir) / _PID.format(rank)).write_text(f"{os.getpid()} {socket.gethostname()}")


def beat(run_dir: str | Path, rank: int) -> None:
    """A sign of progress (the pid file's mtime); cheap enough for every second."""
    with contextlib.suppress(OSError):
        os.utime(Path(run_dir) / _PID.format(rank))


def finished(run_dir: str | Path, rank: int) -> None:
    (Path(run_dir) / _PID.format(rank)).unlink(missing_ok=True)


def failed(run_dir: str | Path, rank: int, line: str, final: bool = False) -> None:
    """The rank's one-line reason; ``final``: no restart can help (a full disk)."""
    with contextlib.suppress(OSError):
        (Path(run_dir) / _FAILURE.format(rank)).write_text(line + ("\n" + _FINAL if final else ""))


def note_stalled_peers(run_dir: str | Path, rank: int, timeout_s: float) -> dict[int, str]:
    """Called by a rank whose step failed: a peer that made no progress for (nearly)
    the collective timeout and, on this host, still exists (stopped, say, or hung)
    gets a note. A peer that only waited in the same collective writes its own
    failure line too; the driver leaves those out. Returns the notes."""
    notes, now, host = {}, time.time(), socket.gethostname()
    for peer, (pid, peer_host, mtime) in _pid_files(run_dir).items():
        idle = now - mtime
        if peer == rank or idle < 0.8 * timeout_s:
            continue   # still making progress: not the one everybody waited for
        state = process_state(pid) if peer_host == host else None
        if peer_host == host and state is None:
            continue   # gone: killed, and its exit code says so
        alive = f"alive ({state})" if state else f"on {peer_host}"
        notes[peer] = (f"rank {peer} stopped responding: pid {pid} {alive}, no progress for {idle:.0f} s "
                       f"(the collective timeout is {timeout_s:.0f} s)")
        with contextlib.suppress(OSError):
            (Path(run_dir) / _STALLED.format(peer)).write_text(notes[peer])
    return notes


def process_state(pid: int) -> str | None:
    """A live process's state in words (from /proc), or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    code = stat.rsplit(")", 1)[1].split()[0]   # the command name may hold spaces and parentheses
    return None if code in ("Z", "X") else _STATES.get(code, code)


# ------------------------------------------------------------------ driver side
def clear(run_dir: str | Path) -> None:
    for pattern in (_PID, _FAILURE, _STALLED):
        for f in Path(run_dir).glob(pattern.format("*")):
            f.unlink(missing_ok=True)


def failures(run_dir: str | Path) -> dict[int, str]:
    """Rank -> the one line its failure file holds, oldest first."""
    return _lines(run_dir, _FAILURE)


def final(run_dir: str | Path) -> bool:
    """Whether a rank failed in a way no restart can help."""
    for f in Path(run_dir).glob(_FAILURE.format("*")):
        with contextlib.suppress(OSError):
            if f.read_text().splitlines()[1:2] == [_FINAL]:
                return True
    return False


def stalled(run_dir: str | Path) -> dict[int, str]:
    """Rank -> why a peer says it stopped responding."""
    return _lines(run_dir, _STALLED)


def started_ranks(run_dir: str | Path) -> set[int]:
    """Ranks that started and did not finish cleanly (each leaves its pid file until it does)."""
    return set(_pid_files(run_dir))


def _lines(run_dir: str | Path, pattern: str) -> dict[int, str]:
    prefix, suffix = pattern.split("{}")
    files = sorted(Path(run_dir).glob(pattern.format("*")), key=lambda f: f.stat().st_mtime)
    out = {}
    for f in files:
        number = f.name.removeprefix(prefix).removesuffix(suffix)
        text = f.read_text().strip()
        if text and number.isdigit():
            out[int(number)] = text.splitlines()[0][:500]
    return out


def _pid_files(run_dir: str | Path) -> dict[int, tuple[int, str, float]]:
    """Rank -> (pid, host, last progress) of every pid file."""
    prefix, suffix = _PID.split("{}")
    out = {}
    for f in Path(run_dir).glob(_PID.format("*")):
        number = f.name.removeprefix(prefix).removesuffix(suffix)
        try:
            pid, host = f.read_text().split(maxsplit=1)
            out[int(number)] = (int(pid), host.strip(), f.stat().st_mtime)
        except (OSError, ValueError):
            continue
    return out


# ------------------------------------------------------------------ the checkpoint directory's files
STOP = "stop"
_METRICS = "metrics.rank{}"


def stop_file(checkpoint_dir: str | Path) -> Path:
    return Path(checkpoint_dir) / STOP


def ranks_log(run_dir: str | Path) -> Path:
    return Path(run_dir) / "ranks.log"


def metrics_endpoint(checkpoint_dir: str | Path, rank: int) -> Path:
    return Path(checkpoint_dir) / _METRICS.format(rank)


def last_values(endpoint: Path) -> Path:
    return endpoint.with_name(endpoint.name + ".last")


def metrics_endpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Every rank's endpoint file (not the last-values files), by rank."""
    return sorted(p for p in Path(checkpoint_dir).glob(_METRICS.format("*")) if p.suffix != ".last")


def clear_metrics(checkpoint_dir: str | Path) -> None:
    """An earlier run's endpoints and last values."""
    for f in Path(checkpoint_dir).glob(_METRICS.format("*")):
        f.unlink(missing_ok=True)
