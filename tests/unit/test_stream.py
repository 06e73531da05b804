"""KafkaStreamDataset fed canned messages through a consumer factory (no broker)."""
import numpy as np
import pytest
import torch

from ddp_kbit.codecs import get_codec
from ddp_kbit.config import KafkaConfig
from ddp_kbit.partitions import Slice, plan_epoch, ranges_to_slices
from ddp_kbit.stream import KafkaStreamDataset, StreamConfig, StreamError, to_device

SHAPE = (4, 4)


class CannedConsumer:
    """assign/poll over in-memory partitions, honouring pause/resume like Kafka."""

    def __init__(self, logs: dict, chunk: int = 7):
        self.logs, self.chunk, self.pos, self.paused, self.closed = logs, chunk, {}, set(), False

    def assign(self, positions):
        self.pos = {(t, p): o for t, p, o in positions}

    def poll_values(self, max_records, timeout):
        parts, offs, vals, topics = [], [], [], []
        for tp, o in self.pos.items():
            if tp in self.paused:
                continue
            recs = [(off, v) for off, v in self.logs[tp] if off >= o][: self.chunk]
            for off, v in recs:
                topics.append(tp[0]), parts.append(tp[1]), offs.append(off), vals.append(v)
            if recs:
                self.pos[tp] = recs[-1][0] + 1
        return parts, offs, vals, topics

    def pause(self, tps):
        self.paused |= set(tps)

    def resume(self, tps):
        self.paused -= set(tps)

    def position(self, t, p):
        return self.pos.get((t, p))

    def close(self):
        self.closed = True


class CapturingProducer:
    def __init__(self):
        self.sent = []

    def send(self, topic, value, key=None, partition=None, headers=None):
        self.sent.append((topic, value, dict(headers)))

    def flush(self, timeout=0):
        return 0

    def close(self):
        pass


def make_logs(n_per_part, fmt="protobuf", bad=()):
    codec, logs, images = get_codec(fmt), {}, {}
    rng = np.random.default_rng(0)
    for p, n in enumerate(n_per_part):
        recs = []
        for o in range(n):
            img = rng.integers(0, 256, SHAPE, dtype=np.uint8)
            images[(p, o)] = img
            value = b"\x00garbage" if (p, o) in bad else codec.encode_array(p * 1000 + o, (p + o) % 3, img)
            recs.append((o, value))
        logs[("t", p)] = recs
    return logs, images


def dataset(logs, plan, fmt="protobuf", producer=None, **cfg):
    scfg = StreamConfig(format=fmt, layout="bytes", shape=SHAPE, **cfg)
    return KafkaStreamDataset(KafkaConfig(bootstrap_servers=None), scfg, plan,
                              consumer_factory=lambda: CannedConsumer(logs),
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


def test_state_holds_only_marked_batches_and_resume_skips_them():
    logs, _ = make_logs([40])
    plan = plan_epoch([Slice("t", 0, 0, 40)], 1, 10)[0]
    ds = dataset(logs, plan)
    it = iter(ds)
    b1, _prefetched = next(it), next(it)     # the second is prefetched but not stepped
    ds.mark_used(b1)
    it.close()
    state = ds.state_dict()
    assert state["used"] == [["t", 0, 0, 10]]
    again = dataset(logs, plan)
    again.load_state_dict(state)
    assert len(again) == 3 and [b.used for b in again] == list(plan.batches[1:])


def test_partly_used_batch_is_refused():
    plan = plan_epoch([Slice("t", 0, 0, 40)], 1, 10)[0]
    with pytest.raises(StreamError, match="partly used"):
        dataset({}, plan).load_state_dict({"used": [["t", 0, 0, 5]]})


def test_bad_records_are_counted_forwarded_and_skipped():
    logs, _ = make_logs([300], bad={(0, 5), (0, 77)})
    producer = CapturingProducer()
    plan = plan_epoch([Slice("t", 0, 0, 300)], 1, 50)[0]
    ds = dataset(logs, plan, producer=producer, max_bad_fraction=0.1)
    batches = list(ds)
    assert sum(len(b) for b in batches) == 298 and batches[0].bad == 1 and batches[0].good == (49,)
    assert ds.bad.count == 2 and ds.bad.seen == 300 and sum(ds.bad.by_reason.values()) == 2
    assert [(t, h["ddp_kbit.source.offset"]) for t, _, h in producer.sent] == [("t.dlq", b"5"), ("t.dlq", b"77")]
    assert producer.sent[0][1] == b"\x00garbage" and producer.sent[0][2]["ddp_kbit.source.partition"] == b"0"


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


def test_to_device_scales_and_orders_channels():
    from ddp_kbit.stream import StreamBatch

    imgs = torch.full((2, 3, 5, 3), 255, dtype=torch.uint8)
    x, y = to_device(StreamBatch(imgs, torch.tensor([1, 2]), ()), torch.device("cpu"))
    assert x.shape == (2, 3, 3, 5) and x.dtype == torch.float32 and float(x.max()) == 1.0
