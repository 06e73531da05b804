"""Publish a dataset to a topic in a v1 wire format, then write its manifest.

Sample i goes to partition ``i % partitions``, in index order; acks=all with
idempotence; the manifest is written only after every record was acknowledged,
so a manifest never points at data that did not land.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from ddp_kbit import kafka
from ddp_kbit.config import KafkaConfig, PublishConfig, SyntheticConfig
from ddp_kbit.data import manifest
from ddp_kbit.data.local_datasets import Dataset, load_dataset
from ddp_kbit.errors import UserError
from ddp_kbit.progress import Progress
from ddp_kbit.wire import Codec, get_codec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishResult:
    topic: str
    records: int
    bytes: int
    seconds: float
    manifest: manifest.Manifest

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else float("inf")

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else float("inf")

    def summary(self) -> dict:
        return {"topic": self.topic, "records": self.records, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "records_per_s": round(self.records_per_s, 1), "mb_per_s": round(self.mb_per_s, 3),
                "partitions": {str(p): list(r) for p, r in self.manifest.partitions.items()}}


def check_target(kcfg: KafkaConfig, topic: str, partitions: int, force: bool) -> None:
    """Refuse to mix a new publish into a topic that already holds records (unless
    --force), and refuse a partition count the topic cannot honour."""
    with kafka.make_admin(kcfg) as admin:
        topics = admin.topics()
        if topic not in topics:
            admin.create_topic(topic, partitions)
            return
    if topics[topic] != partitions:
        raise UserError(f"topic {topic} exists with {topics[topic]} partitions, not {partitions}; "
                        f"pass --partitions {topics[topic]} or choose another --topic")
    bounds = kafka.partition_bounds(kcfg, topic, range(partitions), group_id="ddp_kbit.publisher")
    held = sum(hi - lo for lo, hi in bounds.values())
    if held and not force:
        raise UserError(f"topic {topic} already holds {held} records; pass --force to append "
                        "(the new manifest covers only the new records)")


def produce_all(producer, codec: Codec, ds: Dataset, topic: str, partitions: int,
                progress: bool) -> tuple[int, float]:
    """Encode and send every sample, then wait for every acknowledgement.
    Returns (bytes of the values, seconds from the first send to the last ack)."""
    headers = codec.headers
    total_bytes, start = 0, time.perf_counter()
    with Progress(len(ds), f"publish {topic}", unit="rec", enabled=progress) as bar:
        for i in range(len(ds)):
            value = codec.encode_array(i, int(ds.labels[i]), ds.images[i])
            producer.send(topic, value, key=str(i).encode("ascii"), partition=i % partitions, headers=headers)
            total_bytes += len(value)
            if i % 1000 == 999 or i == len(ds) - 1:
                bar.update(i % 1000 + 1)
    pending = producer.flush(300)
    if pending or producer.report.failed:
        lost = pending + producer.report.failed
        raise UserError(f"{lost} of {len(ds)} records did not land in {topic} "
                        f"({producer.report.first_error or 'delivery timed out'}); no manifest written")
    return total_bytes, time.perf_counter() - start


def publish(kcfg: KafkaConfig, pcfg: PublishConfig, ds: Dataset, progress: bool = True) -> PublishResult:
    topic, codec = pcfg.topic_name, get_codec(pcfg.format, pcfg.layout)
    if pcfg.layout == "list" and ds.images.dtype != "uint8":
        raise UserError(f"the list layout carries uint8 only; {ds.name} is {ds.images.dtype}")
    check_target(kcfg, topic, pcfg.partitions, pcfg.force)
    with kafka.make_producer(kcfg, pcfg.compression) as producer:
        nbytes, seconds = produce_all(producer, codec, ds, topic, pcfg.partitions, progress)
        ranges = producer.report.ranges_of(topic)
    found = sum(e - s for s, e in ranges.values())
    if found != len(ds):  # a gap would mean the manifest points at records we did not write
        raise UserError(f"acknowledged offsets cover {found} records, expected {len(ds)}; no manifest written")
    m = manifest.Manifest(topic=topic, dataset=ds.name, split=pcfg.split, format=pcfg.format, layout=pcfg.layout,
                          num_samples=len(ds), shape=ds.shape, dtype=str(ds.images.dtype),
                          num_classes=ds.num_classes, class_names=ds.class_names,
                          partitions=dict(sorted(ranges.items())), compression=pcfg.compression)
    manifest.write(kcfg, m, pcfg.manifest_topic)
    return PublishResult(topic, len(ds), nbytes, seconds, m)


def publish_live(kcfg: KafkaConfig, pcfg: PublishConfig, ds: Dataset, progress: bool = True,
                 stop=None) -> PublishResult:
    """Append ``ds`` to the topic at ``pcfg.rate`` records/s, pass after pass, for
    ``duration_s`` seconds or ``repeat`` passes (default: one pass), keys continuing
    the index across passes and earlier records. After each completed pass (every
    record of it acknowledged) a manifest covers everything acknowledged so far: a
    bounded run can train on that snapshot, and a ``--follow`` run reads the sample
    type from it. ``stop()``: checked between records (tests, signals)."""
    topic, codec = pcfg.topic_name, get_codec(pcfg.format, pcfg.layout)
    check_target(kcfg, topic, pcfg.partitions, force=True)
    found = manifest.read_all(kcfg, pcfg.manifest_topic).get(topic)
    bounds = kafka.partition_bounds(kcfg, topic, range(pcfg.partitions), group_id="ddp_kbit.publisher")
    base = sum(hi - lo for lo, hi in bounds.values())
    starts = dict(found.partitions) if found else {}
    headers, sent, nbytes, t0 = codec.headers, 0, 0, time.perf_counter()
    deadline = t0 + pcfg.duration_s if pcfg.duration_s else None
    passes = pcfg.repeat or (None if deadline else 1)
    m = found
    with kafka.make_producer(kcfg, pcfg.compression) as producer, \
            Progress(len(ds) * (passes or 1), f"publish {topic} at {pcfg.rate:g}/s", unit="rec",
                     enabled=progress) as bar:
        done = 0
        while (passes is None or done < passes) and not _over(deadline, stop):
            for i in range(len(ds)):
                if _over(deadline, stop):
                    break
                _pace(t0, sent, pcfg.rate)
                index = base + sent
                value = codec.encode_array(index, int(ds.labels[i]), ds.images[i])
                producer.send(topic, value, key=str(index).encode("ascii"), partition=index % pcfg.partitions,
                              headers=headers)
                sent, nbytes = sent + 1, nbytes + len(value)
                bar.update(1)
            else:
                done += 1
                m = _live_manifest(kcfg, pcfg, ds, producer, topic, starts)
        if producer.flush(60) or producer.report.failed:
            raise UserError(f"{producer.report.pending + producer.report.failed} of {sent} records did not land in "
                            f"{topic} ({producer.report.first_error or 'delivery timed out'})")
    seconds = time.perf_counter() - t0
    log.info("published %d records to %s in %d complete pass(es), %.0f records/s", sent, topic, done, sent / seconds)
    return PublishResult(topic, sent, nbytes, seconds, m)


def _over(deadline: float | None, stop) -> bool:
    return (deadline is not None and time.perf_counter() >= deadline) or (stop is not None and stop())


def _pace(t0: float, sent: int, rate: float) -> None:
    """Hold record ``sent`` until its time, t0 + sent / rate (each send serves deliveries)."""
    wait = t0 + sent / rate - time.perf_counter()
    if wait > 0:
        time.sleep(wait)


def _live_manifest(kcfg, pcfg, ds, producer, topic, starts: dict) -> manifest.Manifest:
    """A manifest of everything acknowledged so far (never of what is still in flight)."""
    if producer.flush(60) or producer.report.failed:
        raise UserError(f"records did not land in {topic} ({producer.report.first_error or 'delivery timed out'}); "
                        "no manifest written")
    acked = producer.report.ranges_of(topic)
    parts = {p: (starts.get(p, r)[0], r[1]) for p, r in acked.items()}
    m = manifest.Manifest(topic=topic, dataset=ds.name, split=pcfg.split, format=pcfg.format, layout=pcfg.layout,
                          num_samples=sum(e - s for s, e in parts.values()), shape=ds.shape,
                          dtype=str(ds.images.dtype), num_classes=ds.num_classes, class_names=ds.class_names,
                          partitions=dict(sorted(parts.items())), compression=pcfg.compression)
    manifest.write(kcfg, m, pcfg.manifest_topic)
    return m


def ensure_published(kcfg: KafkaConfig, pcfg: PublishConfig, splits=("train", "test"),
                     synthetic: SyntheticConfig | None = None, progress: bool = True) -> dict[str, manifest.Manifest]:
    """The manifest of each split's topic, publishing the split first when its
    topic has no manifest yet (a fresh broker, or a new format)."""
    found = manifest.read_all(kcfg, pcfg.manifest_topic)
    out = {}
    for split in splits:
        cfg = replace(pcfg, split=split, topic=None if len(splits) > 1 else pcfg.topic)
        if cfg.topic_name in found:
            log.info("%s already published (%d records)", cfg.topic_name, found[cfg.topic_name].num_samples)
            out[split] = found[cfg.topic_name]
            continue
        ds = load_dataset(cfg.dataset, split, cfg.data_dir, cfg.limit, synthetic)
        result = publish(kcfg, cfg, ds, progress)
        log.info("published %d records to %s: %.0f records/s", result.records, result.topic, result.records_per_s)
        out[split] = result.manifest
    return out
