"""The driver names the rank that failed first and how, from torchrun's summary,
the ranks' own failure lines, and the ranks that never finished."""
from ddp_kbit.launch.driver import describe_failure

SUMMARY = """Command ['torchrun', ...] failed with return code 1. The task output is included below:
[rank0]: RuntimeError: Connection reset by peer
============================================================
/tmp/x/train.py FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-23_12:00:01
  host      : vm
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 1001)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-23_12:00:00
  host      : vm
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 1002) (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 1002
============================================================
"""


def test_killed_rank_is_named_first_with_its_signal():
    got = describe_failure(SUMMARY, {0: "rank 0: RuntimeError: Connection reset by peer"}, {0, 1})
    assert got == "rank 1 was killed by SIGKILL (exit code -9)"   # the peer's lost connection says nothing new
    got = describe_failure(SUMMARY, {0: "rank 0: StreamError: broker down"}, {0, 1})
    assert got == "rank 1 was killed by SIGKILL (exit code -9); then rank 0: StreamError: broker down"


def test_a_python_error_is_the_ranks_own_line():
    text = SUMMARY.replace("rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 1002) (SIGKILL)",
                           "rank      : 1 (local_rank: 1)\n  exitcode  : 1 (pid: 1002)")
    got = describe_failure(text, {1: "rank 1: StreamError: 30 of 100 records are malformed"}, {0, 1})
    assert got == "rank 1: StreamError: 30 of 100 records are malformed"


def test_without_a_summary_a_silent_rank_is_the_cause():
    # barrier mode: the driver may only see the surviving rank's task error
    got = describe_failure("org.apache.spark.SparkException: Job aborted", {0: "rank 0: RuntimeError: reset"}, {0, 1})
    assert got.startswith("rank 1 died without a Python error") and got.endswith("then rank 0: RuntimeError: reset")


def test_nothing_known_falls_back_to_the_exception_line():
    assert describe_failure("a\nValueError: boom\nat java.lang.Thread", {}, set()) == "ValueError: boom"


def test_barrier_mode_names_the_task_spark_saw_fail_first():
    text = ("org.apache.spark.SparkException: Job aborted due to stage failure: ResultStage 0 has failed the maximum "
            "allowable number of times: 1. Most recent failure reason: Stage failed because barrier task "
            "ResultTask(0, 1) finished unsuccessfully.\nRuntimeError: TorchDistributor failed during training.")
    got = describe_failure(text, {}, {0, 1})   # Spark killed rank 0 before it could say anything
    assert got.startswith("rank 1 died without a Python error")


def test_a_python_error_inside_spark_is_shown_not_a_java_frame():
    text = ("An error occurred while calling o62.collectToPython.\n: org.apache.spark.SparkException: Job aborted\n"
            "org.apache.spark.api.python.PythonException: [PYTHON_EXCEPTION] Traceback (most recent call last):\n"
            "  File \"worker.py\", line 1\nModuleNotFoundError: No module named 'ddp_kbit'\n"
            "\tat org.apache.spark.sql.execution.QueryExecution$.withInternalError(QueryExecution.scala:927)\n")
    assert describe_failure(text, {}, set()) == "ModuleNotFoundError: No module named 'ddp_kbit'"
