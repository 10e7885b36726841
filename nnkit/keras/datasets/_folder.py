"""What the three ``load_data`` functions share: where the files are, and the split pair."""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

Arrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def load_pair(loader: Callable[..., tuple[np.ndarray, np.ndarray]], path: Any) -> Arrays:
    """``(x_train, y_train), (x_test, y_test)`` from an nnkit loader.

    ``path`` is nnkit's data folder (None: ``$NNKIT_DATA`` or ``~/.nnkit/datasets``); Keras's
    own cache file names (``'mnist.npz'``) are accepted and mean the default folder.
    """
    if path is not None and os.fspath(path).endswith(".npz"):
        path = None
    train = loader(path, "train", download=True)
    test = loader(path, "test", download=True)
    return train, test
