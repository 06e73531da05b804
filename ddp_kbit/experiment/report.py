"""A study's plots, printed table and ``report.md``: the tables and plots in one place."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ddp_kbit import plots
from ddp_kbit.config import ExperimentConfig
from ddp_kbit.experiment.grid import MEMORY, RAW
from ddp_kbit.experiment.stats import METRIC, measured


def _label_rows(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {w: g for w, g in summary[summary["n"] > 0].groupby("workload", sort=False)}


def make_plots(rows: pd.DataFrame, summary: pd.DataFrame, out: Path) -> list[Path]:
    made = []
    good = measured(rows)
    labels = dict(zip(summary[["workload", "format", "layout", "compression", "client", "num_processes"]]
                      .astype(str).agg("|".join, axis=1), summary["label"]))
    samples: dict[str, dict[str, list[float]]] = {}
    for w, g in _label_rows(summary).items():   # the summary's order of conditions, in every plot
        samples[w] = {label: [] for label in g["label"]}
    for _, r in good.iterrows():
        key = "|".join(str(r[c]) for c in ("workload", "format", "layout", "compression", "client", "num_processes"))
        samples.setdefault(r["workload"], {}).setdefault(labels.get(key, key), []).append(float(r[METRIC]))
    samples = {w: {k: v for k, v in by.items() if v} for w, by in samples.items()}
    samples = {w: by for w, by in samples.items() if by}
    if samples:
        made.append(plots.study_boxplot(samples, out / "records_per_s.png"))
    for base in (RAW, MEMORY):
        col = f"ratio_to_{base}"
        if col in summary and summary[col].notna().any():
            ratios = {w: [{"label": r["label"], "ratio": r[col], "low": r[f"{col}_low"], "high": r[f"{col}_high"]}
                          for r in g.to_dict("records") if not _nan(r.get(col))]
                      for w, g in _label_rows(summary).items()}
            made.append(plots.study_ratios({w: v for w, v in ratios.items() if v}, out / f"ratio_to_{base}.png", base))
    pub = summary[(summary["workload"] == "publish") & summary.get("bytes_per_record", pd.Series(dtype=float)).notna()]
    if len(pub):
        made.append(plots.study_bytes(pub[["label", "bytes_per_record"]].to_dict("records"), out / "bytes_per_record.png"))
    if summary["num_processes"].nunique() > 1:
        lines: dict[str, list] = {}
        for r in summary[(summary["n"] > 0) & (summary["format"] != MEMORY)].to_dict("records"):  # Kafka paths
            key = r["label"].rsplit(" ", 1)[0]
            lines.setdefault(key, []).append((int(r["num_processes"]), r["median"], r["median_ci_low"],
                                              r["median_ci_high"]))
        made.append(plots.study_scaling(lines, out / "scaling.png"))
    return made


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v, spec=",.0f") -> str:
    return "" if _nan(v) else format(v, spec)


def _ratio(r: dict, base: str) -> str:
    col = f"ratio_to_{base}"
    if _nan(r.get(col)):
        return ""
    return f"{r[col]:.2f} [{r[col + '_low']:.2f}, {r[col + '_high']:.2f}]"


def table(summary: pd.DataFrame) -> str:
    """The printed table: one line per condition."""
    head = (f"{'condition':<34}{'n':>3}{'median rec/s':>14}{'95% CI':>28}{'IQR':>11}{'out':>4}"
            f"{'vs raw':>20}{'vs memory':>20}{'B/rec':>7}")
    lines = [head, "-" * len(head)]
    for r in summary.to_dict("records"):
        ci = f"[{_fmt(r.get('median_ci_low'))}, {_fmt(r.get('median_ci_high'))}]" if r.get("n") else ""
        lines.append(f"{r['label']:<34}{int(r.get('n', 0)):>3}{_fmt(r.get('median')):>14}{ci:>28}"
                     f"{_fmt(r.get('iqr')):>11}{_fmt(r.get('outliers'), '.0f'):>4}{_ratio(r, RAW):>20}"
                     f"{_ratio(r, MEMORY):>20}{_fmt(r.get('bytes_per_record')):>7}")
    return "\n".join(lines)


def markdown(study: dict, env: dict, summary: pd.DataFrame, verdicts: list[str], made: list[Path],
             cfg: ExperimentConfig) -> str:
    v = env["versions"]
    parts = [f"# Study `{study['preset']}`", "", study["description"] or "", "",
             f"Command: `{study['command']}`", "",
             f"{cfg.iterations} measured iterations per condition (+{cfg.warmup} warmup, left out), interleaved "
             f"round-robin; statistics of records/s; {int(cfg.confidence * 100)}% percentile-bootstrap intervals "
             f"(seed {cfg.seed}) of the median and of each ratio.", "",
             f"Machine: {env['cpu_count']} CPUs ({env['cpu_model']}), GPU {env['gpu'] or 'none'}; broker "
             f"{env['broker']['kind']}; Python {env['python']}, torch {v.get('torch')}, pyspark {v.get('pyspark')}, "
             f"confluent-kafka {v.get('confluent-kafka')} (librdkafka {v.get('librdkafka')}), kafka-python "
             f"{v.get('kafka-python')}; commit {env['git_commit']}.", "",
             "## Results", "", "```", table(summary), "```", "",
             "`raw`: the same client moving the raw pixel bytes, no encoding or decoding (the Kafka ceiling); "
             "`memory`: the same batches (and step) from an in-memory tensor (the no-Kafka ceiling). `B/rec`: "
             "bytes per record on the wire (publish, after compression) or per value read (ingest).", "",
             "## Which differences are real", ""]
    parts += [f"- {line}" for line in verdicts] or ["- (one condition per group: nothing to compare)"]
    parts += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in made]
    return "\n".join(parts) + "\n"
