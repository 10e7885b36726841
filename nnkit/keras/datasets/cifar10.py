"""``keras.datasets.cifar10.load_data()``: uint8 images (N, 32, 32, 3) channels last, uint8
labels (N, 1), as Keras gives them with its default image data format."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...datasets import load_cifar10
from ._folder import Arrays, load_pair


def load_data(path: Any = None) -> Arrays:
    """``(x_train, y_train), (x_test, y_test)``: 50000 and 10000 examples."""
    (x, y), (xt, yt) = load_pair(load_cifar10, path)

    def keras_layout(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.ascontiguousarray(images.transpose(0, 2, 3, 1)),
                labels.reshape(-1, 1).astype(np.uint8))

    return keras_layout(x, y), keras_layout(xt, yt)
