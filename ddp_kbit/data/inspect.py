"""``--mode inspect --topic T``: a look at a topic before training on it (all of it,
or ``--limit`` records): records per partition, the labels' histogram, the sample
type, bad records by reason with example offsets, bytes per record, a PNG grid of
samples with their labels and ``sample_batch.pt`` (``{"images", "labels"}``: loads
with ``weights_only=True``) in the run directory. v1 topics (manifest, or the
broker's offsets) and described foreign topics alike."""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import torch

from ddp_kbit.config import KafkaConfig, SourceConfig
from ddp_kbit.data import manifest as manifests
from ddp_kbit.data.describe import codec_for, describe, sample_records
from ddp_kbit.plots import plot_image_grid


def inspect_topic(kcfg: KafkaConfig, topic: str, run_dir: Path, limit: int | None = None,
                  source: SourceConfig | None = None, grid: int = 32, batch: int = 64) -> dict:
    m = describe(kcfg, topic, source, write=False)[0] if source is not None and source.described \
        else manifests.resolve(kcfg, topic)
    records, bounds = sample_records(kcfg, topic, limit)
    decoded = codec_for(m, source).decode_batch([r.value for r in records], m.shape, m.dtype, m.num_classes)
    sizes = np.array([len(r.value or b"") for r in records], dtype=np.int64)
    per_partition = collections.Counter(r.partition for r in records)
    by_reason = collections.Counter(e.reason for _, e in decoded.errors)
    examples: dict = collections.defaultdict(list)
    for pos, e in decoded.errors:
        if len(examples[e.reason]) < 5:
            examples[e.reason].append({"partition": records[pos].partition, "offset": records[pos].offset,
                                       "error": str(e)[:200]})
    names = list(m.class_names) if m.class_names else None
    labels = collections.Counter(decoded.labels.tolist())
    images = decoded.images[:batch]
    torch.save({"images": torch.from_numpy(np.ascontiguousarray(images)),
                "labels": torch.from_numpy(decoded.labels[:batch].astype(np.int64))}, run_dir / "sample_batch.pt")
    png = run_dir / "samples.png"
    if len(decoded):
        shown = images[:grid]
        plot_image_grid(shown if shown.dtype == np.uint8 else np.clip(shown, 0, None), decoded.labels[:grid].tolist(),
                        names, png, f"{topic}: {len(shown)} of {len(decoded)} good records")
    found = {
        "topic": topic, "origin": m.origin, "format": m.format, "records_read": len(records),
        "records_on_broker": int(sum(hi - lo for lo, hi in bounds.values())),
        "per_partition": {str(p): {"read": per_partition.get(p, 0), "start": lo, "end": hi}
                          for p, (lo, hi) in sorted(bounds.items())},
        "shape": list(m.shape), "dtype": m.dtype, "num_classes": m.num_classes,
        "labels": {(names[k] if names and 0 <= k < len(names) else str(k)): int(v) for k, v in sorted(labels.items())},
        "good": len(decoded), "bad": dict(sorted(by_reason.items())), "bad_examples": dict(examples),
        "bytes_per_record": {"mean": float(sizes.mean()) if len(sizes) else 0.0,
                             "min": int(sizes.min()) if len(sizes) else 0, "max": int(sizes.max()) if len(sizes) else 0},
        "sample_batch": str(run_dir / "sample_batch.pt"), "png": str(png) if len(decoded) else None,
    }
    found["summary"] = summary_lines(found)
    return found


def summary_lines(f: dict) -> list[str]:
    parts = ", ".join(f"[{p}] {v['read']}" for p, v in f["per_partition"].items())
    lines = [f"{f['topic']}: {f['records_read']} of {f['records_on_broker']} records read ({parts})",
             f"samples: {f['shape']} {f['dtype']}, {f['format']} ({f['origin']}); "
             f"{f['bytes_per_record']['mean']:.0f} bytes per record (min {f['bytes_per_record']['min']}, "
             f"max {f['bytes_per_record']['max']})",
             f"labels: {f['labels']}"]
    if f["bad"]:
        for reason, n in f["bad"].items():
            at = ", ".join(f"[{e['partition']}]@{e['offset']}" for e in f["bad_examples"][reason])
            lines.append(f"bad: {n} {reason} (e.g. {at})")
    else:
        lines.append("bad: none")
    lines.append(f"files: {f['png']}, {f['sample_batch']}")
    return lines
