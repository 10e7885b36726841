"""Activation layers: an elementwise nonlinearity or a softmax over the channel axis.

Backward passes are computed from the saved output ``y`` (not the input), one fused kernel
pass each. Forward passes use whichever was measured faster on (64, 2500) float32: the
kernels for relu, softmax and float32 tanh and stanh (a vectorized rational approximation
within 7 ulp, 0.65 against numpy's 2.8-4.1 ns per value on a Zen 3 core), numpy's SIMD
ufuncs for sigmoid and float64 tanh and stanh (float64 needs libm's accuracy). Both release
the GIL, and large arrays run as parallel parts (``nnkit.parallel``): contiguous slices.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .._kernels import activations as kernels
from .. import parallel
from .base import Layer

# LeCun's scaled tanh, STANH_A * tanh(STANH_B * x): maps 1 to 1 and -1 to -1.
STANH_A = 1.7159
STANH_B = 2.0 / 3.0

ACTIVATIONS = ("relu", "sigmoid", "tanh", "stanh", "softmax", "linear")


def _sigmoid(x: np.ndarray, y: np.ndarray) -> None:
    # exp(-x) overflows to inf for very negative x, and 1 / (1 + inf) = 0 is the right limit.
    with np.errstate(over="ignore"):
        np.negative(x, out=y)
        np.exp(y, out=y)
    np.add(y, 1, out=y)
    np.reciprocal(y, out=y)


def _scaled_tanh(a: float, b: float):
    """The forward pass ``y = a * tanh(b * x)``: the float32 kernel, numpy's tanh for float64."""
    def forward(x: np.ndarray, y: np.ndarray) -> None:
        if x.dtype == np.float32:
            kernels.scaled_tanh_forward(x, a, b, y)
            return
        np.tanh(x if b == 1 else np.multiply(x, b, out=y), out=y)  # no pass for a scale of 1
        if a != 1:
            np.multiply(y, a, out=y)
    return forward


def _stanh_backward(y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    kernels.stanh_backward(y, dy, STANH_A, STANH_B, dx)


def _channels(a: np.ndarray) -> np.ndarray:
    """The (N, C, S) view the softmax kernels normalize over C: S = 1 for (N, K) scores."""
    return a.reshape(a.shape[0], a.shape[1], -1)


# name -> (forward(x, y), backward(y, dy, dx)) on flat contiguous arrays.
_ELEMENTWISE = {
    "relu": (kernels.relu_forward, kernels.relu_backward),
    "sigmoid": (_sigmoid, kernels.sigmoid_backward),
    "tanh": (_scaled_tanh(1.0, 1.0), kernels.tanh_backward),
    "stanh": (_scaled_tanh(STANH_A, STANH_B), _stanh_backward),
}


class Activation(Layer):
    """Applies ``activation`` to its input; the output has the input's shape.

    ``'relu'``, ``'sigmoid'``, ``'tanh'``, ``'stanh'`` (1.7159 * tanh(2x/3), LeCun's scaled
    tanh) and ``'linear'`` (identity, copied into the layer's own buffer) work elementwise on
    any rank. ``'softmax'`` normalizes over axis 1: the classes of ``(N, K)`` scores, the
    channels of ``(N, C, H, W)`` maps (and axis 1 of any other rank >= 2). A softmax over
    ``(N, K)`` scores read by a softmax loss is folded into it (``folded_into`` names that
    loss; see :mod:`nnkit.layers.loss`): its ``ComputeGradient`` then has nothing to do.
    """

    conf_field = "activation"
    conf_renames = {"type": "activation"}

    def __init__(self, activation: str, name: str | None = None) -> None:
        super().__init__(name)
        if activation not in ACTIVATIONS:
            raise self.error(f"unknown activation {activation!r}; expected one of "
                             f"{', '.join(ACTIVATIONS)}")
        self.activation = activation
        self.folded_into: Layer | None = None  # the loss that read this softmax's input

    def get_config(self) -> dict[str, Any]:
        return {"activation": self.activation, "name": self.name}

    def ComputeFeature(self, *srcs: Layer) -> np.ndarray:
        """Computes ``data``; a loss may then fold this softmax in (``folded_into``)."""
        self.folded_into = None
        return super().ComputeFeature(*srcs)

    def ComputeGradient(self) -> None:
        """The base class's, except after a loss folded this softmax in: that loss already
        gave the gradient with respect to the logits to this layer's source."""
        if self.folded_into is not None and self.grad is None:
            return
        super().ComputeGradient()

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.activation == "softmax" and len(input_shape) < 1:
            raise self.error(f"softmax needs a class or channel axis: got per-example shape "
                             f"{input_shape} (input of shape (batch,))")
        return tuple(input_shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        y = self.buffer("y", x.shape)
        if self.activation == "softmax":
            kernels.softmax_forward(_channels(x), _channels(y))
        elif self.activation == "linear":
            np.copyto(y, x)
        else:
            _elementwise(_ELEMENTWISE[self.activation][0], x.reshape(-1), y.reshape(-1))
        self._y = y
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        if not need_input_grad:
            return None  # no params: nothing else to compute
        dy = np.ascontiguousarray(dy, dtype=self.dtype)
        dx = self.input_grad_buffer(dy.shape)
        if self.activation == "softmax":
            kernels.softmax_backward(_channels(self._y), _channels(dy), _channels(dx))
        elif self.activation == "linear":
            np.copyto(dx, dy)
        else:
            _elementwise(_ELEMENTWISE[self.activation][1], self._y.reshape(-1), dy.reshape(-1),
                         dx.reshape(-1))
        return dx


def _elementwise(fn, *arrays: np.ndarray) -> None:
    """``fn(*arrays)`` on flat arrays, over parts of them in parallel (``parallel.split``).

    Each part is a contiguous slice of every array, so the result is the same whatever
    the split.
    """
    def run(part: int, lo: int, hi: int) -> None:
        fn(*(a[lo:hi] for a in arrays))

    parallel.split(run, len(arrays[0]))
