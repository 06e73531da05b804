"""Pure statistics of a study's results (numpy, pandas, scipy; nothing hand-rolled).

Per condition, of ``records_per_s`` over the measured (non-warmup, error-free)
iterations: n, mean, std (ddof 1), min, q1, median, q3, max (numpy's default,
linear, quantiles), iqr, whisker bounds at 1.5 IQR, outlier count, and a seeded
percentile-bootstrap confidence interval of the median; then each condition's
median as a ratio to its ``raw`` and ``memory`` baselines, each ratio with its
own bootstrap interval (both samples resampled independently).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ddp_kbit.experiment.grid import COLUMNS, MEMORY, RAW, Condition, baseline_of

METRIC = "records_per_s"
N_RESAMPLES = 9999
MIN_N = 3   # fewer measured iterations give no interval worth comparing


def describe(values, seed: int = 0, confidence: float = 0.95) -> dict:
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return {"n": 0}
    q1, median, q3 = np.quantile(x, [0.25, 0.5, 0.75])
    iqr = q3 - q1
    lo, hi = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    ci = median_ci(x, seed, confidence)
    return {"n": len(x), "mean": x.mean(), "std": x.std(ddof=1) if len(x) > 1 else 0.0, "min": x.min(),
            "q1": q1, "median": median, "q3": q3, "max": x.max(), "iqr": iqr, "whisker_low": lo,
            "whisker_high": hi, "outliers": int(((x < lo) | (x > hi)).sum()),
            "median_ci_low": ci[0], "median_ci_high": ci[1]}


def _bootstrap(samples: tuple, statistic, seed: int, confidence: float) -> tuple[float, float]:
    if all(len(s) < 2 or np.ptp(s) == 0 for s in samples):  # nothing to resample: the interval is the point
        v = float(statistic(*samples, axis=-1))
        return v, v
    res = stats.bootstrap(samples, statistic, n_resamples=N_RESAMPLES, confidence_level=confidence,
                          method="percentile", vectorized=True, paired=False, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def median_ci(x, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    return _bootstrap((np.asarray(x, float),), lambda a, axis: np.median(a, axis=axis), seed, confidence)


def ratio_ci(x, y, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Interval of median(x) / median(y), x and y resampled independently."""
    return _bootstrap((np.asarray(x, float), np.asarray(y, float)),
                      lambda a, b, axis: np.median(a, axis=axis) / np.median(b, axis=axis), seed, confidence)


def measured(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows that count: not warmup, no error."""
    ok = ~rows["warmup"].astype(bool) & (rows["error"].fillna("") == "")
    return rows[ok]


def summarize(rows: pd.DataFrame, seed: int = 0, confidence: float = 0.95) -> pd.DataFrame:
    """One row per condition: its columns, the statistics, and the baseline ratios."""
    good = measured(rows)
    samples = {Condition(*key): grp[METRIC].to_numpy(float) for key, grp in good.groupby(list(COLUMNS), sort=False)}
    out = []
    for cond in sorted({Condition(*k) for k in rows[list(COLUMNS)].itertuples(index=False, name=None)}):
        x = samples.get(cond, np.empty(0))
        row = {**cond.as_row(), "label": cond.label, **describe(x, seed, confidence)}
        for kind in (RAW, MEMORY):
            base = baseline_of(cond, kind)
            y = samples.get(base) if base else None
            if y is not None and len(y) and len(x):
                lo, hi = ratio_ci(x, y, seed, confidence)
                row.update({f"ratio_to_{kind}": np.median(x) / np.median(y), f"ratio_to_{kind}_low": lo,
                            f"ratio_to_{kind}_high": hi})
        extra = good[(good[list(COLUMNS)] == pd.Series(cond.as_row())).all(axis=1)]
        for col in ("bytes_per_record", "mb_per_s", "data_wait_fraction", "test_accuracy"):
            if col in extra and extra[col].notna().any():
                row[col] = float(extra[col].median())
        out.append(row)
    return pd.DataFrame(out)


def verdicts(summary: pd.DataFrame) -> list[str]:
    """Which differences between the formats of one group are real (their median
    intervals do not overlap) and which are noise."""
    lines = []
    group_cols = ["workload", "layout", "compression", "client", "num_processes"]
    kafka_rows = summary[(summary["format"] != MEMORY) & (summary["n"] > 0)]
    for _, grp in kafka_rows.groupby(group_cols, sort=False):
        ranked = grp.sort_values("median", ascending=False).to_dict("records")
        for a, b in zip(ranked, ranked[1:]):
            if min(a["n"], b["n"]) < MIN_N:
                verdict = f"too few iterations to tell (n < {MIN_N})"
            elif a["median_ci_low"] > b["median_ci_high"]:
                verdict = "real (intervals apart)"
            else:
                verdict = "noise (intervals overlap)"
            lines.append(f"{a['label']} vs {b['format']}: {a['median'] / b['median']:.2f}x, {verdict}")
    return lines
