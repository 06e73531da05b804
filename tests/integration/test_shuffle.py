"""Training quality must not depend on the order producers wrote in: Fashion-MNIST
published sorted by label trains like the shipped order with the default shuffle,
and far worse with --shuffle none; epochs stay exact, and a resume mid-epoch on
another number of processes trains exactly the remainder."""
import time

import numpy as np
import pytest

from ddp_kbit.config import PublishConfig
from ddp_kbit.data.local_datasets import load_dataset
from ddp_kbit.data.publish import publish
from ddp_kbit.errors import UserError

from runs import assert_exact_epochs, fit

pytestmark = pytest.mark.slow
N, TEST_N = 12_000, 2000


@pytest.fixture(scope="module")
def orders(kcfg, tmp_path_factory):
    """The same 12,000 records as shipped and sorted by label (the npz dataset), and a test topic."""
    ds = load_dataset("fashion-mnist", "train", limit=N)
    folder = tmp_path_factory.mktemp("sorted")
    order = np.argsort(ds.labels, kind="stable")
    np.savez(folder / "train.npz", x=ds.images[order], y=ds.labels[order])
    stamp = time.time_ns()
    shipped = publish(kcfg, PublishConfig(topic=f"order.shipped.{stamp}"), ds, progress=False).manifest
    sorted_ds = load_dataset("npz", "train", str(folder))
    assert (np.diff(sorted_ds.labels) >= 0).all()
    by_label = publish(kcfg, PublishConfig(dataset="npz", topic=f"order.sorted.{stamp}"), sorted_ds,
                       progress=False).manifest
    test = publish(kcfg, PublishConfig(split="test", topic=f"order.test.{stamp}"),
                   load_dataset("fashion-mnist", "test", limit=TEST_N), progress=False).manifest
    return shipped, by_label, test


def accuracy(kcfg, tmp_path, m, test, **more):
    report = fit(kcfg, tmp_path, train_topic=m.topic, test_topic=test.topic, epochs=2, num_processes=2, seed=5,
                 **more)
    assert_exact_epochs(report, m)
    return report["final"]["test_accuracy"]


def test_a_topic_sorted_by_label_trains_like_the_shipped_order(kcfg, spark, orders, tmp_path):
    shipped, by_label, test = orders
    got = {(name, shuffle): accuracy(kcfg, tmp_path / f"{name}.{shuffle}", m, test, shuffle=shuffle)
           for name, m in (("shipped", shipped), ("sorted", by_label)) for shuffle in ("window", "none")}
    print("accuracy after 2 epochs:", got)
    assert abs(got[("sorted", "window")] - got[("shipped", "window")]) <= 0.01
    assert got[("sorted", "none")] < got[("shipped", "none")] - 0.2       # without the shuffle: near chance


def test_a_resume_mid_window_on_another_world_size_is_exact(kcfg, spark, orders, tmp_path):
    _, by_label, test = orders
    common = {"train_topic": by_label.topic, "test_topic": test.topic, "epochs": 1, "checkpoint_every": 10,
              "checkpoint_dir": str(tmp_path / "ckpt"), "shuffle_chunk": 512, "shuffle_window": 2048}
    with pytest.raises(UserError, match="injected failure at step 23"):
        fit(kcfg, tmp_path / "a", num_processes=2, crash_at=23, **common)
    report = fit(kcfg, tmp_path / "b", num_processes=3, resume=True, **common)
    assert_exact_epochs(report, by_label)
