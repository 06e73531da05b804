"""Pure: a study's config -> its conditions, baselines included.

Every workload is measured per format x layout x compression x client (and, for
the rank-side workloads, x processes). Baselines are conditions of their own:
``raw`` (the same client moving the raw pixel bytes with no encoding or decoding:
the ceiling of ``publish`` and ``ingest``) and ``memory`` (the same batches and
step from an in-memory tensor, no Kafka: the ceiling of ``ingest`` and ``train``).
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

from ddp_kbit.config import FOREIGN_SHAPES, ExperimentConfig

RAW, MEMORY, NA = "raw", "memory", "-"
COLUMNS = ("workload", "format", "layout", "compression", "client", "num_processes", "shuffle")
RANK_SIDE = ("ingest", "train")  # measured inside TorchDistributor ranks


@dataclass(frozen=True, order=True)
class Condition:
    workload: str
    format: str
    layout: str
    compression: str
    client: str
    num_processes: int
    shuffle: str = "window"   # the stream's plan (ingest, train); "-" for baselines and publish

    @property
    def baseline(self) -> bool:
        return self.format in (RAW, MEMORY)

    @property
    def uses_kafka(self) -> bool:
        return self.format != MEMORY

    @property
    def label(self) -> str:
        parts = [self.workload, self.format]
        if self.format != MEMORY:
            parts += [p for p in (self.layout, self.compression, self.client) if p not in ("bytes", "none", "confluent")]
        if self.workload in RANK_SIDE and self.uses_kafka and self.shuffle not in ("window", NA):
            parts.append(f"shuffle-{self.shuffle}")
        if self.workload in RANK_SIDE:
            parts.append(f"{self.num_processes}p")
        return " ".join(parts)

    def as_row(self) -> dict:
        return asdict(self)


def build(cfg: ExperimentConfig) -> list[Condition]:
    """Every condition of the study, in a fixed order (the round-robin order)."""
    out: list[Condition] = []
    for workload in cfg.workloads:
        nps = cfg.num_processes if workload in RANK_SIDE else (1,)
        shuffles = cfg.shuffles if workload in RANK_SIDE else (NA,)
        for comp, client, np_ in itertools.product(cfg.compressions, cfg.clients, nps):
            if workload in ("publish", "ingest"):
                out.append(Condition(workload, RAW, "bytes", comp, client, np_, NA))
            out += [Condition(workload, f, layout_of(f, lay), comp, client, np_, sh)
                    for f in cfg.formats for lay in cfg.layouts for sh in shuffles]
        if workload in RANK_SIDE:
            out += [Condition(workload, MEMORY, NA, NA, NA, np_, NA) for np_ in nps]
    return list(dict.fromkeys(out))


def baseline_of(cond: Condition, kind: str) -> Condition | None:
    """The ``raw`` or ``memory`` condition a measured one is compared with."""
    if cond.baseline or (kind == RAW and cond.workload == "train") or (kind == MEMORY and cond.workload == "publish"):
        return None
    if kind == RAW:
        return Condition(cond.workload, RAW, "bytes", cond.compression, cond.client, cond.num_processes, NA)
    return Condition(cond.workload, MEMORY, NA, NA, NA, cond.num_processes, NA)


def layout_of(fmt: str, layout: str) -> str:
    """A topic we did not write has the layout its shape gives it."""
    return "foreign" if fmt in FOREIGN_SHAPES else layout


def topics_needed(conditions: list[Condition]) -> list[tuple[str, str, str]]:
    """(format, layout, compression) of every topic the rank-side conditions read."""
    need = {(c.format, c.layout, c.compression) for c in conditions if c.workload in RANK_SIDE and c.uses_kafka}
    return sorted(need)
