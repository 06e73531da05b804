import gzip
import pickle

import numpy as np
import pytest

from ddp_kbit.config import SyntheticConfig
from ddp_kbit.data.local_datasets import GTSRB_CLASSES, load_dataset, read_idx, synthetic
from ddp_kbit.errors import DatasetError


def write_idx(path, array: np.ndarray, gz=False):
    code = {np.dtype("u1"): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dir_raw_and_gz(tmp_path, gz):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 9], np.uint8)
    sfx = ".gz" if gz else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", imgs, gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", labels, gz)
    ds = load_dataset("mnist", "test", tmp_path)
    np.testing.assert_array_equal(ds.images, imgs)
    assert ds.labels.tolist() == [0, 1, 2, 3, 9] and ds.labels.dtype == np.int64
    assert ds.class_names == tuple("0123456789") and ds.shape == (28, 28)


def test_idx_big_endian_ints(tmp_path):
    write_idx(tmp_path / "x", np.array([1, 258, -3], ">i4"))
    assert read_idx(tmp_path / "x").tolist() == [1, 258, -3]


def test_idx_bad_magic(tmp_path):
    (tmp_path / "x").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "x")


def test_fashion_mnist_from_debian_package():
    ds = load_dataset("fashion-mnist", "test", limit=100)
    assert ds.images.shape == (100, 28, 28) and ds.images.dtype == np.uint8
    assert ds.class_names[0] == "T-shirt/top" and ds.num_classes == 10
    assert len(load_dataset("fashion-mnist", "train")) == 60000


def test_missing_fashion_mnist_names_package_and_flag(monkeypatch):
    monkeypatch.setattr("ddp_kbit.data.local_datasets.FASHION_MNIST_DIR", "/nonexistent/fashion")
    with pytest.raises(DatasetError) as e:
        load_dataset("fashion-mnist")
    assert "dataset-fashion-mnist" in str(e.value) and "--data-dir" in str(e.value)


def test_gtsrb_pickle(tmp_path):
    feats = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    with open(tmp_path / "train.p", "wb") as fh:
        pickle.dump({"features": feats, "labels": np.array([0, 14, 42, 1])}, fh)
    ds = load_dataset("gtsrb", "train", tmp_path)
    np.testing.assert_array_equal(ds.images, feats)
    assert ds.shape == (32, 32, 3) and ds.class_names == GTSRB_CLASSES and ds.class_names[14] == "Stop"


def test_gtsrb_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "train.p", "wb") as fh:
        pickle.dump({"features": Evil(), "labels": [0]}, fh)
    with pytest.raises(DatasetError, match="refusing to unpickle builtins.print"):
        load_dataset("gtsrb", "train", tmp_path)


def test_npz(tmp_path):
    x = np.random.default_rng(2).random((6, 8, 8, 3), dtype=np.float32)
    np.savez(tmp_path / "test.npz", x=x, y=np.arange(6) % 3)
    ds = load_dataset("npz", "test", tmp_path)
    assert ds.images.dtype == np.float32 and ds.num_classes == 3
    np.testing.assert_array_equal(ds.images, x)


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "train.npz", images=np.zeros((1, 2)))
    with pytest.raises(DatasetError, match="'x' and 'y'"):
        load_dataset("npz", "train", tmp_path)


def test_synthetic_is_seeded_and_shaped():
    spec = SyntheticConfig(shape=(32, 32, 3), num_classes=43, num_samples=50, seed=3)
    a, b = synthetic(spec), synthetic(spec)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (50, 32, 32, 3) and a.num_classes == 43
    assert not np.array_equal(a.images, synthetic(spec, "test").images)


def test_unknown_dataset_lists_allowed():
    with pytest.raises(DatasetError, match="fashion-mnist, mnist, gtsrb, npz, synthetic"):
        load_dataset("cifar")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_gtsrb_numpy_pickles_of_every_protocol_load(tmp_path, protocol):
    feats = np.random.default_rng(1).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    with open(tmp_path / "train.p", "wb") as fh:
        pickle.dump({"features": feats, "labels": np.array([0, 1, 2])}, fh, protocol=protocol)
    ds = load_dataset("gtsrb", "train", tmp_path)
    np.testing.assert_array_equal(ds.images, feats)


@pytest.mark.parametrize("cut", [0, 1, 20, -5])
def test_gtsrb_truncated_or_corrupt_pickle_is_one_clear_error(tmp_path, cut):
    feats = np.zeros((3, 4, 4, 3), np.uint8)
    raw = pickle.dumps({"features": feats, "labels": np.array([0, 1, 2])}, protocol=2)
    (tmp_path / "train.p").write_bytes(raw[:cut] if cut else b"\x80\x02garbage")
    with pytest.raises(DatasetError, match=r"train.p is not a readable dataset pickle"):
        load_dataset("gtsrb", "train", tmp_path)
