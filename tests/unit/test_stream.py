"""KafkaStreamDataset fed canned messages through a consumer factory (no broker)."""
import collections

import numpy as np
import pytest
import torch

from ddp_kbit.config import DataConfig, KafkaConfig
from ddp_kbit.data.manifest import Manifest
from ddp_kbit.data.plan import (
    NO_SHUFFLE,
    ConsumedRange,
    RankPlan,
    ReadWindow,
    Shuffle,
    Slice,
    plan_epoch,
    ranges_to_slices,
)
from ddp_kbit.data.stream import KafkaStreamDataset, StreamBatch, to_device
from ddp_kbit.errors import ClientError, StreamError
from ddp_kbit.wire import get_codec

SHAPE = (4, 4)


class CannedConsumer:
    """assign/poll over in-memory partitions, honouring pause/resume like Kafka."""

    def __init__(self, logs: dict, chunk: int = 7, fail: Exception | None = None):
        self.logs, self.chunk, self.pos, self.paused, self.closed, self.fail = logs, chunk, {}, set(), False, fail

    def assign(self, positions):
        self.pos = {(t, p): o for t, p, o in positions}
        self.seeks = 0

    def seek(self, t, p, o):
        self.pos[(t, p)] = o
        self.seeks += 1

    def poll_runs(self, max_records, timeout):
        if self.fail is not None:
            raise self.fail
        runs, budget = [], max_records
        for tp, o in self.pos.items():
            if tp in self.paused or budget <= 0:
                continue
            recs = [r for r in self.logs[tp] if r[0] >= o][: min(self.chunk, budget)]
            if recs:
                runs.append((tp, [r[0] for r in recs], [r[1] for r in recs], recs))
                self.pos[tp] = recs[-1][0] + 1
                budget -= len(recs)
        return runs

    def meta(self, record):
        """(key, headers): entries of a log are (offset, value) or (offset, value, key, headers)."""
        return (record[2], record[3]) if len(record) > 2 else (None, [])

    def pause(self, tps):
        self.paused |= set(tps)

    def resume(self, tps):
        self.paused -= set(tps)

    def position(self, t, p):
        return self.pos.get((t, p))

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CapturingProducer:
    def __init__(self, refuse_over: int | None = None):
        from ddp_kbit.kafka.protocol import DeliveryReport

        self.sent, self.report, self.refuse_over = [], DeliveryReport(), refuse_over

    def send(self, topic, value, key=None, partition=None, headers=None):
        if self.refuse_over is not None and len(value or b"") > self.refuse_over:
            raise RuntimeError("KafkaError{code=MSG_SIZE_TOO_LARGE,val=10,str=\"Unable to produce message: "
                               "Broker: Message size too large\"}")
        self.sent.append((topic, value, dict(headers), key, headers))

    def flush(self, timeout=0):
        return 0

    def close(self):
        pass


def make_logs(n_per_part, fmt="protobuf", bad=(), label=lambda p, o: (p + o) % 3):
    codec, logs, images = get_codec(fmt), {}, {}
    rng = np.random.default_rng(0)
    for p, n in enumerate(n_per_part):
        recs = []
        for o in range(n):
            img = rng.integers(0, 256, SHAPE, dtype=np.uint8)
            images[(p, o)] = img
            value = b"\x00garbage" if (p, o) in bad else codec.encode_array(p * 1000 + o, label(p, o), img)
            recs.append((o, value))
        logs[("t", p)] = recs
    return logs, images


def topic(fmt="protobuf"):
    return Manifest(topic="t", dataset=None, split=None, format=fmt, layout="bytes", num_samples=0, shape=SHAPE,
                    dtype="uint8", num_classes=3, class_names=None, partitions={})


def dataset(logs, plan, fmt="protobuf", producer=None, consumer=None, num_classes=None, **cfg):
    return KafkaStreamDataset(KafkaConfig(bootstrap_servers=None), DataConfig(**cfg), topic(fmt), plan,
                              num_classes=num_classes, consumer_factory=lambda: consumer or CannedConsumer(logs),
                              producer_factory=lambda: producer or CapturingProducer())


