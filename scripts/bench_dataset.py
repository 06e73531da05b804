"""KafkaDataset in a user's loop against the experiment's ingest path and the tight
raw consume loop, on the same topic, interleaved in one run (one process, no model):

    .venv/bin/python scripts/bench_dataset.py --bootstrap-servers HOST:PORT [--topic T] [--iterations 5]

Without --topic it publishes 60,000 Fashion-MNIST records as Avro first. Prints the
median records/s of each and the ratios (compare ratios, not absolutes, across machines).
"""
from __future__ import annotations

import argparse
import statistics
import time

from ddp_kbit import KafkaDataset
from ddp_kbit.config import DataConfig, KafkaConfig, PublishConfig
from ddp_kbit.data import manifest
from ddp_kbit.data.local_datasets import load_dataset
from ddp_kbit.data.plan import Shuffle, plan_epoch, ranges_to_slices
from ddp_kbit.data.publish import publish
from ddp_kbit.experiment.measure import raw_drain, stream_drain


def user_loop(ds: KafkaDataset, epoch: int) -> int:
    """What a user writes each epoch, less the model: set_epoch, iterate, mark used
    (the experiment's ingest does not move batches to a device either)."""
    ds.set_epoch(epoch)
    n = 0
    for batch in ds:
        ds.mark_used(batch)
        n += len(batch)
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--topic")
    p.add_argument("--iterations", type=int, default=5)
    args = p.parse_args()
    kcfg = KafkaConfig(bootstrap_servers=args.bootstrap_servers)
    topic = args.topic
    if topic is None:
        topic = f"bench.dataset.{time.time_ns()}"
        publish(kcfg, PublishConfig(topic=topic), load_dataset("fashion-mnist", "train"), progress=False)
    m = manifest.resolve(kcfg, topic)
    data = DataConfig()
    slices = ranges_to_slices(m.topic, m.partitions)
    plan = lambda epoch: plan_epoch(slices, 1, 128, 0, epoch, Shuffle.of(data))[0]  # noqa: E731  the user loop's plans
    ds = KafkaDataset(topic, kafka=kcfg, batch_size=128, forwarded=set())   # made once, like a user's
    ways = {"raw consume loop": lambda it: raw_drain(kcfg, plan(it)),
            "experiment ingest (KafkaStreamDataset)": lambda it: stream_drain(kcfg, data, m, plan(it)),
            "KafkaDataset in a user loop": lambda it: user_loop(ds, it)}
    rates = {name: [] for name in ways}
    for it in range(args.iterations + 1):   # the first round warms up (connections, page cache)
        for name, fn in ways.items():
            t0 = time.perf_counter()
            n = fn(it)
            if it:
                rates[name].append(n / (time.perf_counter() - t0))
    med = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        print(f"{name:42s} median {med[name]:>10,.0f} records/s  (min {min(r):,.0f}, max {max(r):,.0f})")
    user, ingest = med["KafkaDataset in a user loop"], med["experiment ingest (KafkaStreamDataset)"]
    print(f"KafkaDataset / experiment ingest: {user / ingest:.3f}")
    print(f"KafkaDataset / raw loop:          {user / med['raw consume loop']:.3f}")


if __name__ == "__main__":
    main()
