"""Preprocessing layers: fixed input transforms recorded with the model.

A model trained from Python gets arrays its caller has already scaled, so a checkpoint of it
cannot tell ``nnkit eval`` what was done to the data. These layers do that preprocessing
inside the model instead: fit, evaluate and predict take the raw values (pixels 0..255), and
the checkpoint carries the transform in its stored job like any other layer.

* :class:`Rescaling` ``y = x * scale + offset`` (``keras.layers.Rescaling``'s formula);
* :class:`Normalization` ``y = (x - mean) / std`` with a fixed mean and standard deviation, a
  scalar, one value per channel or one per feature (like ``keras.layers.Normalization``
  given its statistics, but with ``std`` where Keras takes ``variance``: pass
  ``std=np.sqrt(variance)``).

Nothing here is trained: no parameters, no state, and updaters never see them. A job config's
``data`` section does the same before the model (Caffe's ``(x - mean) * scale``): ``scale: s``
is ``Rescaling(s)``, ``mean_image: true`` with ``scale: s`` is ``Normalization(mean=mean_image,
std=1 / s)``, ``mean_value`` is a per-channel ``mean``; use one or the other, not both, or the
data is transformed twice.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import Layer


def _finite(value: Any, what: str, owner: Layer) -> float:
    """``value`` as a finite float; ValueError naming the layer otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise owner.error(f"{what} must be a number, got {value!r}", TypeError) from None
    if not math.isfinite(v):
        raise owner.error(f"{what} must be finite, got {v}")
    return v


class _Preprocessing(Layer):
    """Common part: a fixed elementwise affine map of any input, with no parameters."""

    def describe_transform(self) -> str:
        """The transform in one line, for ``nnkit show``."""
        raise NotImplementedError


class Rescaling(_Preprocessing):
    """Multiplies the input by ``scale`` and adds ``offset``: ``y = x * scale + offset``.

    ``Rescaling(1 / 255)`` maps pixels 0..255 to [0, 1], ``Rescaling(1 / 127.5, offset=-1)``
    to [-1, 1]. Any input shape; the gradient is ``dy * scale``.

    Args:
        scale: a finite number other than 0.
        offset: a finite number (default 0).
        name: the layer name.
    """

    conf_field = "rescaling"

    def __init__(self, scale: float, offset: float = 0.0, name: str | None = None) -> None:
        super().__init__(name)
        self.scale = _finite(scale, "scale", self)
        self.offset = _finite(offset, "offset", self)
        if self.scale == 0:
            raise self.error("scale must not be 0 (it would map every input to one value)")

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this layer."""
        return {"scale": self.scale, "offset": self.offset, "name": self.name}

    def describe_transform(self) -> str:
        """``x * 0.00392157``, ``x * 0.00784314 - 1``."""
        text = f"x * {self.scale:.6g}"
        if self.offset:
            text += f" {'-' if self.offset < 0 else '+'} {abs(self.offset):.6g}"
        return text

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x * scale + offset`` in the layer's dtype."""
        y = self.buffer("y", x.shape)
        np.multiply(x, self.scale, out=y)
        if self.offset:
            np.add(y, self.offset, out=y)
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """``dy * scale`` (no parameters)."""
        if not need_input_grad:
            return None
        dx = self.input_grad_buffer(dy.shape)
        np.multiply(dy, self.scale, out=dx)
        return dx


