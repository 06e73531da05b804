"""Scrape a run's /metrics like Prometheus would, then plot the dashboard's panels from
the scraped series (no Prometheus or Grafana needed):

    .venv/bin/python scripts/scrape_plot.py --url http://127.0.0.1:9400/metrics --out runs/scrape

Scrapes every --interval seconds until --duration passes or the endpoint has been gone
for 3 scrapes in a row (the run ended); writes scrape.csv (one row per sample:
seconds, name, labels, value) and dashboard.png with the panels of
monitoring/grafana/dashboards/ddp_kbit.json: samples/s, data wait, lag, bad records,
loss, accuracy.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
import urllib.request
from pathlib import Path


def scrape(url: str) -> list[tuple[str, dict, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text)
            if f.name.startswith("ddp_kbit_") for s in f.samples]


def collect(url: str, interval: float, duration: float, out: Path) -> Path:
    path, t0, gone, seen = out / "scrape.csv", time.time(), 0, False
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "name", "labels", "value"])
        while time.time() - t0 < duration and gone < 3:
            try:
                rows = scrape(url)
                gone, seen = 0, True
            except OSError:
                gone += seen   # not up yet: keep waiting; up once, then gone: the run ended
                rows = []
            now = round(time.time() - t0, 1)
            w.writerows([now, n, json.dumps(lab, sort_keys=True), v] for n, lab, v in rows)
            f.flush()
            time.sleep(interval)
    return path


def panels(csv_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    d = pd.read_csv(csv_path)
    by = lambda name: d[d["name"] == name].groupby("seconds")["value"]  # noqa: E731

    def rate(name):   # per-second increase of a counter summed over its labels (PromQL rate)
        s = by(name).sum()
        return s.diff().clip(lower=0) / s.index.to_series().diff()

    fig, ax = plt.subplots(3, 2, figsize=(12, 9), sharex=True)
    by("ddp_kbit_samples_per_second").sum().plot(ax=ax[0, 0], title="samples/s (sum of ranks)")
    rate("ddp_kbit_records_trained_total").plot(ax=ax[0, 0], style="--", label="rate(records_trained_total)")
    ax[0, 0].legend(["samples/s gauge", "rate(records_trained_total)"], fontsize=8)
    wait = rate("ddp_kbit_data_wait_seconds_sum") / rate("ddp_kbit_step_seconds_sum")
    (100 * wait).plot(ax=ax[0, 1], title="data wait, % of step time")
    by("ddp_kbit_consumer_lag_records").sum().plot(ax=ax[1, 0], title="consumer lag (records, all partitions)")
    by("ddp_kbit_bad_records_total").sum().plot(ax=ax[1, 1], title="bad records (total)")
    by("ddp_kbit_loss").mean().plot(ax=ax[2, 0], title="training loss (mean of ranks)")
    for name, label in (("ddp_kbit_eval_accuracy", "evaluation"), ("ddp_kbit_prequential_accuracy", "prequential")):
        s = by(name).max()
        if len(s):
            s.plot(ax=ax[2, 1], label=label)
    ax[2, 1].set_title("accuracy")
    ax[2, 1].legend(fontsize=8)
    for a in ax[2]:
        a.set_xlabel("seconds since the first scrape")
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=3600.0)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = collect(args.url, args.interval, args.duration, args.out)
    panels(path, args.out / "dashboard.png")
    print(f"{path} and {args.out / 'dashboard.png'}")


if __name__ == "__main__":
    main()