@pytest.mark.parametrize("shuffle", [NO_SHUFFLE, Shuffle("window", chunk=16, window=24)])
def test_yields_exactly_the_planned_batches_in_order(shuffle):
    logs, images = make_logs([30, 55])
    plan = plan_epoch(ranges_to_slices("t", {0: (0, 30), 1: (0, 55)}), 1, 8, seed=1, shuffle=shuffle)[0]
    consumer = CannedConsumer(logs)
    ds = dataset(logs, plan, consumer=consumer, buffer_records=10, shuffle_chunk=16, shuffle_window=24)
    batches = list(ds)
    assert len(batches) == len(ds) == plan.num_batches
    for k, got in enumerate(batches):
        expect = np.stack([images[(p, o)] for _, p, o in plan.batch_offsets(k)])
        assert torch.equal(got.images, torch.from_numpy(expect)) and got.images.dtype == torch.uint8
        assert got.step == k and got.planned == len(expect)
        assert [tuple(o) for o in got.offsets.tolist()] == [(p, o) for _, p, o in plan.batch_offsets(k)]


def test_a_shuffled_plan_reads_no_offset_twice():
    logs, _ = make_logs([400, 400, 400])
    plan = plan_epoch(ranges_to_slices("t", {p: (0, 400) for p in range(3)}), 1, 10, seed=3,
                      shuffle=Shuffle("window", chunk=50, window=100))[0]

    class Counting(CannedConsumer):
        delivered = collections.Counter()

        def poll_runs(self, max_records, timeout):
            runs = super().poll_runs(max_records, timeout)
            for tp, offs, _, _ in runs:
                self.delivered.update((tp, o) for o in offs)
            return runs

    consumer = Counting(logs, chunk=1000)
    batches = list(dataset(logs, plan, consumer=consumer, shuffle_chunk=50, shuffle_window=100))
    assert sum(len(b) for b in batches) == 1200
    # a client that hands out up to 1000 records a poll overshoots every chunk; what
    # it delivered past one is kept (for this window's next run of that partition, or
    # stashed for a later window's), so the reader never asks for an offset twice:
    # what still comes twice is the client's own fetch past a run into a region
    # already stashed (1,400 here; 1,950 when later windows' records were dropped)
    assert len(consumer.delivered) == 1200 and sum(consumer.delivered.values()) <= 1400
    assert consumer.seeks <= 2 * len(plan.slices)   # a seek per piece at most, and one per resume


def test_consumed_holds_only_marked_batches():
    logs, _ = make_logs([40])
    plan = plan_epoch([Slice("t", 0, 0, 40)], 1, 10)[0]
    ds = dataset(logs, plan)
    it = iter(ds)
    b1, b2, _prefetched = next(it), next(it), next(it)     # the third is prefetched but not stepped
    ds.mark_used(b1)
    ds.mark_used(b2)
    it.close()
    assert ds.consumed == [ConsumedRange("t", 0, 0, 20, 20, 0)]
    with pytest.raises(StreamError, match="batch 0 of the plan marked after 2 batches"):
        ds.mark_used(b1)


def test_bad_records_are_counted_forwarded_and_skipped():
    logs, _ = make_logs([300], bad={(0, 5), (0, 77)})
    producer = CapturingProducer()
    plan = plan_epoch([Slice("t", 0, 0, 300)], 1, 50)[0]
    ds = dataset(logs, plan, producer=producer, max_bad_fraction=0.1)
    batches = list(ds)
    assert sum(len(b) for b in batches) == 298 and len(batches[0]) == 49 and batches[0].planned == 50
    assert batches[0].bad_records == (("t", 0, 5, "malformed"),) and batches[1].bad_records == ((("t", 0, 77, "malformed"),))
    assert ds.bad.count == 2 and ds.bad.seen == 300 and sum(ds.bad.by_reason.values()) == 2
    assert [(t, h["ddp_kbit.source.offset"]) for t, _, h, _, _ in producer.sent] == [("t.dlq", b"5"), ("t.dlq", b"77")]
    assert producer.sent[0][1] == b"\x00garbage" and producer.sent[0][2]["ddp_kbit.source.partition"] == b"0"


