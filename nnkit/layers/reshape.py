"""Layers that only move values: ``Flatten`` and ``ZeroPadding2D``.

Neither has parameters. ``ZeroPadding2D`` takes a different amount on each side, which the
convolution's own symmetric ``pad`` cannot express: it is what TensorFlow's (and Keras's)
``padding='same'`` needs when the total padding is odd (an even kernel, or a stride above 1).
Job configs name them ``flatten {}`` and ``zero_padding { padding: [top, bottom, left, right] }``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import Layer


class Flatten(Layer):
    """``(N, C, H, W)`` (or any rank) to ``(N, C*H*W)``, in C order; the gradient is reshaped back."""

    conf_field = "flatten"

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        size = 1
        for d in input_shape:
            size *= d
        return (size,)

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = self.buffer("y", (x.shape[0], *self.output_shape(x.shape[1:])))
        np.copyto(y, x.reshape(y.shape))  # its own buffer: never an alias of the source's data
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        if not need_input_grad:
            return None
        dx = self.input_grad_buffer((dy.shape[0], *self.input_shape))
        np.copyto(dx, dy.reshape(dx.shape))
        return dx


class ZeroPadding2D(Layer):
    """Adds zero rows and columns around ``(N, C, H, W)`` images.

    ``padding`` is an int (every side), ``(ph, pw)`` (top and bottom ``ph``, left and right
    ``pw``) or ``((top, bottom), (left, right))``, as in Keras's layer of the same name, or
    the flat ``(top, bottom, left, right)`` of the job schema.
    """

    conf_field = "zero_padding"

    def __init__(self, padding: Any = 1, name: str | None = None) -> None:
        super().__init__(name)
        self.padding = _sides(padding, self.describe())

    def get_config(self) -> dict[str, Any]:
        (top, bottom), (left, right) = self.padding
        return {"padding": (top, bottom, left, right), "name": self.name}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = self.require_images(input_shape)
        (top, bottom), (left, right) = self.padding
        return c, h + top + bottom, w + left + right

    def _window(self, shape: tuple[int, ...]) -> tuple[slice, ...]:
        """Where the input sits inside the padded output."""
        (top, _), (left, _) = self.padding
        return (slice(None), slice(None), slice(top, top + shape[2]), slice(left, left + shape[3]))

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = self.buffer("y", (x.shape[0], *self.output_shape(x.shape[1:])))
        y[...] = 0
        y[self._window(x.shape)] = x
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        if not need_input_grad:
            return None
        dx = self.input_grad_buffer((dy.shape[0], *self.input_shape))
        np.copyto(dx, dy[self._window(dx.shape)])
        return dx


def _sides(padding: Any, owner: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` from an int, a pair or a pair of pairs."""
    def count(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{owner}: padding must be ints >= 0, got {padding!r}")
        return int(v)

    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        padding = (padding, padding)
    elif isinstance(padding, (tuple, list)) and len(padding) == 4:
        padding = (tuple(padding[:2]), tuple(padding[2:]))
    elif isinstance(padding, (tuple, list)) and len(padding) == 1:
        padding = (padding[0], padding[0])
    try:
        rows, cols = padding
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: padding must be an int, (ph, pw) or ((top, bottom), "
                         f"(left, right)) or (top, bottom, left, right), got {padding!r}") from None
    sides = []
    for axis in (rows, cols):
        if isinstance(axis, (tuple, list)):
            if len(axis) != 2:
                raise ValueError(f"{owner}: padding must be an int, (ph, pw) or ((top, bottom), "
                                 f"(left, right)), got {padding!r}")
            sides.append((count(axis[0]), count(axis[1])))
        else:
            sides.append((count(axis), count(axis)))
    return sides[0], sides[1]
