"""Trust pieces that need no broker (issue 23): checkpoints on a full disk and a
truncated newest checkpoint, the lock of a checkpoint directory, the clients'
isolation level, the terminal's view of the ranks' output, Spark failures in one line."""
import json
import os
import subprocess
import sys

import pytest
import torch

from ddp_kbit.config import KafkaConfig
from ddp_kbit.errors import CheckpointError, UserError
from ddp_kbit.files import DirectoryLock
from ddp_kbit.launch.torchrun import OutputFilter
from ddp_kbit.train import checkpoint


def save_two(tmp_path, saver_free=None):
    from ignite.engine import Engine

    from ddp_kbit.train.records import RunProgress

    to_save = {"run": RunProgress(), "model": torch.nn.Linear(64, 64)}
    handler = checkpoint.checkpointer(tmp_path, to_save, keep=3)
    handler.save_handler.free = saver_free
    engine = Engine(lambda e, b: None)
    engine.tally = type("T", (), {"global_step": 1})()
    handler(engine)
    engine.tally.global_step = 2
    handler(engine)


def test_a_full_disk_is_one_line_with_the_size_and_the_newest_complete_checkpoint_stays(tmp_path):
    # a file system with room for the first checkpoint only (the integration test uses a real tmpfs)
    def free(directory):
        return (1 << 20) + 100 if len(list(tmp_path.glob("ckpt-*.pt"))) else 1 << 30

    with pytest.raises(checkpoint.DiskFullError, match=rf"checkpoint directory {tmp_path} is full: a checkpoint "
                       r"needs 0\.0 MiB, 1\.0 MiB free; the newest complete checkpoint is ckpt-s000000001\.pt"):
        save_two(tmp_path, free)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-s000000001.pt"]   # no half file, no temp file
    assert checkpoint.latest_readable(tmp_path).name == "ckpt-s000000001.pt"


def test_a_truncated_newest_checkpoint_falls_back_to_the_newest_readable_with_a_warning(tmp_path, caplog):
    save_two(tmp_path)
    newest = tmp_path / "ckpt-s000000002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])   # a copy cut short by a power loss
    with caplog.at_level("WARNING"):
        assert checkpoint.latest_readable(tmp_path).name == "ckpt-s000000001.pt"
    assert "ckpt-s000000002.pt is unreadable" in caplog.text
    (tmp_path / "ckpt-s000000001.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* is readable: ckpt-s000000002\.pt is unreadable: "
                                              r".*; ckpt-s000000001\.pt is unreadable: .*; start without --resume"):
        checkpoint.latest_readable(tmp_path)


def test_a_second_run_on_a_locked_directory_is_refused_naming_the_holder(tmp_path):
    with DirectoryLock(tmp_path), \
            pytest.raises(UserError, match=rf"{tmp_path} is in use by another run \(pid {os.getpid()} on "):
        DirectoryLock(tmp_path).__enter__()
    assert not (tmp_path / ".lock").exists()
    with DirectoryLock(tmp_path):   # free again once the first one ended
        pass


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (tmp_path / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                                "since": 0}))
    with caplog.at_level("WARNING"), DirectoryLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert f"taking over the stale lock of {tmp_path} (pid {int(dead.stdout)}" in caplog.text


def test_both_clients_read_committed_records_only():
    from ddp_kbit.kafka import confluent, kafka_python

    seen = {}

    class Capture:
        def __init__(self, conf=None, **kw):
            seen.update(conf or kw)

    import confluent_kafka
    import kafka

    cfg = KafkaConfig(bootstrap_servers="127.0.0.1:1")
    orig = confluent_kafka.Consumer, kafka.KafkaConsumer
    try:
        confluent_kafka.Consumer, kafka.KafkaConsumer = Capture, Capture
        confluent.Consumer(cfg)
        assert seen["isolation.level"] == "read_committed"
        kafka_python.Consumer(cfg)
        assert seen["isolation_level"] == "read_committed"
    finally:
        confluent_kafka.Consumer, kafka.KafkaConsumer = orig