def test_a_dead_letter_keeps_the_source_key_value_and_headers_and_tombstones_stay_tombstones():
    logs, _ = make_logs([60])
    own = [("trace-id", b"abc"), ("ddp_kbit.format", b"protobuf")]
    logs[("t", 0)][7] = (7, b"\x00garbage", b"user-42", own)
    logs[("t", 0)][9] = (9, None, b"user-43", [])
    producer = CapturingProducer()
    list(dataset(logs, plan_epoch([Slice("t", 0, 0, 60)], 1, 20)[0], producer=producer, max_bad_fraction=0.5))
    (t1, v1, h1, k1, raw1), (t2, v2, h2, k2, _) = producer.sent
    assert (t1, v1, k1) == ("t.dlq", b"\x00garbage", b"user-42") and raw1[:2] == own   # source headers first
    assert h1["ddp_kbit.source.offset"] == b"7" and h1["ddp_kbit.error.reason"] == b"malformed"
    assert (v2, k2, h2["ddp_kbit.error.reason"]) == (None, b"user-43", b"tombstone")


@pytest.mark.parametrize("limit,refuse_over", [(1000, None), (10**6, 1000)])
def test_a_record_too_large_for_the_dead_letter_topic_goes_without_its_value(limit, refuse_over):
    """Over --dlq-max-bytes it is never sent with its value; a client that refuses a
    smaller one gets it again without the value. Either way training goes on."""
    logs, _ = make_logs([60])
    logs[("t", 0)][3] = (3, b"\x00" * 5000, b"k3", [("h", b"v")])
    producer = CapturingProducer(refuse_over)
    batches = list(dataset(logs, plan_epoch([Slice("t", 0, 0, 60)], 1, 20)[0], producer=producer,
                           max_bad_fraction=0.5, dlq_max_bytes=limit))
    assert sum(len(b) for b in batches) == 59
    [(topic, value, headers, key, _)] = producer.sent
    assert (topic, value, key, headers["h"]) == ("t.dlq", None, b"k3", b"v")
    assert headers["ddp_kbit.value.dropped"].startswith(b"5000 bytes ")

def test_labels_outside_the_classes_are_bad_records():
    logs, _ = make_logs([100], label=lambda p, o: 99 if o == 10 else (-5 if o == 20 else o % 3))
    producer = CapturingProducer()
    ds = dataset(logs, plan_epoch([Slice("t", 0, 0, 100)], 1, 25)[0], producer=producer, num_classes=3,
                 max_bad_fraction=0.5)
    batches = list(ds)
    assert sum(len(b) for b in batches) == 98 and dict(ds.bad.by_reason) == {"bad_label": 2}
    assert all(int(b.labels.max()) < 3 and int(b.labels.min()) >= 0 for b in batches)
    assert [h["ddp_kbit.error.reason"] for _, _, h, _, _ in producer.sent] == [b"bad_label", b"bad_label"]


def test_too_many_bad_records_stop_with_a_clear_error():
    logs, _ = make_logs([200], bad={(0, i) for i in range(0, 200, 10)})
    ds = dataset(logs, plan_epoch([Slice("t", 0, 0, 200)], 1, 100)[0], max_bad_fraction=0.05)
    with pytest.raises(StreamError, match=r"\d+ of \d+ records are malformed.*--max-bad-fraction 0.05"):
        list(ds)


def test_missing_records_raise_instead_of_hanging():
    logs, _ = make_logs([10])
    ds = dataset(logs, plan_epoch([Slice("t", 0, 0, 20)], 1, 20)[0], stall_timeout_s=0.5)
    with pytest.raises(StreamError, match=r"no records from t\[0\] at offset 10"):
        list(ds)


def test_a_client_error_reaches_the_training_thread_at_once():
    logs, _ = make_logs([10])
    boom = CannedConsumer(logs, fail=ClientError("consume failed on t[0]: Broker: Not authorized"))
    ds = dataset(logs, plan_epoch([Slice("t", 0, 0, 10)], 1, 10)[0], consumer=boom)
    with pytest.raises(ClientError, match="Not authorized"):
        list(ds)
    assert boom.closed


def test_to_device_scales_and_orders_channels():
    imgs = torch.full((2, 3, 5, 3), 255, dtype=torch.uint8)
    x, y = to_device(StreamBatch(imgs, torch.tensor([1, 2])), torch.device("cpu"))
    assert x.shape == (2, 3, 3, 5) and x.dtype == torch.float32 and float(x.max()) == 1.0


