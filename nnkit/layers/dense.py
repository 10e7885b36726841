"""Fully connected layer: ``y = x W^T + b``, one GEMM per batch each way.

Each GEMM is cut into column slices computed in parallel (``nnkit.parallel``, one
single-threaded BLAS call per part): forward and the weight gradient over the output units,
the input gradient over the input features. Slicing the columns rather than the batch
rows keeps each part's share of the weight matrix, the big operand, to itself.

Forward computes ``y.T = W @ x.T`` ((output_dim, batch), then transposed into y with the
bias): OpenBLAS's AVX-512 kernels run that layout much faster than ``x @ W.T``, its AVX2
kernels alike (measured alternating in one process on a 2-core Zen 5 VM, the MLP at batch
64: training step 34.6 -> 30.2 ms and inference 17.4 -> 8.5 ms with the AVX-512 kernels,
38.4 -> 39.6 and 19.4 -> 12.7 with AVX2). Whole products on the BLAS's own two threads
were a little faster still for the MLP (29.1 and 8.1 ms), but OpenBLAS's threads then spin
after each product against the helpers of the layers around (``nnkit.parallel``): the
CIFAR-10 CNN's step, with one small dense layer, went from 55 to 95 ms.

In a ``fit`` step whose updater takes it (``defer_param_grads``), the weight gradient is
not computed here but described (``Param.defer``): the updater computes it a block of rows
at a time and applies each block while it is in the cache, so the gradient never goes
through memory (see ``Updater.Update``).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import initializers
from .. import parallel
from .._kernels import im2col as _layout
from .base import DeferredGrad, GemmProduct, Layer, Param, param_specs, reject_unknown


class Dense(Layer):
    """A fully connected layer with ``output_dim`` units.

    Accepts 2-D ``(batch, features)`` or 4-D ``(batch, C, H, W)`` input (flattened).
    The weight has shape ``(output_dim, input_features)`` and the bias ``(output_dim,)``.

    Parameter options (defaults in brackets): ``init`` ['uniform', i.e. U(-0.05, 0.05)],
    ``w_low``/``w_high``, ``w_mean``/``w_std``, ``w_value``; the bias the same with ``b_``
    [constant 0]; ``w_lr``/``b_lr`` learning-rate multipliers and ``w_wd``/``b_wd``
    weight-decay multipliers [1]. See :mod:`nnkit.initializers` for the init kinds.
    """

    conf_field = "dense"

    def __init__(self, output_dim: int, init: str | None = None, bias: bool = True,
                 name: str | None = None, **param_kwargs: Any) -> None:
        super().__init__(name)
        if int(output_dim) < 1:
            raise self.error(f"output_dim must be positive, got {output_dim}")
        self.output_dim = int(output_dim)
        self.init = init
        self.use_bias = bool(bias)
        self._param_kwargs = dict(param_kwargs)
        w_spec, w_lr, w_wd = param_specs("w", init, param_kwargs, initializers.UNIFORM, self.describe())
        b_spec, b_lr, b_wd = param_specs("b", None, param_kwargs, initializers.ZERO, self.describe())
        reject_unknown("Dense", param_kwargs)
        self.params = [Param(self, "weight", w_spec, w_lr, w_wd)]
        if self.use_bias:
            self.params.append(Param(self, "bias", b_spec, b_lr, b_wd))

    def get_config(self) -> dict[str, Any]:
        return {"output_dim": self.output_dim, "init": self.init, "bias": self.use_bias,
                "name": self.name, **self._param_kwargs}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) not in (1, 3):
            raise self.error(f"expected (batch, features) or (batch, C, H, W) input, got "
                             f"per-example shape {input_shape}")
        return (self.output_dim,)

    def param_shapes(self, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Weight (output_dim, input features), bias (output_dim,)."""
        shapes = {"weight": (self.output_dim, math.prod(input_shape)), "bias": (self.output_dim,)}
        return {p.name: shapes[p.name] for p in self.params}

    def create_params(self, input_shape: tuple[int, ...], dtype: np.dtype,
                      rng: np.random.Generator) -> None:
        shapes = self.param_shapes(input_shape)
        fan_in = shapes["weight"][1]
        for p in self.params:
            p.allocate(shapes[p.name], dtype, fan_in, self.output_dim, rng)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x.reshape(x.shape[0], -1)
        y = self.buffer("y", (x.shape[0], self.output_dim))
        y_t = self.buffer("y_t", (self.output_dim, x.shape[0]))
        w = self.params[0].data
        b = self.params[1].data if self.use_bias else None
        no_bias = self.buffer("no_bias", (0,))

        def run(part: int, lo: int, hi: int) -> None:
            np.matmul(w[lo:hi], self._x.T, out=y_t[lo:hi])  # the faster layout (module notes)
            _layout.transpose_bias(y_t[lo:hi], no_bias if b is None else b[lo:hi], y[:, lo:hi])

        parallel.split(run, self.output_dim, self._x.size, blas=True)
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        weight = self.params[0]
        db = self.params[1].grad_buffer() if self.use_bias else None
        if self.defer_param_grads:
            weight.defer(self._weight_grad_rows(dy))
            if db is not None:
                np.sum(dy, axis=0, out=db)
        else:
            dw = weight.grad_buffer()

            def param_grads(part: int, lo: int, hi: int) -> None:
                np.matmul(dy[:, lo:hi].T, self._x, out=dw[lo:hi])
                if db is not None:
                    np.sum(dy[:, lo:hi], axis=0, out=db[lo:hi])

            parallel.split(param_grads, self.output_dim, self._x.size, blas=True)
        if not need_input_grad:
            return None
        dx = self.input_grad_buffer(self._x.shape)

        def input_grad(part: int, lo: int, hi: int) -> None:
            np.matmul(dy, weight.data[:, lo:hi], out=dx[:, lo:hi])

        parallel.split(input_grad, dx.shape[1], dy.size, blas=True)
        return dx.reshape((dx.shape[0],) + self.input_shape)

    def _weight_grad_rows(self, dy: np.ndarray) -> DeferredGrad:
        """The weight gradient ``dy.T @ x``, described (see ``Param.defer``): rows of it on
        demand, and a bound on its elements, ``batch * max|dy| * max|x|`` (NaN if either
        holds a NaN; two reads of arrays far smaller than the weights)."""
        x = self._x
        # dy may be a buffer the layers below write their input gradients into: kept here
        # until the update (batch x outputs, small beside the weights).
        kept = self.buffer("dy", dy.shape)
        np.copyto(kept, dy)
        dy = kept

        def rows(lo: int, hi: int, out: np.ndarray) -> None:
            np.matmul(dy[:, lo:hi].T, x, out=out)

        bound = x.shape[0] * _max_abs(dy) * _max_abs(x)
        return DeferredGrad(rows, bound, x.size)

    def gemm_products(self) -> list[GemmProduct]:
        """``x @ W.T``; backward ``dy.T @ x`` and ``dy @ W`` (x (B, K), W (N, K), dy (B, N))."""
        if self.data is None:
            return []
        (b, n), k = self.data.shape, self.params[0].data.shape[1]
        products = [GemmProduct("forward", "output", (b, k), (n, k), transpose_b=True),
                    GemmProduct("backward", "weight gradient", (b, n), (b, k), transpose_a=True)]
        if self.srcs and self.srcs[0].accepts_grad:
            products.append(GemmProduct("backward", "input gradient", (b, n), (n, k)))
        return products


def _max_abs(a: np.ndarray) -> float:
    """The largest magnitude in ``a`` as a Python float (NaN if ``a`` holds a NaN)."""
    return max(float(a.max()), -float(a.min())) if a.size else 0.0
