"""Dataset sources: IDX (MNIST, Fashion-MNIST; raw or .gz), GTSRB-style pickles,
.npz with x/y, and a seeded synthetic generator. All return a :class:`Dataset`
of (N, H, W) or (N, H, W, C) arrays, uint8 or float32, with int64 labels."""
from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddp_kbit.config import DATASETS, SyntheticConfig
from ddp_kbit.errors import DatasetError, first_line

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
MNIST_DIR = "/usr/share/datasets/mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(i) for i in range(10))
GTSRB_CLASSES = (
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)", "End of speed limit (80km/h)", "Speed limit (100km/h)",
    "Speed limit (120km/h)", "No passing", "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection", "Priority road", "Yield", "Stop", "No vehicles",
    "Vehicles over 3.5 metric tons prohibited", "No entry", "General caution", "Dangerous curve to the left",
    "Dangerous curve to the right", "Double curve", "Bumpy road", "Slippery road", "Road narrows on the right",
    "Road work", "Traffic signals", "Pedestrians", "Children crossing", "Bicycles crossing",
    "Beware of ice/snow", "Wild animals crossing", "End of all speed and passing limits", "Turn right ahead",
    "Turn left ahead", "Ahead only", "Go straight or right", "Go straight or left", "Keep right", "Keep left",
    "Roundabout mandatory", "End of no passing", "End of no passing by vehicles over 3.5 metric tons",
)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Dataset:
    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ------------------------------------------------------------------ IDX