def test_several_slices_of_one_partition_are_all_read():
    # what a resume on another world size plans when a partition was cut between ranks:
    # two disjoint slices of partition 0 on one rank, read with one consumer position
    logs, images = make_logs([300, 300])
    rest = [Slice("t", 0, 10, 120), Slice("t", 0, 150, 300), Slice("t", 1, 40, 300)]
    for seed in range(3):
        plan = plan_epoch(rest, 1, 8, seed=seed)[0]
        ds = dataset(logs, plan, stall_timeout_s=5)
        batches = list(ds)
        got = sorted((p, o) for k in range(plan.num_batches) for _, p, o in plan.batch_offsets(k))
        assert got == sorted((s.partition, o) for s in rest for o in range(s.start, s.end))
        assert sum(len(b) for b in batches) == sum(len(s) for s in rest) and not any(b.absent for b in batches)
        ds.steps = plan.num_batches
        assert sum(c.count for c in ds.consumed) == sum(len(s) for s in rest)


def test_a_plan_that_goes_back_in_a_partition_is_read_with_a_seek():
    logs, images = make_logs([40])
    late, early = Slice("t", 0, 20, 30), Slice("t", 0, 0, 10)
    plan = RankPlan(0, (ReadWindow((late,), (10,)), ReadWindow((early,), (10,))))
    first, second = list(dataset(logs, plan))
    assert torch.equal(second.images, torch.from_numpy(np.stack([images[(0, o)] for o in range(10)])))


def test_offsets_the_log_lacks_are_absent_not_bad_and_not_counted():
    logs, _ = make_logs([50])
    logs[("t", 0)] = [r for r in logs[("t", 0)] if r[0] not in (3, 4, 30)]   # compacted away
    plan = plan_epoch([Slice("t", 0, 0, 50)], 1, 10, shuffle=Shuffle("window", chunk=16, window=20))[0]
    ds = dataset(logs, plan, stall_timeout_s=0.3)
    for b in ds:
        ds.mark_used(b)
    assert sorted(o for _, _, o in ds.used_absent) == [3, 4, 30]
    assert sum(c.count for c in ds.consumed) == 47 and sum(c.end - c.start for c in ds.consumed) == 50


class MarkerConsumer(CannedConsumer):
    """A transactional topic as librdkafka serves it: commit/abort markers hold offsets
    no record is delivered for, and the client's position passes them (it knows no
    position after a seek until it reads past one)."""

    def __init__(self, logs, end: dict):
        super().__init__(logs)
        self.end, self.known = end, set()

    def seek(self, t, p, o):
        super().seek(t, p, o)
        self.known.discard((t, p))

    def poll_runs(self, max_records, timeout):
        runs = super().poll_runs(max_records, timeout)
        for tp, o in self.pos.items():
            if tp not in self.paused:
                later = [r[0] for r in self.logs[tp] if r[0] >= o]
                self.pos[tp] = later[0] if later else self.end[tp]   # past the markers
                self.known.add(tp)
        return runs

    def position(self, t, p):
        return self.pos.get((t, p)) if (t, p) in self.known else None


@pytest.mark.timeout(120)   # a reader that waits for a marker waits out its stall timeout (600 s) instead
@pytest.mark.parametrize("shuffle", [Shuffle("window", chunk=16, window=48), NO_SHUFFLE])
def test_offsets_a_fetch_skips_are_absent_at_once_never_waited_for(shuffle):
    logs, _ = make_logs([100, 100])
    markers = {("t", 0): {15, 31, 47, 63, 99}, ("t", 1): {0, 50, 99}}   # chunk ends, a partition's first and last
    for tp, skip in markers.items():
        logs[tp] = [r for r in logs[tp] if r[0] not in skip]
    plan = plan_epoch([Slice("t", 0, 0, 100), Slice("t", 1, 0, 100)], 1, 10, shuffle=shuffle)[0]
    consumer = MarkerConsumer(logs, {("t", 0): 100, ("t", 1): 100})
    ds = dataset(logs, plan, consumer=consumer, stall_timeout_s=600)
    for b in ds:
        ds.mark_used(b)
    assert sorted((p, o) for _, p, o in ds.used_absent) == sorted((tp[1], o) for tp, s in markers.items() for o in s)
    assert sum(c.count for c in ds.consumed) == 192 and sum(c.end - c.start for c in ds.consumed) == 200
