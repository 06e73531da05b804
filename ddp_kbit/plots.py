"""PNG plots; matplotlib is imported only here."""
from __future__ import annotations

from pathlib import Path


def plot_training(report: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [e["epoch"] for e in report["epochs"]]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.6))
    a.plot(ep, [e["train_loss"] for e in report["epochs"]], "o-", label="train")
    a.plot(ep, [e["val_loss"] for e in report["epochs"]], "o-", label="test")
    a.set(title="loss", xlabel="epoch")
    a.legend()
    b.plot(ep, [e["val_accuracy"] for e in report["epochs"]], "o-")
    b.set(title="test accuracy", xlabel="epoch")
    c.bar(ep, [e["samples_per_s"] for e in report["epochs"]])
    c2 = c.twinx()
    c2.plot(ep, [100 * e["data_wait_fraction"] for e in report["epochs"]], "r.-")
    c.set(title="samples/s (bars), data wait % (line)", xlabel="epoch")
    fig.suptitle(f"ddp_kbit train: {report['world_size']} process(es), restarts {report['restarts']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
