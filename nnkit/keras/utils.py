"""``keras.utils.to_categorical`` (keras/utils/np_utils.py, 2.2.4) and the ``np_utils`` name."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

__all__ = ["to_categorical", "np_utils"]


def to_categorical(y: Any, num_classes: int | None = None, dtype: str = "float32") -> np.ndarray:
    """One-hot rows for integer class labels: shape ``y.shape + (num_classes,)``, where a
    trailing axis of 1 (labels ``(N, 1)``, as CIFAR-10's) is dropped first. ``num_classes``
    defaults to ``max(y) + 1``."""
    y = np.asarray(y)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError("to_categorical: labels must be whole numbers")
    elif y.dtype.kind not in "iub":
        raise TypeError(f"to_categorical: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    shape = y.shape
    if len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    flat = y.reshape(-1)
    if num_classes is None:
        num_classes = int(flat.max()) + 1 if flat.size else 0
    if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
        raise ValueError(f"to_categorical: labels must be in [0, {num_classes}), got "
                         f"[{flat.min()}, {flat.max()}]")
    out = np.zeros((flat.size, num_classes), dtype=dtype)
    out[np.arange(flat.size), flat] = 1
    return out.reshape(*shape, num_classes)


#: ``from keras.utils import np_utils; np_utils.to_categorical(...)`` (older scripts).
np_utils = SimpleNamespace(to_categorical=to_categorical)