RANK_OUTPUT = """\
2026-12-05 12:00:00 rank0 INFO ddp_kbit.train: epoch 1: train_loss 0.5
[rank1]: Traceback (most recent call last):
[rank1]:   File "train.py", line 3, in <module>
[rank1]:     main()
[rank1]: RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer
Traceback (most recent call last):
  File "x.py", line 1, in <module>
ValueError: boom

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "y.py", line 2
ddp_kbit.errors.CheckpointError: checkpoint directory /x is full
W1205 12:00:01.123000 42 torch/distributed/elastic/multiprocessing/api.py:900] Sending process 7 closing signal SIGTERM
E1205 12:00:02.000000 42 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: 1) local_rank: 0
============================================================
train.py FAILED
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 7)
============================================================
2026-12-05 12:00:03 rank0 WARNING ddp_kbit.train: still here
"""


def test_the_terminal_sees_the_ranks_log_lines_but_no_traceback_or_failure_summary():
    keep = OutputFilter()
    shown = [line for line in RANK_OUTPUT.splitlines(keepends=True) if keep.shown(line)]
    assert [s.strip() for s in shown if s.strip()] == [
        "2026-12-05 12:00:00 rank0 INFO ddp_kbit.train: epoch 1: train_loss 0.5",
        "2026-12-05 12:00:03 rank0 WARNING ddp_kbit.train: still here"]


GPU_TEXT = """An error occurred while calling None.org.apache.spark.api.java.JavaSparkContext.
: java.lang.IllegalArgumentException: requirement failed: Resource: gpu, with addresses:  is less than what the \
user requested: 2)
\tat scala.Predef$.require(Predef.scala:337)
\tat org.apache.spark.resource.ResourceUtils$.assertResourceAllocationMeetsRequest(ResourceUtils.scala:291)
\tat py4j.ClientServerConnection.run(ClientServerConnection.java:108)
\tat java.base/java.lang.Thread.run(Thread.java:840)
"""


@pytest.mark.parametrize("text, line", [
    (GPU_TEXT, "Spark found 0 gpu address(es) (none) where 2 are requested"),
    ("org.apache.spark.SparkException: [BARRIER_JOB_FAILED] Barrier stage that requires 3 slots, but the cluster "
     "has 2", "the barrier stage needs more task slots than the cluster has"),
    ("ERROR StandaloneSchedulerBackend: Application has been killed. Reason: All masters are unresponsive! Giving "
     "up.", "cannot reach the Spark master"),
    ("org.apache.spark.SparkException: Could not parse Master URL: 'sprak://x:1'",
     "--master sprak://x:1 is not a Spark master URL"),
    (": java.lang.ClassNotFoundException: com.nvidia.spark.SQLPlugin\n\tat java.base/java.net.URLClassLoader",
     "class com.nvidia.spark.SQLPlugin is not on Spark's classpath"),
    ("Job aborted due to stage failure: Task 0 in stage 1.0 failed 1 times, most recent failure: Lost task 0.0 "
     "(TID 1) (127.0.0.1 executor 1): ExecutorLostFailure (executor 1 exited caused by one of the running tasks) "
     "Reason: Remote RPC client disassociated.\n\tat org.apache.spark.scheduler.DAGScheduler",
     "Spark lost executor 1: Remote RPC client disassociated."),
])
def test_known_spark_failures_are_one_line_each_never_a_stack_frame(text, line):
    from ddp_kbit.launch.driver import last_line
    from ddp_kbit.launch.spark_errors import spark_line

    assert spark_line(text).startswith(line) and last_line(text).startswith(line)


def test_an_unknown_jvm_failure_is_its_exception_line():
    from ddp_kbit.launch.driver import last_line

    text = (": java.lang.IllegalStateException: something odd\n\tat org.apache.spark.X.y(X.scala:1)\n"
            "\tat java.base/java.lang.Thread.run(Thread.java:840)\n")
    assert last_line(text) == "IllegalStateException: something odd"