def read_idx(path: str | Path) -> np.ndarray:
    """IDX file (the MNIST format), plain or gzip-compressed (detected by magic)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)) * dtype.itemsize:
        raise DatasetError(f"{path}: header says {dims} but the file holds {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(data_dir: Path, prefix: str, kind: str) -> Path:
    # Accept the usual spellings: train-images-idx3-ubyte[.gz], train-images.idx3-ubyte, ...
    for pattern in (f"{prefix}-{kind}-idx*", f"{prefix}-{kind}.idx*"):
        found = sorted(data_dir.glob(pattern))
        if found:
            return found[0]
    raise DatasetError(f"no {prefix}-{kind}-idx* file in {data_dir}")


def load_idx_dir(name: str, data_dir: Path, split: str, class_names) -> Dataset:
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find_idx(data_dir, prefix, "images"))
    labels = read_idx(_find_idx(data_dir, prefix, "labels")).astype(np.int64)
    if len(images) != len(labels):
        raise DatasetError(f"{data_dir}: {len(images)} images but {len(labels)} labels")
    return Dataset(name, images, labels, tuple(class_names))


# ------------------------------------------------------------------ pickles / npz
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a dataset file must not be
    able to run code."""

    # What numpy's own pickles (protocols 2 to 5, numpy 1 and 2 module paths) name:
    # array reconstruction, dtypes, scalars, and _codecs.encode, which protocol 2
    # uses to carry bytes. None of these can call anything else.
    _ALLOWED = {(core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray")
                for name in ("_reconstruct", "scalar")}
    _ALLOWED |= {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                 ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                 ("builtins", "dict"), ("builtins", "list"), ("builtins", "bytearray")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise DatasetError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")


def load_gtsrb(data_dir: Path, split: str) -> Dataset:
    """GTSRB-style pickle ``{"features": (N,H,W,3), "labels": (N,)}`` named
    ``train.p`` / ``test.p`` (or ``.pkl`` / ``.pickle``), or a file path."""
    path = data_dir if data_dir.is_file() else _first_existing(data_dir, [f"{split}{ext}" for ext in (".p", ".pkl", ".pickle")])
    try:
        with open(path, "rb") as fh:
            obj = _ArrayUnpickler(fh).load()
    except DatasetError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, UnicodeDecodeError, OSError) as exc:
        raise DatasetError(f"{path} is not a readable dataset pickle ({type(exc).__name__}: "
                           f"{first_line(exc, 120, 'no detail')})") from None
    if not isinstance(obj, dict) or "features" not in obj or "labels" not in obj:
        raise DatasetError(f"{path}: expected a dict with 'features' and 'labels'")
    images, labels = np.asarray(obj["features"]), np.asarray(obj["labels"]).astype(np.int64)
    names = _class_names_file(path.parent) or (GTSRB_CLASSES if labels.max(initial=0) < len(GTSRB_CLASSES) else None)
    return Dataset("gtsrb", _as_contract_dtype(images, path), labels, names or _numbered(labels))


def load_npz(data_dir: Path, split: str, name: str = "npz") -> Dataset:
    """``{split}.npz`` in the folder (or a file path) holding ``x`` and ``y``."""
    path = data_dir if data_dir.is_file() else _first_existing(data_dir, [f"{split}.npz"])
    with np.load(path, allow_pickle=False) as z:
        if "x" not in z or "y" not in z:
            raise DatasetError(f"{path}: expected arrays 'x' and 'y', found {list(z.keys())}")
        images, labels = z["x"], z["y"].astype(np.int64)
        names = tuple(str(s) for s in z["class_names"]) if "class_names" in z else None
    return Dataset(name, _as_contract_dtype(images, path), labels, names or _class_names_file(path.parent) or _numbered(labels))


def _first_existing(folder: Path, names: list[str]) -> Path:
    for n in names:
        if (folder / n).exists():
            return folder / n
    raise DatasetError(f"none of {names} in {folder}")


def _class_names_file(folder: Path):
    """Optional ``signnames.csv`` (ClassId,SignName) or ``classes.txt`` next to the data."""
    csv, txt = folder / "signnames.csv", folder / "classes.txt"
    if csv.exists():
        rows = [line.split(",", 1) for line in csv.read_text().splitlines()[1:] if line.strip()]
        return tuple(name.strip() for _, name in sorted(rows, key=lambda r: int(r[0])))
    if txt.exists():
        return tuple(line.strip() for line in txt.read_text().splitlines() if line.strip())
    return None


def _numbered(labels: np.ndarray) -> tuple[str, ...]:
    return tuple(str(i) for i in range(int(labels.max(initial=-1)) + 1))


def _as_contract_dtype(images: np.ndarray, path) -> np.ndarray:
    if images.dtype == np.uint8 or images.dtype == np.float32:
        return images
    if np.issubdtype(images.dtype, np.integer) and images.min(initial=0) >= 0 and images.max(initial=0) <= 255:
        return images.astype(np.uint8)
    if np.issubdtype(images.dtype, np.floating):
        return images.astype(np.float32)
    raise DatasetError(f"{path}: images of dtype {images.dtype}; the wire carries uint8 or float32")


# ------------------------------------------------------------------ synthetic
def synthetic(spec: SyntheticConfig, split: str = "train") -> Dataset:
    """Learnable and seeded: each class has a fixed random prototype; samples are
    the prototype plus noise. Train and test share prototypes, not samples."""
    protos = np.random.default_rng(spec.seed).uniform(0, 255, size=(spec.num_classes, *spec.shape))
    rng = np.random.default_rng([spec.seed, 0 if split == "train" else 1])
    labels = rng.integers(0, spec.num_classes, size=spec.num_samples, dtype=np.int64)
    images = protos[labels] + rng.normal(0, 48, size=(spec.num_samples, *spec.shape))
    images = np.clip(images, 0, 255)
    images = images.astype(np.uint8) if spec.dtype == "uint8" else (images / 255).astype(np.float32)
    return Dataset("synthetic", images, labels, tuple(f"class_{i}" for i in range(spec.num_classes)))


# ------------------------------------------------------------------ entry point
def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None,
                 limit: int | None = None, synthetic_cfg: SyntheticConfig | None = None) -> Dataset:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if name == "synthetic":
        ds = synthetic(synthetic_cfg or SyntheticConfig(), split)
    else:
        folder = Path(data_dir) if data_dir else _default_dir(name)
        if not folder.exists():
            raise DatasetError(_missing_message(name, folder))
        if name in ("fashion-mnist", "mnist"):
            ds = load_idx_dir(name, folder, split, FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES)
        elif name == "gtsrb":
            ds = load_gtsrb(folder, split)
        else:
            ds = load_npz(folder, split)
    if limit is not None:
        ds = Dataset(ds.name, ds.images[:limit], ds.labels[:limit], ds.class_names)
    return ds


def _default_dir(name: str) -> Path:
    if name == "fashion-mnist":
        return Path(FASHION_MNIST_DIR)
    if name == "mnist":
        return Path(MNIST_DIR)
    raise DatasetError(f"dataset {name!r} needs --data-dir (a folder or a file)")


def _missing_message(name: str, folder: Path) -> str:
    if name == "fashion-mnist" and str(folder) == FASHION_MNIST_DIR:
        return (f"Fashion-MNIST not found in {folder}: install it with "
                "'apt-get install dataset-fashion-mnist', or point --data-dir at a folder of IDX files")
    return f"dataset folder {folder} does not exist; pass --data-dir pointing at the {name} files"

