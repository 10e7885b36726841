"""``keras.datasets.fashion_mnist.load_data()``: uint8 images (N, 28, 28), uint8 labels (N,)."""
from __future__ import annotations

from typing import Any

from ...datasets import load_fashion_mnist
from ._folder import Arrays, load_pair


def load_data(path: Any = None) -> Arrays:
    """``(x_train, y_train), (x_test, y_test)``: 60000 and 10000 examples."""
    return load_pair(load_fashion_mnist, path)
