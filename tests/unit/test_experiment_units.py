"""The study's pure parts: grid, statistics (against hand-computed values), presets,
and combining the ranks' parts of a measurement."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from ddp_kbit.config import ExperimentConfig, build
from ddp_kbit.errors import ConfigError
from ddp_kbit.experiment import grid, presets, stats
from ddp_kbit.experiment.grid import Condition
from ddp_kbit.experiment.runner import combine


def test_describe_matches_hand_computed_values_outlier_included():
    d = stats.describe([10, 12, 14, 16, 100], seed=1)
    # numpy's linear quantiles of the sorted sample: q1=12, median=14, q3=16
    assert (d["n"], d["min"], d["q1"], d["median"], d["q3"], d["max"]) == (5, 10, 12, 14, 16, 100)
    assert d["iqr"] == 4 and d["whisker_low"] == 6 and d["whisker_high"] == 22 and d["outliers"] == 1
    assert d["mean"] == pytest.approx(30.4)
    assert d["std"] == pytest.approx(math.sqrt(6075.2 / 4))   # ddof 1
    assert 10 <= d["median_ci_low"] <= 14 <= d["median_ci_high"] <= 100


def test_quartiles_interpolate_linearly():
    d = stats.describe([1, 2, 3, 4], seed=0)
    assert (d["q1"], d["median"], d["q3"], d["iqr"]) == (1.75, 2.5, 3.25, 1.5)
    assert d["outliers"] == 0


def test_bootstrap_is_reproducible_with_its_seed():
    x = np.random.default_rng(3).normal(100, 10, 12)
    assert stats.median_ci(x, seed=7) == stats.median_ci(x, seed=7)
    direct = scipy_stats.bootstrap((x,), np.median, n_resamples=9999, method="percentile",
                                   rng=np.random.default_rng(7)).confidence_interval
    assert stats.median_ci(x, seed=7) == (direct.low, direct.high)
    lo, hi = stats.ratio_ci(x, x * 2, seed=7)
    assert lo < 0.5 < hi and stats.ratio_ci(x, x * 2, seed=7) == (lo, hi)


def test_degenerate_samples_have_a_point_interval():
    assert stats.median_ci([5.0, 5.0, 5.0]) == (5.0, 5.0)
    assert stats.describe([7.0])["median_ci_low"] == 7.0


def test_grid_adds_raw_and_memory_baselines():
    cfg = ExperimentConfig(formats=("json", "avro"), workloads=("publish", "ingest", "train"), num_processes=(1, 2))
    conds = grid.build(cfg)
    labels = [c.label for c in conds]
    assert "publish raw" in labels and "publish json" in labels and "publish memory" not in " ".join(labels)
    assert {"ingest raw 1p", "ingest raw 2p", "ingest memory 1p", "ingest memory 2p", "train memory 2p"} <= set(labels)
    assert not any(c.workload == "train" and c.format == "raw" for c in conds)
    assert len(conds) == len(set(conds)) == 3 + (3 * 2 + 2) + (2 * 2 + 2)
    json1 = Condition("ingest", "json", "bytes", "none", "confluent", 2)
    assert grid.baseline_of(json1, "raw") == Condition("ingest", "raw", "bytes", "none", "confluent", 2, "-")
    assert grid.baseline_of(json1, "memory") == Condition("ingest", "memory", "-", "-", "-", 2, "-")
    both = grid.build(ExperimentConfig(formats=("avro", "avro-user"), workloads=("ingest",), shuffles=("window", "none")))
    assert {c.label for c in both} == {"ingest raw 1p", "ingest avro 1p", "ingest avro shuffle-none 1p",
                                       "ingest avro-user foreign 1p", "ingest avro-user foreign shuffle-none 1p",
                                       "ingest memory 1p"}
    assert grid.topics_needed(conds) == [("avro", "bytes", "none"), ("json", "bytes", "none"), ("raw", "bytes", "none")]


def _rows(values: dict[Condition, list[float]], warmup=(), errors=()):
    out = []
    for cond, xs in values.items():
        for i, x in enumerate(xs, 1):
            out.append({**cond.as_row(), "iteration": i, "warmup": (cond, i) in warmup, "records": 100,
                        "seconds": 100 / x, "records_per_s": x, "error": "boom" if (cond, i) in errors else ""})
    return pd.DataFrame(out)


def test_summary_matches_rows_and_ratios_use_the_right_baseline():
    raw = Condition("ingest", "raw", "bytes", "none", "confluent", 1, "-")
    avro = Condition("ingest", "avro", "bytes", "none", "confluent", 1)
    mem = Condition("ingest", "memory", "-", "-", "-", 1, "-")
    rows = _rows({raw: [999, 200, 210, 190], avro: [1, 100, 110, 90, 5], mem: [1, 1000, 1000, 1000]},
                 warmup={(raw, 1), (avro, 1), (mem, 1)}, errors={(avro, 5)})
    s = stats.summarize(rows, seed=0).set_index("label")
    assert s.loc["ingest avro 1p", "n"] == 3 and s.loc["ingest avro 1p", "median"] == 100   # warmup, error left out
    assert s.loc["ingest avro 1p", "ratio_to_raw"] == pytest.approx(0.5)
    assert s.loc["ingest avro 1p", "ratio_to_memory"] == pytest.approx(0.1)
    assert s.loc["ingest avro 1p", "ratio_to_raw_low"] <= 0.5 <= s.loc["ingest avro 1p", "ratio_to_raw_high"]
    assert math.isnan(s.loc["ingest raw 1p"].get("ratio_to_raw", float("nan")))
    verdicts = stats.verdicts(s.reset_index())
    assert verdicts == ["ingest raw 1p vs avro: 2.00x, real (intervals apart)"]


def test_combine_sums_rates_over_ranks_and_keeps_the_first_error():
    row = combine([({"records": 100, "seconds": 2.0, "bytes": 800}, ""), ({"records": 60, "seconds": 1.0,
                                                                           "bytes": 480}, "")])
    assert row["records"] == 160 and row["seconds"] == 2.0 and row["records_per_s"] == 110
    assert row["rank_records_per_s"] == "50;60" and row["mb_per_s"] == pytest.approx((400 + 480) / 1e6)
    assert combine([(None, "StreamError: x"), ({"records": 1, "seconds": 1}, "")]) == {"error": "StreamError: x"}


def test_every_preset_is_a_valid_study_and_unknown_names_list_them():
    found = presets.available()
    assert {"formats", "compression", "clients", "scaling", "train"} <= set(found)
    for name in found:
        build(ExperimentConfig, presets.load(name), where="experiment")
    assert build(ExperimentConfig, presets.load("formats")).workloads == ("publish", "ingest")
    with pytest.raises(ConfigError, match="unknown preset 'nope'; available: .*formats"):
        presets.load("nope")
