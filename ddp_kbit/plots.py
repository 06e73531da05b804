"""PNG plots (matplotlib, Agg): the training report's, and a study's. Plain data in
(dicts, pandas frames), files out; matplotlib is imported only here."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _whole_numbers(*axes) -> None:
    """Epochs and windows are counted: integer ticks only."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_training(report: dict, path: str | Path) -> Path:
    plt = _pyplot()
    ep = [e["epoch"] for e in report["epochs"]]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8))
    a.plot(ep, [e["train_loss"] for e in report["epochs"]], "o-", label="train")
    a.plot(ep, [e["val_loss"] for e in report["epochs"]], "o-", label="test")
    a.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    a.legend()
    b.plot(ep, [e["val_accuracy"] for e in report["epochs"]], "o-")
    b.set(title="test accuracy", xlabel="epoch", ylabel="accuracy")
    c.bar(ep, [e["samples_per_s"] for e in report["epochs"]], label="samples/s")
    c2 = c.twinx()
    c2.plot(ep, [100 * e["data_wait_fraction"] for e in report["epochs"]], "r.-", label="data wait")
    c.set(title="speed: samples/s (bars), data wait (line)", xlabel="epoch", ylabel="samples/s")
    c2.set_ylabel("data wait, % of step time", color="tab:red")
    c2.set_ylim(bottom=0)
    _whole_numbers(a, b, c)
    fig.suptitle(f"ddp_kbit train: {report['world_size']} process(es), restarts {report['restarts']}")
    return _save(plt, fig, path)


def plot_windows(report: dict, path: str | Path) -> Path:
    """--follow: accuracy (prequential and test), how far behind the topic the run is
    (records, and the age of the newest trained record), and speed, per window."""
    plt = _pyplot()
    w = report["windows"]
    t0 = w[0]["closed_at"] if w else 0
    t = [x["finished_at"] - t0 for x in w]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8))
    a.plot(t, [x["prequential_accuracy"] for x in w], "o-", label="prequential (test-then-train)")
    if any(x.get("val_accuracy") is not None for x in w):
        a.plot(t, [x.get("val_accuracy") for x in w], "o-", label="test topic")
    a.set(title="accuracy per window", xlabel="seconds since the first window closed", ylabel="accuracy")
    a.legend(fontsize=8)
    b.plot(t, [sum((x.get("lag") or {}).get("records_behind_at_end", {}).values()) for x in w], "o-",
           color="tab:blue")
    b.set(title="behind the topic after each window", xlabel="seconds since the first window closed")
    b.set_ylabel("lag: records not trained yet", color="tab:blue")
    b2 = b.twinx()
    b2.plot(t, [(x.get("lag") or {}).get("seconds_behind") for x in w], "r.-")
    b2.set_ylabel("age of the newest trained record, s", color="tab:red")
    c.bar(range(1, len(w) + 1), [x["samples_per_s"] for x in w])
    c.set(title="samples/s per window", xlabel="window", ylabel="samples/s")
    _whole_numbers(c)
    fig.suptitle(f"ddp_kbit --follow: {len(w)} window(s), {report['world_size']} process(es)")
    return _save(plt, fig, path)


def plot_confusion(matrix, class_names, path: str | Path, title: str) -> Path:
    plt = _pyplot()
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xticklabels=class_names, yticklabels=class_names,
           xlabel="predicted", ylabel="true", title=title)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(matrix[i][j])), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i][j] > max(map(max, matrix)) / 2 else "black")
    fig.colorbar(im, ax=ax)
    return _save(plt, fig, path)


def plot_image_grid(images, labels, names, path: str | Path, title: str, cols: int = 8) -> Path:
    """Sample images (N x H x W, or N x H x W x C) with their labels."""
    plt = _pyplot()
    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k], cmap="gray" if images[k].ndim == 2 else None)
            ax.set_title(str(names[labels[k]]) if names else str(labels[k]), fontsize=7)
    fig.suptitle(title)
    return _save(plt, fig, path)


def _save(plt, fig, path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def study_boxplot(samples: dict[str, dict[str, list[float]]], path: str | Path) -> Path:
    """``samples``: workload -> condition label -> measured records/s (in the study's
    order of conditions, the same in every plot, top to bottom)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(samples), figsize=(6.5 * len(samples), 4.2), squeeze=False)
    for ax, (workload, by_label) in zip(axes[0], samples.items()):
        labels = list(by_label)[::-1]   # matplotlib draws the first one at the bottom
        ax.boxplot([by_label[k] for k in labels], whis=1.5, vert=False)
        ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
        values = [v for k in labels for v in by_label[k] if v > 0]
        wide = values and max(values) / min(values) > 20   # e.g. the in-memory ceiling next to Kafka
        ax.set(title=f"{workload}: records/s per iteration", xlabel="records/s" + (" (log scale)" if wide else ""))
        if wide:
            ax.set_xscale("log")
        ax.grid(axis="x", alpha=0.3)
    return _save(plt, fig, path)


def study_ratios(rows: dict[str, list[dict]], path: str | Path, baseline: str) -> Path:
    """``rows``: workload -> [{label, ratio, low, high}]: medians as a ratio to
    ``baseline``, each bar labelled with its value; a log scale when the ratios span
    more than 10x (Kafka next to the in-memory ceiling), so the bars differ."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(rows), figsize=(6.5 * len(rows), 4.2), squeeze=False)
    for ax, (workload, items) in zip(axes[0], rows.items()):
        items = items[::-1]   # the study's order, top to bottom
        y = list(range(len(items)))
        ratio = [r["ratio"] for r in items]
        err = [[max(0.0, r["ratio"] - r["low"]) for r in items], [max(0.0, r["high"] - r["ratio"]) for r in items]]
        ax.barh(y, ratio, xerr=err, capsize=3, color="tab:blue", alpha=0.8)
        positive = [v for v in ratio if v > 0]
        if positive and max(max(positive), 1.0) / min(positive) > 10:
            ax.set_xscale("log")
        for i, (v, r) in enumerate(zip(ratio, items)):
            ax.text(max(v, r["high"]), i, f"  {v:.3g}", va="center", fontsize=8)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_yticks(y, [r["label"] for r in items], fontsize=8)
        ax.set(title=f"{workload}: median / {baseline} median (95% CI)", xlabel=f"ratio to {baseline}")
    return _save(plt, fig, path)


def study_bytes(rows: list[dict], path: str | Path) -> Path:
    """``rows``: [{label, bytes_per_record}] of the publish conditions."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.5))
    ax.barh([r["label"] for r in rows], [r["bytes_per_record"] for r in rows], color="tab:green")
    for i, r in enumerate(rows):
        ax.text(r["bytes_per_record"], i, f" {r['bytes_per_record']:.0f}", va="center", fontsize=8)
    ax.set(title="bytes per record on the wire (after compression)", xlabel="bytes")
    return _save(plt, fig, path)


def study_scaling(lines: dict[str, list[tuple[int, float, float, float]]], path: str | Path) -> Path:
    """``lines``: condition -> [(processes, median, ci low, ci high)]."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, pts in lines.items():
        pts = sorted(pts)
        xs, med = [p[0] for p in pts], [p[1] for p in pts]
        ax.errorbar(xs, med, yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]], marker="o",
                    capsize=3, label=label)
    ax.set(title="records/s against processes (median, 95% CI)", xlabel="processes", ylabel="records/s")
    ax.set_xticks(sorted({p[0] for pts in lines.values() for p in pts}))
    ax.legend(fontsize=8)
    return _save(plt, fig, path)
