"""Loading a dataset by name or from explicit files, for job configs and command lines."""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from ._files import check_labels
from .cifar import load_cifar10, read_cifar_bin
from .mnist import NUM_CLASSES, load_fashion_mnist, load_mnist, read_idx

Loader = Callable[..., tuple[np.ndarray, np.ndarray]]

DATASETS: dict[str, Loader] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
}

#: Per-example shape and number of classes of each dataset (checked before any file is read,
#: so that a model that does not fit its data fails when the job is loaded).
SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "fashion-mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
}


def load(name: str, data_dir: str | os.PathLike | None = None, split: str = "train",
         download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of dataset ``name`` (a key of :data:`DATASETS`, case-insensitive).

    The other arguments go to that dataset's loader (``load_mnist``, ``load_fashion_mnist``,
    ``load_cifar10``), which documents the shapes it returns.
    """
    loader = DATASETS.get(name.lower()) if isinstance(name, str) else None
    if loader is None:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return loader(data_dir=data_dir, split=split, download=download)


def read_files(dataset: str, files: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Examples from explicit files: CIFAR-10 binary batches, or one IDX image and one IDX label file."""
    if dataset.lower() == "cifar10":
        parts = [read_cifar_bin(f) for f in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    arrays = [read_idx(f) for f in files]
    images = [a for a in arrays if a.ndim > 1]
    labels = [(a, f) for a, f in zip(arrays, files) if a.ndim == 1]
    if len(images) != 1 or len(labels) != 1:
        raise ValueError(f"{dataset}: expected one IDX image file and one IDX label file, got "
                         f"{len(images)} image and {len(labels)} label files: {list(files)}")
    check_labels(labels[0][0], NUM_CLASSES, labels[0][1])
    return images[0], labels[0][0]


def read_source(dataset: str, data_dir: str | os.PathLike | None = None, split: str = "train",
                files: Sequence[str] = (), limit: int | None = None, download: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """Images as (N, C, H, W) (grayscale gets one channel) and labels of one data source.

    ``files`` name the files explicitly; otherwise the dataset's ``split`` is read from
    ``data_dir``. ``limit`` keeps the first examples only.
    """
    x, y = read_files(dataset, files) if files else load(dataset, data_dir, split, download)
    if x.ndim == 3:
        x = x[:, None]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y
