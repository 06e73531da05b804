"""Reliability pieces that need no broker: coverage of a manifest by the broker's
offsets, log rate limiting and secret redaction, hot-path client errors, and the
DataLoader worker guard."""
import io
import logging

import pytest
import torch

from ddp_kbit import logs
from ddp_kbit.config import DataConfig, KafkaConfig
from ddp_kbit.data.manifest import Manifest, coverage, without
from ddp_kbit.data.plan import Slice, plan_epoch
from ddp_kbit.data.stream import KafkaStreamDataset
from ddp_kbit.errors import ClientError, StreamError


def manifest(parts):
    return Manifest(topic="t", dataset=None, split=None, format="json", layout="bytes", num_samples=0,
                    shape=(2, 2), dtype="uint8", num_classes=2, class_names=None, partitions=parts)


def test_retention_moved_the_log_start_past_a_planned_range():
    m = manifest({0: (0, 100), 1: (0, 100)})
    cov = coverage(m, {0: (40, 100), 1: (0, 100)})
    assert cov.missing == ((0, 0, 40),) and cov.beyond == 0
    assert cov.describe_missing("t") == "t[0] offsets [0, 40)"
    assert without(m, cov.missing).partitions == {0: (40, 100), 1: (0, 100)}


def test_records_past_the_high_watermark_and_beyond_the_manifest():
    m = manifest({0: (0, 100), 1: (10, 20)})
    cov = coverage(m, {0: (0, 70), 1: (0, 35)})
    assert cov.missing == ((0, 70, 100),) and cov.beyond == 15
    assert without(m, cov.missing).partitions == {0: (0, 70), 1: (10, 20)}
    assert coverage(m, {0: (200, 300), 1: (0, 20)}).missing == ((0, 0, 100),)


def _capture(level):
    stream = io.StringIO()
    logs.configure(level, "%(name)s %(message)s", secrets=["hunter2"])
    for h in logging.getLogger().handlers:
        h.setStream(stream)
    return stream


def test_client_retries_are_one_line_per_cause_below_debug():
    stream = _capture("INFO")
    rd = logging.getLogger("librdkafka")
    for i in range(2500):
        rd.error("FAIL|rdkafka#consumer-1| 127.0.0.1:%d/bootstrap: Connect failed: Connection refused", 9000 + i % 3)
    logging.getLogger("ddp_kbit.x").info("ours %d", 1)
    logging.getLogger("ddp_kbit.x").info("ours %d", 2)
    lines = stream.getvalue().splitlines()
    assert sum("Connection refused" in ln for ln in lines) == 1 and len(lines) == 3


def test_secrets_never_reach_a_log_line_at_any_level():
    stream = _capture("DEBUG")
    logging.getLogger("kafka.conn").debug("config %s", {"sasl_plain_password": "hunter2"})
    try:
        raise ValueError("password hunter2 rejected")
    except ValueError:
        logging.getLogger("ddp_kbit").exception("failed")
    out = stream.getvalue()
    assert "hunter2" not in out and "ValueError: password *** rejected" in out and "'***'" in out


class _Msg:
    def __init__(self, err=None):
        self._err = err

    def error(self):
        return self._err

    def topic(self):
        return "t"

    def partition(self):
        return 0

    def offset(self):
        return 0

    def value(self):
        return b"v"


class _Err:
    def __init__(self, fatal, retriable):
        self._f, self._r = fatal, retriable

    def fatal(self):
        return self._f

    def retriable(self):
        return self._r

    def str(self):
        return "Broker: Topic authorization failed"


def test_a_fatal_consume_error_raises_at_once_on_the_hot_path():
    from ddp_kbit.kafka.confluent import Consumer

    c = object.__new__(Consumer)
    c._c = type("C", (), {"consume": lambda self, n, t: [_Msg(), _Msg(_Err(False, False)), _Msg()]})()
    with pytest.raises(ClientError, match="consume failed on t\\[0\\]: Broker: Topic authorization failed"):
        c.poll_runs(10, 0.1)
    c._c = type("C", (), {"consume": lambda self, n, t: [_Msg(), _Msg(_Err(False, True))]})()
    assert len(c._consume(10, 0.1)) == 1   # a retriable one is skipped


def test_dataloader_workers_are_refused_with_a_clear_error():
    plan = plan_epoch([Slice("t", 0, 0, 10)], 1, 5)[0]
    ds = KafkaStreamDataset(KafkaConfig(), DataConfig(), manifest({0: (0, 10)}), plan,
                            consumer_factory=lambda: None)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1)
    with pytest.raises(StreamError, match="DataLoader worker processes would each read the same records"):
        next(iter(loader))


class _Rec:
    def __init__(self, topic, partition, offset):
        self.t, self.p, self.o = topic, partition, offset

    def error(self):
        return None

    def topic(self):
        return self.t

    def partition(self):
        return self.p

    def offset(self):
        return self.o

    def value(self):
        return f"{self.t}{self.p}@{self.o}".encode()


def test_confluent_poll_runs_split_where_partition_or_topic_changes():
    from ddp_kbit.kafka.confluent import Consumer

    recs = [_Rec("a", 0, 5), _Rec("a", 0, 6), _Rec("a", 1, 0), _Rec("b", 1, 7), _Rec("b", 1, 8), _Rec("a", 0, 7)]
    c = object.__new__(Consumer)
    c._c = type("C", (), {"consume": lambda self, n, t: recs})()
    runs = c.poll_runs(10, 0.1)
    assert [(tp, offs) for tp, offs, _, _ in runs] == [(("a", 0), [5, 6]), (("a", 1), [0]), (("b", 1), [7, 8]),
                                                    (("a", 0), [7])]
    assert runs[2][2] == [b"b1@7", b"b1@8"]
