"""Publish Fashion-MNIST slices to the embedded broker and read them back with a
plain client and independent decoders (not the project's codecs or streaming
code), checking every sample against the source and the manifest against the
offsets actually written."""
import base64
import io
import json
import subprocess
import sys
import time

import bson
import fastavro
import pytest
from confluent_kafka import Consumer, TopicPartition

from ddp_kbit import kafka
from ddp_kbit.config import KafkaConfig, PublishConfig
from ddp_kbit.data import manifest
from ddp_kbit.data.local_datasets import load_dataset
from ddp_kbit.data.publish import produce_all, publish
from ddp_kbit.errors import ClientError, UserError
from ddp_kbit.schemas import load_avro_schema, sample_pb2
from ddp_kbit.wire import get_codec

N = 240
PARTS = 3


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset("fashion-mnist", "test", limit=N)


def plain_read(servers: str, topic: str, partitions: int) -> list:
    """Everything in the topic, with a bare confluent consumer (high watermark
    from the fetch responses, as tansu's ListOffsets(latest) is off)."""
    c = Consumer({"bootstrap.servers": servers, "group.id": "plain", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, deadline = [], time.time() + 30
    while time.time() < deadline:
        out += [m for m in c.consume(1000, 0.3) if m.error() is None]
        highs = [c.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1] for p in range(partitions)]
        got = {p: sum(1 for m in out if m.partition() == p) for p in range(partitions)}
        if all(h >= 0 for h in highs) and all(got[p] >= highs[p] for p in range(partitions)):
            break
    c.close()
    return out


def reference_decode(fmt: str, value: bytes) -> dict:
    if fmt == "json":
        d = json.loads(value)
        if "data" in d:
            d["data"] = base64.b64decode(d["data"])
        return d
    if fmt == "avro":
        return fastavro.schemaless_reader(io.BytesIO(value), fastavro.parse_schema(load_avro_schema()), None)
    if fmt == "protobuf":
        m = sample_pb2.Sample.FromString(value)
        return {"index": m.index, "label": m.label, "shape": list(m.shape), "dtype": m.dtype,
                "data": m.data or None, "pixels": list(m.pixels) or None}
    d = bson.decode(value)
    assert d["_id"] == d["index"]
    return d


def latest_manifest_plain(servers: str, topic: str) -> dict:
    msgs = [m for m in plain_read(servers, "ddp_kbit.manifests", 1) if m.key() == topic.encode()]
    return json.loads(msgs[-1].value())


CASES = [(f, lay, "confluent") for f in ("json", "avro", "protobuf", "bson") for lay in ("bytes", "list")]
CASES += [(f, "bytes", "kafka-python") for f in ("json", "avro", "protobuf", "bson")]


@pytest.mark.parametrize("fmt,layout,client", CASES)
def test_publish_and_read_back_with_plain_consumer(kcfg, fmnist, topic_name, fmt, layout, client):
    cfg = KafkaConfig(bootstrap_servers=kcfg.bootstrap_servers, client=client)
    result = publish(cfg, PublishConfig(format=fmt, layout=layout, topic=topic_name, partitions=PARTS,
                                        split="test"), fmnist, progress=False)
    msgs = plain_read(kcfg.bootstrap_servers, topic_name, PARTS)
    assert len(msgs) == N == result.records
    offsets = {}
    for m in msgs:
        d = reference_decode(fmt, m.value())
        i = d["index"]
        assert m.key() == str(i).encode() and m.partition() == i % PARTS
        assert dict(m.headers()) == {"ddp_kbit.format": fmt.encode(), "ddp_kbit.schema": b"sample/v1"}
        assert (d["label"], list(d["shape"]), d["dtype"]) == (fmnist.labels[i], [28, 28], "uint8")
        if layout == "bytes":
            assert d["data"] == fmnist.images[i].tobytes() and not d.get("pixels")
        else:
            assert list(d["pixels"]) == fmnist.images[i].ravel().tolist() and not d.get("data")
        offsets.setdefault(m.partition(), []).append((m.offset(), i))
    for seen in offsets.values():  # index order within each partition
        assert [i for _, i in sorted(seen)] == sorted(i for _, i in seen)
    man = latest_manifest_plain(kcfg.bootstrap_servers, topic_name)
    assert man["partitions"] == {str(p): [min(o for o, _ in s), max(o for o, _ in s) + 1] for p, s in offsets.items()}
    assert (man["num_samples"], man["format"], man["layout"], man["shape"], man["num_classes"]) == \
        (N, fmt, layout, [28, 28], 10)
    assert man["class_names"][9] == "Ankle boot" and man["schema"] == "sample/v1"


@pytest.mark.parametrize("compression", ["gzip", "lz4", "zstd", "snappy"])
@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_compressed_topics_round_trip(kcfg, fmnist, topic_name, compression, client):
    cfg = KafkaConfig(bootstrap_servers=kcfg.bootstrap_servers, client=client)
    publish(cfg, PublishConfig(format="protobuf", topic=topic_name, partitions=2, compression=compression),
            fmnist, progress=False)
    recs = kafka.read_topic(cfg, topic_name)
    got = {sample_pb2.Sample.FromString(r.value).index: sample_pb2.Sample.FromString(r.value).data for r in recs}
    assert len(got) == N and all(got[i] == fmnist.images[i].tobytes() for i in range(N))
    assert manifest.read_all(cfg)[topic_name].compression == compression


def test_republish_refused_then_force_appends(kcfg, fmnist, topic_name):
    pcfg = PublishConfig(format="json", topic=topic_name, partitions=2, limit=10)
    small = load_dataset("fashion-mnist", "test", limit=10)
    first = publish(kcfg, pcfg, small, progress=False)
    with pytest.raises(UserError, match="already holds 10 records; pass --force"):
        publish(kcfg, pcfg, small, progress=False)
    second = publish(kcfg, PublishConfig(**{**pcfg.__dict__, "force": True}), small, progress=False)
    assert first.manifest.partitions == {0: (0, 5), 1: (0, 5)}
    assert second.manifest.partitions == {0: (5, 10), 1: (5, 10)}
    assert manifest.read_all(kcfg)[topic_name].partitions == second.manifest.partitions


def test_partition_count_mismatch_is_refused(kcfg, topic_name):
    with kafka.make_admin(kcfg) as admin:
        admin.create_topic(topic_name, 2)
    with pytest.raises(UserError, match="exists with 2 partitions, not 4"):
        publish(kcfg, PublishConfig(topic=topic_name, partitions=4), load_dataset("fashion-mnist", "test", limit=4),
                progress=False)


def test_delivery_failure_writes_no_manifest(tmp_path, fmnist):
    from ddp_kbit.kafka.broker import EmbeddedBroker

    with EmbeddedBroker(tmp_path) as b:
        cfg = KafkaConfig(bootstrap_servers=b.bootstrap_servers, request_timeout_s=2)
        with kafka.make_admin(cfg) as admin:
            admin.create_topic("doomed", 2)
        producer = kafka.make_producer(cfg, extra={"message.timeout.ms": 1500})
        producer.send("doomed", b"warm-up", partition=0)
        assert producer.flush(10) == 0
        b.stop()  # the broker goes away mid-publish
        with pytest.raises(UserError, match=f"{N} of {N} records did not land in doomed"):
            produce_all(producer, get_codec("avro"), fmnist, "doomed", 2, progress=False)


def test_end_offsets_are_high_watermarks_on_tansu(kcfg, topic_name):
    with kafka.make_producer(kcfg) as producer:
        for _ in range(3):  # several record batches, so ListOffsets(latest) lags on tansu
            for _ in range(7):
                producer.send(topic_name, b"x", partition=0)
            producer.flush(10)
    with kafka.make_consumer(kcfg) as consumer:
        assert kafka.end_offsets(consumer, [(topic_name, 0)]) == {(topic_name, 0): (0, 21)}


def test_manifest_fallback_from_broker(kcfg, fmnist, topic_name):
    with kafka.make_admin(kcfg) as admin:
        admin.create_topic(topic_name, 2)
    codec = get_codec("bson")
    with kafka.make_producer(kcfg) as producer:
        for i in range(25):
            producer.send(topic_name, codec.encode_array(i, 1, fmnist.images[i]), partition=i % 2,
                          headers=codec.headers)
        assert producer.flush(10) == 0
    m = manifest.resolve(kcfg, topic_name)
    assert (m.origin, m.format, m.shape, m.dtype, m.num_samples) == ("broker", "bson", (28, 28), "uint8", 25)
    assert m.partitions == {0: (0, 13), 1: (0, 12)}


def test_resolve_missing_topic_is_one_clear_error(kcfg):
    with pytest.raises(ClientError, match="topic nope.nope does not exist"):
        manifest.resolve(kcfg, "nope.nope")


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "producers.publish", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_publishes_and_reports(kcfg, tmp_path, topic_name):
    r = run_cli("--bootstrap-servers", kcfg.bootstrap_servers, "--limit", "50", "--format", "bson",
                "--topic", topic_name, "--run-dir", str(tmp_path), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "published 50 records" in r.stdout and "records/s" in r.stdout and "MB/s" in r.stdout
    report = json.loads((tmp_path / "publish.json").read_text())
    assert report["result"]["records"] == 50 and report["publish"]["format"] == "bson"


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_cli_unreachable_broker_fails_fast_with_one_line(tmp_path, client):
    r = run_cli("--bootstrap-servers", "127.0.0.1:9", "--client", client, "--request-timeout-s", "3",
                "--limit", "5", "--run-dir", str(tmp_path), "--log-level", "ERROR")   # bounded by run_cli's timeout
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("publish:")]
    assert lines == [lines[0]] and "cannot reach Kafka at 127.0.0.1:9" in lines[0]
    assert "Traceback" not in r.stderr


def test_cli_bad_flag_value_exits_2():
    r = run_cli("--format", "xml")
    assert r.returncode == 2 and "invalid choice: 'xml'" in r.stderr


def test_cli_embedded_broker_when_no_servers(tmp_path):
    r = run_cli("--limit", "20", "--run-dir", str(tmp_path), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "broker.log").exists() and "published 20 records" in r.stdout
