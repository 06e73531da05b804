"""Typed reports: what each command returns and writes as ``report.json``.

Each is a dataclass with one ``to_dict()`` (the JSON, keys and meaning as they have
always been) and a one-line ``summary()``. A report also reads like the dict it
writes (``report["final"]["test_accuracy"]``), so code written against the dicts of
0.2 keeps working; new code can use the fields (``report.final.test_accuracy``).
Plain data only below the top level: a rank returns these through TorchDistributor,
and a checkpoint holds the epoch and window records as their dicts.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar


class Report(Mapping):
    """A typed record that reads like its dict. ``omit_none``: fields left out of the
    dict when they are None (keys a report has only sometimes)."""

    omit_none: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self.omit_none:
                continue
            out[f.name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, d: Mapping):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def _plain(value):
    if isinstance(value, Report):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------ training
@dataclass
class EpochRecord(Report):
    """One finished epoch, over all ranks."""

    epoch: int                       # 1-based
    train_loss: float
    val_loss: float
    val_accuracy: float
    samples: int
    seconds: float                   # wall time
    samples_per_s: float
    data_wait_fraction: float
    bad_records: int
    absent_records: int              # planned offsets never delivered (transaction markers, compaction)
    missing_records: int             # the name of absent_records before 0.3 (the same count)
    consumed: list[dict]             # the ranges used, each offset once (ConsumedRange.to_dict)


@dataclass
class WindowRecord(Report):
    """One finished window of ``--follow``."""

    omit_none: ClassVar = ("published",)

    window: int                      # 1-based
    new_records: int
    replayed_records: int
    samples: int
    seconds: float
    samples_per_s: float
    data_wait_fraction: float
    train_loss: float
    prequential_accuracy: float
    val_accuracy: float | None
    val_loss: float | None
    bad_records: int
    absent_records: int
    missing_records: int
    closed_at: float
    started_at: float
    finished_at: float
    lag: dict | None                 # records behind (at the window's start and end, per partition), seconds behind
    consumed: list[dict]
    replayed: list[dict]
    published: str | None = None     # the snapshot's path, when the window was published


@dataclass
class Final(Report):
    test_accuracy: float
    test_loss: float
    checkpoint: str | None
    model: str


@dataclass
class TrainReport(Report):
    """``ddp-kbit train``: the run, epoch by epoch (or window by window)."""

    omit_none: ClassVar = ("windows", "follow", "stopped", "report_path")

    config: dict
    spark: dict                      # master, app id, version, mode, launched_at, ranks, startup_s, stopped_by
    world_size: int
    restarts: int
    epochs: list[EpochRecord]
    final: Final
    model: dict                      # spec, parameters
    bad_records: dict                # count, seen, by_reason, dlq_topic, dlq_value_dropped
    missing_records: list[dict]      # planned ranges retention deleted (--allow-missing-records)
    attempts: list[dict]
    windows: list[WindowRecord] | None = None
    follow: dict | None = None
    stopped: dict | None = None      # a graceful stop: by, epoch (or window), step, global_step, checkpoint
    report_path: str | None = None
    mode: str = "train"

    def to_dict(self) -> dict:
        d = super().to_dict()
        return {"mode": d.pop("mode"), **d}

    def summary(self) -> str:
        if self.windows is not None:
            w = self.windows
            last = w[-1] if w else None
            behind = ((last.lag or {}).get("records_behind_at_end")) if last else None
            by = self.spark.get("stopped_by")
            return (f"followed {self.config['data'].get('train_topic')} for {len(w)} window(s) on {self.world_size} "
                    f"process(es): {sum(x.new_records for x in w)} new records trained once each"
                    f"{', stopped by ' + by if by else ''}; last window "
                    f"{last.samples_per_s if last else 0:,.0f} samples/s, prequential accuracy "
                    f"{(last.prequential_accuracy if last else 0) or 0:.4f}, records behind {behind}")
        last = self.epochs[-1] if self.epochs else None
        return (f"trained {len(self.epochs)} epoch(s) on {self.world_size} process(es): test accuracy "
                f"{self.final.test_accuracy:.4f}, test loss {self.final.test_loss:.4f}; last epoch "
                f"{last.samples_per_s if last else 0:,.0f} samples/s, data wait "
                f"{100 * (last.data_wait_fraction if last else 0):.1f}%; model {self.final.model}")


# ------------------------------------------------------------------ the other commands
@dataclass
class EvaluateReport(Report):
    topic: str
    model: dict                      # path, spec, transforms, sha256, digest, parameters
    records: int
    test_accuracy: float
    test_loss: float
    per_class: dict
    confusion: list[list[int]]
    confusion_png: str
    bad_records: dict | None
    predictions: dict | None         # topic, written, already_there
    config: dict | None = None       # the Kafka and data settings it ran with
    report_path: str | None = None
    mode: str = "evaluate"
    omit_none: ClassVar = ("report_path", "config")

    def summary(self) -> str:
        pred = self.predictions
        return (f"{self.topic}: test accuracy {self.test_accuracy:.4f}, test loss {self.test_loss:.4f} on "
                f"{self.records} records; confusion matrix {self.confusion_png}"
                + (f"; {pred['written']} predictions written to {pred['topic']} ({pred['already_there']} already "
                   "there)" if pred else ""))


@dataclass
class InspectReport(Report):
    findings: dict                   # per partition, labels, bad records by reason, bytes, files
    config: dict | None = None
    report_path: str | None = None
    mode: str = "inspect"
    omit_none: ClassVar = ("report_path", "config")

    def summary(self) -> str:
        return "\n".join(self.findings["summary"])


@dataclass
class DescribeReport(Report):
    findings: dict                   # the inferred description, bad records, whether the manifest was written
    config: dict | None = None
    report_path: str | None = None
    mode: str = "describe"
    omit_none: ClassVar = ("report_path", "config")

    def summary(self) -> str:
        f = self.findings
        bad = ", ".join(f"{n} {r}" for r, n in f["bad"].items()) or "none"
        return (f"{f['topic']}: {f['good']} of {f['records_read']} records read are {f['shape']} {f['dtype']} "
                f"samples of {f['num_classes']} classes; bad: {bad}; manifest "
                f"{'written' if f['manifest_written'] else 'not written'}")


@dataclass
class ExperimentReport(Report):
    output_dir: str
    files: dict
    rows: int
    failed: int
    table: str
    verdicts: list[str]
    config: dict | None = None
    report_path: str | None = None
    mode: str = "experiment"
    omit_none: ClassVar = ("report_path", "config")

    def summary(self) -> str:
        failed = f"; {self.failed} failed (see results.csv)" if self.failed else ""
        return "\n".join([self.table, "", *self.verdicts, "",
                          f"{self.rows} measurements{failed}; study: {self.files['report_md']}"])


@dataclass
class PublishReport(Report):
    kafka: dict
    publish: dict
    results: dict                    # split -> what was published (or found)
    result: dict | None = None       # the split's, when one was asked for (python -m producers.publish)
    report_path: str | None = None
    mode: str = "publish"
    omit_none: ClassVar = ("result", "report_path")

    def summary(self) -> str:
        return "\n".join(_published(split, r) for split, r in self.results.items())


def _published(split: str, r: dict) -> str:
    if "seconds" in r:
        return (f"published {r['records']} records to {r['topic']} in {r['seconds']:.2f}s: "
                f"{r['records_per_s']:,.0f} records/s, {r['mb_per_s']:.1f} MB/s")
    if r.get("manifest", True) is None:
        return f"published {r['records']} records to {r['topic']} (no pass completed: no manifest)"
    return f"{split}: {r['topic']} holds {r['records']} records"


__all__ = ["DescribeReport", "EpochRecord", "EvaluateReport", "ExperimentReport", "Final", "InspectReport",
           "PublishReport", "Report", "TrainReport", "WindowRecord"]
