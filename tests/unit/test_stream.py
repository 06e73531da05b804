"""KafkaStreamDataset fed canned messages through a consumer factory (no broker)."""
import numpy as np
import pytest
import torch

from ddp_kbit.config import DataConfig, KafkaConfig
from ddp_kbit.data.manifest import Manifest
from ddp_kbit.data.partitions import ConsumedRange, RankPlan, Slice, plan_epoch, ranges_to_slices
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

    def poll_runs(self, max_records, timeout):
        if self.fail is not None:
            raise self.fail
        runs, budget = [], max_records
        for tp, o in self.pos.items():
            if tp in self.paused or budget <= 0:
                continue
            recs = [(off, v) for off, v in self.logs[tp] if off >= o][: min(self.chunk, budget)]
            if recs:
                runs.append((tp, [off for off, _ in recs], [v for _, v in recs]))
                self.pos[tp] = recs[-1][0] + 1
                budget -= len(recs)
        return runs

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
    def __init__(self):
        self.sent = []

    def send(self, topic, value, key=None, partition=None, headers=None):
        self.sent.append((topic, value, dict(headers)))

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


def test_yields_exactly_the_planned_batches_in_order():
    logs, images = make_logs([30, 55])
    plan = plan_epoch(ranges_to_slices("t", {0: (0, 30), 1: (0, 55)}), 1, 8, seed=1)[0]
    ds = dataset(logs, plan, buffer_records=10)
    batches = list(ds)
    assert len(batches) == len(ds) == len(plan.batches)
    for got, want in zip(batches, plan.batches):
        assert got.used == want
        expect = np.stack([images[(s.partition, o)] for s in want for o in range(s.start, s.end)])
        assert torch.equal(got.images, torch.from_numpy(expect)) and got.images.dtype == torch.uint8


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


def test_bad_records_are_counted_forwarded_and_skipped():
    logs, _ = make_logs([300], bad={(0, 5), (0, 77)})
    producer = CapturingProducer()
    plan = plan_epoch([Slice("t", 0, 0, 300)], 1, 50)[0]
    ds = dataset(logs, plan, producer=producer, max_bad_fraction=0.1)
    batches = list(ds)
    assert sum(len(b) for b in batches) == 298 and batches[0].good == (49,)
    assert batches[0].bad_records == (("t", 0, 5, "malformed"),) and batches[1].bad_records == ((("t", 0, 77, "malformed"),))
    assert ds.bad.count == 2 and ds.bad.seen == 300 and sum(ds.bad.by_reason.values()) == 2
    assert [(t, h["ddp_kbit.source.offset"]) for t, _, h in producer.sent] == [("t.dlq", b"5"), ("t.dlq", b"77")]
    assert producer.sent[0][1] == b"\x00garbage" and producer.sent[0][2]["ddp_kbit.source.partition"] == b"0"


def test_labels_outside_the_classes_are_bad_records():
    logs, _ = make_logs([100], label=lambda p, o: 99 if o == 10 else (-5 if o == 20 else o % 3))
    producer = CapturingProducer()
    ds = dataset(logs, plan_epoch([Slice("t", 0, 0, 100)], 1, 25)[0], producer=producer, num_classes=3,
                 max_bad_fraction=0.5)
    batches = list(ds)
    assert sum(len(b) for b in batches) == 98 and dict(ds.bad.by_reason) == {"bad_label": 2}
    assert all(int(b.labels.max()) < 3 and int(b.labels.min()) >= 0 for b in batches)
    assert [h["ddp_kbit.error.reason"] for _, _, h in producer.sent] == [b"bad_label", b"bad_label"]


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
    x, y = to_device(StreamBatch(imgs, torch.tensor([1, 2]), ()), torch.device("cpu"))
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
        got = sorted(o for b in batches for s in b.used for o in range(s.start, s.end))
        assert got == sorted(o for s in rest for o in range(s.start, s.end))
        assert sum(len(b) for b in batches) == sum(len(s) for s in rest) and not any(b.missing for b in batches)


def test_a_plan_that_goes_back_in_a_partition_is_an_error_not_a_gap():
    logs, _ = make_logs([40])
    late, early = Slice("t", 0, 20, 30), Slice("t", 0, 0, 10)
    plan = RankPlan(0, (early, late), ((late,), (early,)))
    with pytest.raises(StreamError, match=r"goes back in t\[0\]: offsets \[0, 10\) after offset 29"):
        list(dataset(logs, plan))