class Normalization(_Preprocessing):
    """Standardizes the input with a fixed mean and standard deviation: ``y = (x - mean) / std``.

    ``mean`` and ``std`` are each a number, one value per channel (``(C,)`` for images
    ``(batch, C, H, W)``) or one value per feature (the per-example shape, e.g. a mean image
    ``(C, H, W)``, or the same number of values in any shape: they are matched by count, so a
    ``(1, 28, 28)`` mean image fits MNIST rows of 784 too). Compute them on the training data,
    e.g. with :func:`nnkit.datasets.channel_stats` or :func:`nnkit.datasets.mean_image`. The
    gradient is ``dy / std``. Keras's ``Normalization`` takes ``variance``: here give
    ``std=np.sqrt(variance)``.

    Args:
        mean: finite values.
        std: finite values > 0 (a feature that never varies has std 0: give it 1, or the
            smallest std you accept, e.g. ``np.maximum(std, 1e-3)``).
        name: the layer name.
    """

    conf_field = "normalization"

    def __init__(self, mean: Any, std: Any, name: str | None = None) -> None:
        super().__init__(name)
        self.mean = self._values(mean, "mean")
        self.std = self._values(std, "std")
        if not (self.std > 0).all():
            i = int(np.argmin(self.std > 0))
            raise self.error(f"std must be > 0 everywhere, got {self.std[i]} at index {i} "
                             f"(a feature that never varies: give it std 1)")
        self._mean_b: np.ndarray | None = None  # shaped to broadcast against the batch
        self._std_b: np.ndarray | None = None

    def _values(self, value: Any, what: str) -> np.ndarray:
        """``value`` as a flat float64 array of finite numbers, at least one."""
        try:
            a = np.asarray(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise self.error(f"{what} must be a number or an array of numbers, got "
                             f"{type(value).__name__}", TypeError) from None
        if a.size == 0:
            raise self.error(f"{what} is empty: give a number, or one value per channel or feature")
        if not np.isfinite(a).all():
            i = int(np.argmin(np.isfinite(a)))
            raise self.error(f"{what} must be finite, got {a[i]} at index {i}")
        return a

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments: ``mean`` and ``std`` as a number or a flat list."""
        def plain(a: np.ndarray) -> float | list[float]:
            return float(a[0]) if a.size == 1 else [float(v) for v in a]
        return {"mean": plain(self.mean), "std": plain(self.std), "name": self.name}

    def _layout(self, values: np.ndarray, what: str, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape ``values`` take against one example of ``input_shape``; raises if none."""
        per_example = math.prod(input_shape)
        if values.size == 1:
            return ()
        if values.size == per_example:
            return tuple(input_shape)
        if len(input_shape) == 3 and values.size == input_shape[0]:
            return (input_shape[0],) + (1,) * (len(input_shape) - 1)  # per channel
        channels = f", one per channel ({input_shape[0]})" if len(input_shape) == 3 else ""
        raise self.error(f"{what} has {values.size} values, which fit no layout of the input "
                         f"(batch, {', '.join(map(str, input_shape))}): expected 1{channels} or "
                         f"one per feature ({per_example})")

    def describe_transform(self) -> str:
        """``(x - mean) / std``, mean per channel (3 values, 120.7 .. 125.3), std 64."""
        def values(a: np.ndarray, what: str) -> str:
            if a.size == 1:
                return f"{what} {a[0]:.6g}"
            return f"{what} {a.size} values ({a.min():.4g} .. {a.max():.4g})"
        return f"(x - mean) / std, {values(self.mean, 'mean')}, {values(self.std, 'std')}"

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The input shape; raises unless ``mean`` and ``std`` fit it."""
        self._layout(self.mean, "mean", input_shape)
        self._layout(self.std, "std", input_shape)
        return tuple(input_shape)

    def create_params(self, input_shape: tuple[int, ...], dtype: np.dtype,
                      rng: np.random.Generator) -> None:
        """No parameters: shapes ``mean`` and ``std`` in the layer's dtype for broadcasting."""
        self._mean_b = self.mean.reshape(self._layout(self.mean, "mean", input_shape)).astype(dtype)
        self._std_b = self.std.reshape(self._layout(self.std, "std", input_shape)).astype(dtype)

    def broadcast_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` as the built layer applies them: in its dtype, shaped to broadcast
        against a batch (``()``, ``(C, 1, 1)`` or the per-example shape)."""
        if self._mean_b is None:
            raise self.error("the layer is not built yet", RuntimeError)
        return self._mean_b, self._std_b

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std`` in the layer's dtype."""
        y = self.buffer("y", x.shape)
        np.subtract(x, self._mean_b, out=y)
        np.divide(y, self._std_b, out=y)
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """``dy / std`` (no parameters)."""
        if not need_input_grad:
            return None
        dx = self.input_grad_buffer(dy.shape)
        np.divide(dy, self._std_b, out=dx)
        return dx
