"""Dropout: randomly zeroes units while training (inverted dropout, no rescaling at test time)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .._kernels import activations as kernels
from .base import Layer


class Dropout(Layer):
    """Inverted dropout: in training mode each unit is kept with probability ``1 - ratio``
    and kept units are scaled by ``1 / (1 - ratio)``, so the expected output equals the input
    and evaluation needs no rescaling.

    In evaluation mode (``layer.eval()``) the output is a copy of the input in the layer's own
    buffer (never an alias of the source's ``data``), and the gradient passes through.
    Draws come from ``self.rng`` (set by the model or ``set_seed``); without one the layer
    creates a fresh unseeded generator on first use and keeps it. The backward pass reuses
    the mask of the last training-mode forward pass.
    """

    conf_field = "dropout"

    def __init__(self, ratio: float = 0.5, name: str | None = None) -> None:
        super().__init__(name)
        ratio = float(ratio)
        if not 0.0 <= ratio < 1.0:
            raise self.error(f"ratio must be in [0, 1), got {ratio}")
        self.ratio = ratio
        self._mask: np.ndarray | None = None  # the last forward's mask; None in eval mode

    def get_config(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "name": self.name}

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        y = self.buffer("y", x.shape)
        if not self.training:
            self._mask = None
            np.copyto(y, x)
            return y
        if self.rng is None:
            self.rng = np.random.default_rng()
        # float32 draws whatever the layer's dtype: half the bytes, and 2^-24 resolution is
        # far finer than any ratio anyone sets.
        u = self.buffer("uniform", (x.size,), np.float32)
        self.rng.random(out=u, dtype=np.float32)
        mask = self.buffer("mask", x.shape)
        kernels.dropout_forward(x.reshape(-1), u, self.ratio, y.reshape(-1), mask.reshape(-1))
        self._mask = mask
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        if not need_input_grad:
            return None
        dx = self.buffer("dx", dy.shape)
        if self._mask is not None:
            np.multiply(dy, self._mask, out=dx)
        else:
            np.copyto(dx, dy)
        return dx
