"""SINGA 0.3's ``Store`` (``singa.model.Store``): the files a data layer reads, and how.

SINGA's ``StoreProto`` (src/proto/job.proto) names a kvfile or text store; here ``path`` names
files nnkit's readers take (:mod:`nnkit.datasets`): MNIST-style IDX files, CIFAR-10 binary or
python batches. Normalization is SINGA's record layer's, ``(x - mean) / std``
(src/neuralnet/input_layer/store.cc, ``SingleLabelRecordLayer::ComputeFeature``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import datasets

_STORE_FIELDS = {"path", "backend", "batchsize", "shape", "random_skip", "mean_value",
                 "std_value", "mean_file", "std_file", "prefetching", "separator", "encoded",
                 "has_label"}


def _paths(value: Any, what: str) -> list[Path]:
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [Path(v) for v in value]
    raise TypeError(f"Store: {what} must be a path or a list of paths, got {value!r}")


def read_examples(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, ...) uint8 and labels (N,) from files nnkit reads: one IDX image file (its
    labels from the sibling ``*-labels-idx1-ubyte`` file, as MNIST names them) or an IDX image
    and label file; or CIFAR-10 batches, binary (``*.bin``, ``*.bin.gz``) or python pickles."""
    if any("idx" in p.name for p in paths):
        if len(paths) == 1:
            labels = paths[0].with_name(paths[0].name.replace("images-idx3", "labels-idx1"))
            if labels == paths[0] or not labels.exists():
                raise FileNotFoundError(f"Store: no label file {labels} next to {paths[0]}: name "
                                        f"both files, path=[images, labels]")
            paths = [paths[0], labels]
        return datasets.read_files("mnist", [str(p) for p in paths])
    try:
        parts = [datasets.read_cifar_bin(p) if ".bin" in p.suffixes else datasets.read_cifar_py(p)
                 for p in paths]
    except datasets.DatasetError as e:
        raise datasets.DatasetError(f"{e} (Store reads IDX files and CIFAR-10 batches, not "
                                    f"SINGA's kvfile or text stores)") from e
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class Store:
    """Where a data layer reads from (SINGA's ``StoreProto`` fields).

    ``Store(path=..., batchsize=64, shape=784, random_skip=0, mean_value=, std_value=,
    mean_file=, std_file=)``: ``path`` names files nnkit reads (see :func:`read_examples`),
    not SINGA's kvfile; ``shape`` is the per-example shape the images are reshaped to (an int
    for rows); ``mean_file``/``std_file`` name a ``.npy`` array or data files whose per-pixel
    mean (or standard deviation) is taken. ``backend``, ``prefetching``, ``separator``,
    ``encoded`` and ``has_label`` are accepted and unused (the files' format decides).
    """

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - _STORE_FIELDS
        if unknown:
            raise TypeError(f"Store: unknown field(s) {', '.join(sorted(unknown))}")
        self.fields = dict(kwargs)
        batchsize = kwargs.get("batchsize", 1)
        if isinstance(batchsize, (list, tuple)):
            if len(batchsize) != 1:
                raise ValueError(f"Store: batchsize {batchsize!r}: one batch size (nnkit does not "
                                 f"partition a batch across workers)")
            batchsize = batchsize[0]
        self.batchsize = positive(batchsize, "Store: batchsize")
        shape = kwargs.get("shape")
        self.shape = None if shape is None else tuple(int(d) for d in np.atleast_1d(shape))
        self.random_skip = int(kwargs.get("random_skip", 0))
        self._examples: tuple[np.ndarray, np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"Store({', '.join(f'{k}={v!r}' for k, v in self.fields.items())})"

    def examples(self) -> tuple[np.ndarray, np.ndarray]:
        """The examples, shaped ``(N, *shape)``, and their labels (read once)."""
        if self._examples is None:
            if "path" not in self.fields:
                raise ValueError("Store: path (the files to read) should be set")
            x, y = read_examples(_paths(self.fields["path"], "path"))
            shape = self.shape or (x.shape[1:] if x.ndim == 4 else (1, *x.shape[1:]))
            if int(np.prod(shape)) != int(np.prod(x.shape[1:])):
                raise ValueError(f"Store {self.fields['path']}: shape {shape} does not fit "
                                 f"examples of shape {x.shape[1:]}")
            self._examples = x.reshape(len(x), *shape), y
        return self._examples

    def normalization(self) -> tuple[Any, Any] | None:
        """``(mean, std)`` of SINGA's record layer, or None when neither is set."""
        mean = self._statistic("mean_value", "mean_file", "mean")
        std = self._statistic("std_value", "std_file", "std")
        if mean is None and std is None:
            return None
        return (0.0 if mean is None else mean), (1.0 if std is None else std)

    def _statistic(self, value_key: str, file_key: str, what: str) -> Any:
        if value_key in self.fields:
            return float(self.fields[value_key])
        if file_key not in self.fields:
            return None
        paths = _paths(self.fields[file_key], file_key)
        if len(paths) == 1 and paths[0].suffix == ".npy":
            return np.load(paths[0], allow_pickle=False)
        key = (what, *(p.resolve() for p in paths))
        if key not in _STATISTICS:  # a train and a test store often name the same files
            x = read_examples(paths)[0]
            x = x.reshape(len(x), -1)  # Normalization matches its values to features by count
            _STATISTICS[key] = datasets.mean_image(x) if what == "mean" else x.std(axis=0)
        return _STATISTICS[key]


#: Per-pixel means and standard deviations of data files, by kind and paths (read once).
_STATISTICS: dict[tuple, np.ndarray] = {}


def positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)
