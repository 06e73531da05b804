"""How TorchDistributor's torchrun command runs for ddp_kbit: the ranks' whole output
goes to ``ranks.log`` in the run directory, and the terminal gets it without the
tracebacks (a rank's, torchrun's failure summary, C++ error lines), so a failure
ends in the driver's one line, which says where the log is.

The command runs in a session of its own: a terminal's Ctrl-C reaches the driver
only, which asks the ranks to stop gracefully (the stop file) instead of torchrun
killing them. pyspark's wrapper around torchrun still ends it if the driver dies.

Standard library only: with ``--ship-package`` this module is pickled by value into
the Spark task, where ddp_kbit may not be importable.
"""
from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time

TAIL = 100
_EXC = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit|Terminated)\b")
_PREFIX = re.compile(r"^\[(?:default)?rank\d+\]:\s?")
_GLOG = re.compile(r"^[EWIF]\d{4} \d\d:\d\d:\d\d")       # torch elastic / c10 log lines (W1205 12:00:00 ...)
_FRAME = re.compile(r"^=+$")


class OutputFilter:
    """Which lines of the ranks' output a terminal sees: everything but tracebacks,
    exception chains, torchrun's framed failure summary and C++ log lines (all kept
    in the log file)."""

    def __init__(self):
        self.in_traceback = self.in_frame = False

    def shown(self, line: str) -> bool:
        text = _PREFIX.sub("", line.rstrip("\n"))
        if self.in_frame:
            self.in_frame = not (_FRAME.match(text) and len(text) >= 20)
            return False
        if _FRAME.match(text) and len(text) >= 20:
            self.in_frame = True
            return False
        if text.startswith("Traceback (most recent call last)"):
            self.in_traceback = True
            return False
        if self.in_traceback:
            if _EXC.match(text):
                self.in_traceback = False
            return False
        if text.startswith(("During handling of the above exception", "The above exception was the direct cause",
                            "terminate called", "[E", "Exception in thread")) or _GLOG.match(text):
            return False
        return not _EXC.match(text)   # an exception line printed on its own


def run_ranks(input_params: dict, train_path: str, *args, log_path: str | None = None):
    """pyspark's ``run_pytorch_file_fn``: torchrun on ``train_path``; raises the way
    pyspark's own runner does (torchrun's failure summary in the message), which the
    driver reads for the rank that failed first."""
    from pyspark.ml.torch.distributor import TorchDistributor

    cmd = TorchDistributor._create_torchrun_command(input_params, train_path, *args)
    streamer = input_params.get("log_streaming_client")
    log = _open_log(log_path)
    task = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=os.environ, start_new_session=True)
    tail: collections.deque = collections.deque(maxlen=TAIL)
    keep = OutputFilter()
    try:
        for raw in task.stdout:
            line = raw.decode("utf-8", errors="replace")
            tail.append(line)
            if log is not None:
                log.write(line)
                log.flush()
            if keep.shown(line):
                _echo(line, streamer)
        task.wait()
    finally:
        _stop(task)
        if log is not None:
            log.close()
    if task.returncode != 0:
        raise RuntimeError(f"Command {cmd} failed with return code {task.returncode}. The last {len(tail)} lines "
                           f"of the task output are included below: {''.join(tail)}")


def _open_log(path: str | None):
    """The log file; on an executor whose disk lacks the run directory, none (the
    driver's launch-error file keeps the tail)."""
    if not path:
        return None
    try:
        return open(path, "a", encoding="utf-8")   # noqa: SIM115 (closed in run_ranks' finally)
    except OSError:
        return None


def _echo(line: str, streamer) -> None:
    if streamer is not None and not getattr(streamer, "failed", True):
        streamer.send(line.rstrip())   # barrier mode: the driver's log server prints it
    else:
        sys.stdout.write(line)
        sys.stdout.flush()


def _stop(task: subprocess.Popen) -> None:
    """The torchrun session: SIGTERM, then SIGKILL after a grace period."""
    if task.poll() is not None:
        return
    try:
        os.killpg(task.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while task.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if task.poll() is None:
            os.killpg(task.pid, signal.SIGKILL)
            task.wait(5)
    except (OSError, subprocess.TimeoutExpired):
        pass
