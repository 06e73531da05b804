"""A topic of an exactly-once producer against the same records written plainly, one
epoch each on the same machine: epoch seconds, data wait, absent offsets.

    .venv/bin/python scripts/bench_transactional.py [--records 6000] [--processes 2]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer

import ddp_kbit
from ddp_kbit import kafka
from ddp_kbit.config import KafkaConfig
from ddp_kbit.data import manifest
from ddp_kbit.data.local_datasets import load_dataset
from ddp_kbit.kafka.broker import EmbeddedBroker
from ddp_kbit.wire import get_codec


def write(kcfg, topic: str, n: int, transactional: bool) -> None:
    """n/2 committed records, (transactional: an aborted batch,) n/2 committed, over 2 partitions."""
    ds, codec = load_dataset("fashion-mnist", "train", limit=n), get_codec("protobuf")
    with kafka.make_admin(kcfg) as admin:
        admin.create_topic(topic, 2)
    conf = {"bootstrap.servers": kcfg.bootstrap_servers}
    p = Producer({**conf, "transactional.id": f"{topic}.tx"} if transactional else conf)
    if transactional:
        p.init_transactions(30)
    parts = [(range(0, n // 2), True), (range(0, 40), False), (range(n // 2, n), True)] if transactional else \
        [(range(n), True)]
    for part, commit in parts:
        if transactional:
            p.begin_transaction()
        for i in part:
            p.produce(topic, codec.encode_array(i, int(ds.labels[i]), ds.images[i]), key=str(i).encode(),
                      partition=i % 2, headers=codec.headers)
        p.flush(30)
        if transactional:
            p.commit_transaction(30) if commit else p.abort_transaction(30)
    with kafka.make_consumer(kcfg) as c:
        ends = kafka.end_offsets(c, [(topic, 0), (topic, 1)])
    manifest.write(kcfg, manifest.Manifest(topic=topic, dataset="fashion-mnist", split="train", format="protobuf",
                                           layout="bytes", num_samples=n, shape=(28, 28), dtype="uint8",
                                           num_classes=10, class_names=None,
                                           partitions={q: (0, ends[(topic, q)][1]) for q in (0, 1)}))


def main(argv=None) -> int:
    a = argparse.ArgumentParser(description=__doc__)
    a.add_argument("--records", type=int, default=6000)
    a.add_argument("--processes", type=int, default=2)
    args = a.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-tx-"))
    with EmbeddedBroker(tmp / "broker") as broker:
        kcfg = KafkaConfig(bootstrap_servers=broker.bootstrap_servers)
        ddp_kbit.publish(bootstrap_servers=broker.bootstrap_servers, split="test", limit=1000, topic="bench.test")
        print("topic          epoch s  data wait  samples  absent")
        for name, tx in (("plain", False), ("transactional", True)):
            topic = f"bench.{name}.{time.time_ns()}"
            write(kcfg, topic, args.records, tx)
            r = ddp_kbit.fit(bootstrap_servers=broker.bootstrap_servers, train_topic=topic, test_topic="bench.test",
                             epochs=1, num_processes=args.processes, model="cnn", lr_schedule="cosine", lr=1e-3,
                             progress=False, log_level="WARNING", run_dir=str(tmp / name))
            e = r["epochs"][0]
            print(f"{name:14} {e['seconds']:8.2f} {100 * e['data_wait_fraction']:9.1f}% {e['samples']:8d} "
                  f"{e['absent_records']:7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
