"""Spark's own failures in one line. A JVM error reaches Python as a py4j error whose
text is a Java stack trace; its message is the exception line, never a frame. Known
failures get a line that says what to do; any other gets its exception line."""
from __future__ import annotations

import re
from collections.abc import Callable

Known = tuple[re.Pattern, Callable[[re.Match], str]]

KNOWN: tuple[Known, ...] = (
    (re.compile(r"Expected SaslMessage, received something else"),
     lambda m: "the Spark master requires RPC authentication (spark.authenticate) and this run has no secret: pass "
               "--spark-secret-file (`python -m ddp_kbit.main_cluster up` writes one)"),
    (re.compile(r"DIGEST-MD5: digest response format violation|Mismatched response|SaslException"),
     lambda m: "the Spark master refused this run's RPC authentication secret (--spark-secret-file): it is not "
               "the cluster's"),
    (re.compile(r"Resource: (\w+), with addresses: (.*?) is less than what the user requested: (\d+)"),
     lambda m: f"Spark found {len([a for a in m[2].split(',') if a.strip()])} {m[1]} address(es) "
               f"({m[2].strip() or 'none'}) where {m[3]} are requested: check the discovery script "
               "(spark_conf/getGpusResources.sh, nvidia-smi) or ask for fewer --num-processes"),
    (re.compile(r"requires more slots than the total number of slots in the cluster currently|"
                r"Barrier stage that requires (\d+) slots"),
     lambda m: "the barrier stage needs more task slots than the cluster has: add workers or cores, or pass "
               "fewer --num-processes"),
    (re.compile(r"All masters are unresponsive|Failed to connect to master ([\w.\-]+:\d+)|"
                r"Could not connect to (?:the )?master"),
     lambda m: f"cannot reach the Spark master{' ' + m[1] if m.lastindex and m[1] else ''}: is it running, and is "
               "the URL (--master) right?"),
    (re.compile(r"Could not parse Master URL: '([^']*)'|Invalid master URL: (\S+)"),
     lambda m: f"--master {m[1] or m[2]} is not a Spark master URL (local[N], local-cluster[N,C,MB], "
               "spark://HOST:PORT, yarn, k8s://...)"),
    (re.compile(r"ClassNotFoundException: ([\w.$]+)"),
     lambda m: f"class {m[1]} is not on Spark's classpath: a missing jar (spark.jars, --spark-conf "
               "spark.jars=/path/to.jar)"),
    (re.compile(r"(?:FileNotFoundException|NoSuchFileException): (?:Jar )?(\S+\.jar)"),
     lambda m: f"jar {m[1]} does not exist (spark.jars)"),
    (re.compile(r"ExecutorLostFailure \(executor (\S+) exited (?:caused by one of the running tasks|unrelated "
                r"to the running tasks)\) Reason: ([^\n]*)"),
     lambda m: f"Spark lost executor {m[1]}: {m[2].strip()}"),
    (re.compile(r"Master removed our application: (\w+)"),
     lambda m: f"the Spark master removed the application ({m[1]}): its workers could not run executors"),
)

_FRAME = re.compile(r"^\s*(at |\.\.\. \d+ more|Caused by: |Suppressed: )")
_EXC_LINE = re.compile(r"^\s*(?::\s*)?((?:[a-z][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error))(?::\s*(.*))?$")


def known_failure(text: str) -> str | None:
    """The line for a known Spark failure in ``text``, if there is one."""
    for pattern, line in KNOWN:
        m = pattern.search(text)
        if m:
            return line(m)
    return None


def exception_line(text: str) -> str | None:
    """The first Java exception line of a stack trace (``java.lang.X: message``), with
    ``requirement failed:`` and similar wrappers left as they are; never a frame."""
    for raw in text.splitlines():
        if _FRAME.match(raw):
            continue
        m = _EXC_LINE.match(raw)
        if m:
            return f"{m[1].rsplit('.', 1)[-1]}: {m[2]}" if m[2] else m[1].rsplit(".", 1)[-1]
    return None


def spark_line(text: str) -> str | None:
    """What a user reads of a Spark failure: a known failure's line, else the exception's."""
    return known_failure(text) or exception_line(text)
