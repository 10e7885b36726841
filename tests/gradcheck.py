"""Numerical gradient checks through the per-layer API (float64, central differences)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from nnkit.layers.base import Layer


class Source(Layer):
    """A test source: holds a fixed array as ``data`` and, unlike input layers, takes ``grad``."""

    def __init__(self, x: np.ndarray) -> None:
        super().__init__("source")
        self.data = x


def run(layer: Layer, x: np.ndarray, dy: np.ndarray | None = None
        ) -> tuple[np.ndarray, np.ndarray | None]:
    """One forward (and backward with ``dy``) through the per-layer API; returns copies of
    the output and the input gradient (None without ``dy``)."""
    src = Source(x)
    y = layer.ComputeFeature(src).copy()
    if dy is None:
        return y, None
    layer.grad = dy
    layer.ComputeGradient()
    return y, src.grad.copy()


def numerical_gradient(f: Callable[[], float], array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d array by central differences, perturbing ``array`` in place."""
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def check_layer(layer: Layer, x: np.ndarray, *, seed: int = 0, eps: float = 1e-6,
                rtol: float = 1e-5, atol: float = 1e-7) -> None:
    """Checks ``layer``'s input and parameter gradients against numerical ones.

    The loss is ``sum(layer.data * R)`` for a fixed random ``R``, so ``layer.grad = R``.
    Asserts that analytic and numerical gradients agree within ``rtol``/``atol``.
    """
    x = np.array(x, dtype=np.float64)
    src = Source(x)
    layer.ComputeFeature(src)
    r = np.random.default_rng(seed).standard_normal(layer.data.shape)

    def loss() -> float:
        layer.ComputeFeature(src)
        return float(np.sum(layer.data * r))

    loss()
    layer.grad = r.copy()
    layer.ComputeGradient()
    analytic = [("input", src.grad.copy())] + [(p.name, p.grad.copy()) for p in layer.params]
    numeric = [("input", numerical_gradient(loss, x, eps))]
    numeric += [(p.name, numerical_gradient(loss, p.data, eps)) for p in layer.params]
    for (name, a), (_, n) in zip(analytic, numeric):
        np.testing.assert_allclose(a, n, rtol=rtol, atol=atol,
                                   err_msg=f"{layer.describe()}: gradient of {name}")
