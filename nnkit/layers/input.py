"""Input layers: they are fed arrays (``Feed``) instead of computing from a source.

Every input is checked on the way in: shape, dtype, and finiteness, so that a bad batch is
reported where it enters, naming the layer, rather than as a NaN loss many layers later.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .base import DEFAULT_DTYPE, SUPPORTED_DTYPES, Layer


class _InputLayer(Layer):
    """Common part of the input layers: no source, no gradient, a fixed per-example shape."""

    accepts_grad = False

    def __init__(self, shape: Sequence[int] | None, dtype: Any, name: str | None) -> None:
        super().__init__(name)
        dtype = np.dtype(dtype)
        if dtype not in SUPPORTED_DTYPES and dtype.kind != "i":
            raise self.error(f"dtype {dtype} is not supported", TypeError)
        self.dtype = dtype
        self.input_shape = None if shape is None else tuple(int(d) for d in shape)

    def ComputeFeature(self, *srcs: Layer) -> np.ndarray:
        """Input layers are fed, not computed."""
        raise self.error("input layers take data through Feed(...), not ComputeFeature", TypeError)

    def ComputeGradient(self) -> None:
        """Nothing to do: inputs have no parameters and nothing below them."""

    def _accept(self, data: np.ndarray) -> np.ndarray:
        """Stores a validated batch as ``self.data``."""
        if data.ndim == 0 or data.shape[0] == 0:
            raise self.error(f"fed an empty batch of shape {data.shape}")
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            bad = np.argwhere(~np.isfinite(data))[0]
            raise self.error(f"fed a batch of shape {data.shape} with a non-finite value "
                             f"({data[tuple(bad)]}) at index {tuple(int(i) for i in bad)}")
        self.data = data
        self.grad = None
        return data


class Dummy(_InputLayer):
    """A generic input: ``Feed(shape, data, aux_data)`` stores ``data`` reshaped to ``shape``.

    ``shape`` is the full batch shape (batch first). ``aux_data`` (for instance labels) is
    kept as ``self.aux_data``. Data is converted to ``dtype`` (float32 by default).
    """

    conf_field = "dummy"

    def __init__(self, name: str | None = None, dtype: Any = DEFAULT_DTYPE) -> None:
        super().__init__(None, dtype, name)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.name}

    def Feed(self, shape: Sequence[int], data: Any, aux_data: Any = None) -> np.ndarray:
        """Feeds one batch: ``data`` reshaped to ``shape``; ``aux_data`` kept alongside."""
        shape = tuple(int(d) for d in shape)
        data = np.asarray(data)
        if data.size != int(np.prod(shape)):
            raise self.error(f"Feed: data of shape {data.shape} ({data.size} values) does not "
                             f"fit the shape {shape}")
        self.aux_data = None if aux_data is None else np.asarray(aux_data)
        self.input_shape = shape[1:]
        return self._accept(np.ascontiguousarray(data.reshape(shape), dtype=self.dtype))


class ImageInput(_InputLayer):
    """Images of ``nb_channel`` x ``height`` x ``width``, stored NCHW.

    ``Feed(data)`` takes ``(batch, C*H*W)`` rows (as image files and CSVs hold them) or
    ``(batch, C, H, W)`` arrays; the batch size may change from one call to the next.
    """

    conf_field = "image_input"

    def __init__(self, height: int, width: int, nb_channel: int = 1, name: str | None = None,
                 dtype: Any = DEFAULT_DTYPE) -> None:
        super().__init__((nb_channel, height, width), dtype, name)
        if min(self.input_shape) < 1:
            raise self.error(f"image size must be positive, got {nb_channel}x{height}x{width}")

    def get_config(self) -> dict[str, Any]:
        c, h, w = self.input_shape
        return {"height": h, "width": w, "nb_channel": c, "name": self.name,
                "dtype": self.dtype.name}

    def Feed(self, data: Any) -> np.ndarray:
        """Feeds one batch of images; returns the stored (batch, C, H, W) array."""
        data = np.asarray(data)
        c, h, w = self.input_shape
        if data.ndim == 2 and data.shape[1] == c * h * w:
            data = data.reshape(data.shape[0], c, h, w)
        elif data.ndim != 4 or data.shape[1:] != self.input_shape:
            raise self.error(f"Feed: expected (batch, {c * h * w}) rows or (batch, {c}, {h}, {w}) "
                             f"images, got shape {data.shape}")
        if data.dtype.kind not in "fiub":
            raise self.error(f"Feed: expected numbers, got dtype {data.dtype}", TypeError)
        return self._accept(np.ascontiguousarray(data, dtype=self.dtype))


class LabelInput(_InputLayer):
    """Integer class labels: ``Feed(labels)`` takes ``(batch,)`` or ``(batch, 1)``.

    Labels are stored as int64 of shape ``(batch,)``; floats are accepted when they hold
    whole numbers (labels loaded from text files often are floats). The upper bound is
    checked by the loss, which knows the number of classes.
    """

    def __init__(self, name: str | None = None) -> None:
        super().__init__((), np.int64, name)
        #: K of the last one-hot batch (the loss checks it against its K classes), else None.
        self.classes: int | None = None

    def Feed(self, labels: Any) -> np.ndarray:
        """Feeds one batch of labels; returns the stored (batch,) int64 array.

        One-hot rows ``(batch, K)`` with ``K > 1`` (Keras's ``categorical_crossentropy``
        labels) become class indices; ``classes`` remembers K.
        """
        labels = np.asarray(labels)
        self.classes = None
        if labels.ndim == 2 and labels.shape[1] > 1:
            self.classes = labels.shape[1]
            labels = one_hot_indices(labels, self.describe())
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise self.error(f"Feed: expected labels of shape (batch,), (batch, 1) or one-hot "
                             f"(batch, classes), got {labels.shape}")
        if labels.dtype.kind == "f":
            if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
                bad = int(np.argmax(~np.isfinite(labels) | (labels != np.round(labels))))
                raise self.error(f"Feed: label {labels[bad]} at index {bad} is not a whole number")
        elif labels.dtype.kind not in "iub":
            raise self.error(f"Feed: labels must be integers, got dtype {labels.dtype}", TypeError)
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if labels.size and labels.min() < 0:
            bad = int(np.argmin(labels))
            raise self.error(f"Feed: label {labels[bad]} at index {bad} is negative")
        return self._accept(labels)


def one_hot_indices(labels: np.ndarray, owner: str) -> np.ndarray:
    """The class index of each one-hot row of ``labels`` (N, K) as int64 (N,).

    Every row must hold exactly one 1 and zeros elsewhere: soft labels (label smoothing)
    would silently lose their weights as an argmax, so they are refused, naming ``owner``.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "fiub":
        raise TypeError(f"{owner}: one-hot labels must be numbers, got dtype {labels.dtype}")
    ones = labels == 1
    good = (ones | (labels == 0)).all(axis=1) & (ones.sum(axis=1) == 1)
    if not good.all():
        bad = int(np.argmin(good))
        raise ValueError(f"{owner}: label row {bad} of the (batch, classes) labels of shape "
                         f"{labels.shape} is not one-hot ({labels[bad].tolist()[:12]}); give class "
                         f"indices (batch,) or one-hot rows with exactly one 1 (soft labels are "
                         f"not supported)")
    return np.argmax(ones, axis=1).astype(np.int64)
