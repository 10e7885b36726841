"""Loading a dataset by name, for job configs and command lines."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from .cifar import load_cifar10
from .mnist import load_fashion_mnist, load_mnist

Loader = Callable[..., tuple[np.ndarray, np.ndarray]]

DATASETS: dict[str, Loader] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
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
