"""Embedded broker lifecycle: starts on a free port, stops cleanly, never orphans."""
import os
import signal
import socket
import subprocess
import sys
import time

from ddp_kbit.kafka.broker import EmbeddedBroker


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie counts as gone
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split()[2] != "Z"


def test_start_accepts_connections_and_stop_leaves_nothing(tmp_path):
    with EmbeddedBroker(tmp_path) as b:
        pid = b.proc.pid
        socket.create_connection(("127.0.0.1", b.port), timeout=1).close()
    assert not alive(pid)
    assert (tmp_path / "broker.log").exists()


def test_exception_inside_context_stops_broker(tmp_path):
    pid = None
    try:
        with EmbeddedBroker(tmp_path) as b:
            pid = b.proc.pid
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert pid and not alive(pid)


def _child(tmp_path):
    code = ("import sys, time; from ddp_kbit.kafka.broker import EmbeddedBroker; "
            f"b = EmbeddedBroker({str(tmp_path)!r}).start(); print(b.proc.pid, flush=True); time.sleep(60)")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_parent_killed_hard_takes_broker_with_it(tmp_path):
    parent = _child(tmp_path)
    pid = int(parent.stdout.readline())
    assert alive(pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 5
    while alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


def test_ctrl_c_stops_broker(tmp_path):
    code = ("import time; from ddp_kbit.kafka.broker import EmbeddedBroker\n"
            f"with EmbeddedBroker({str(tmp_path)!r}) as b:\n    print(b.proc.pid, flush=True); time.sleep(60)\n")
    # SIGINT back to its default in the child: a shell's background job (nohup, &) ignores
    # it, children inherit that, and Python would then never raise KeyboardInterrupt
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGINT)
    parent.wait(10)
    assert not alive(pid)
