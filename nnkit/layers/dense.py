"""Fully connected layer: ``y = x W^T + b``, one GEMM per batch each way.

Each product is one call on all of the BLAS's threads. Forward computes ``y.T = W @ x.T``
((output_dim, batch), then transposed into y with the bias): OpenBLAS's AVX-512 kernels run
that layout much faster than ``x @ W.T`` (the MLP's five hidden products at batch 64: 5.0
against 7.7 ms on a 2-core Zen 5 VM), its AVX2 kernels alike. Whole products also beat
cutting them into column slices run by ``nnkit.parallel`` on one BLAS thread each, which
this layer did before (the MLP's training step 34.6 -> 29.1 ms with the AVX-512 kernels,
38.4 -> 38.1 with AVX2; inference 17.4 -> 8.1 and 19.4 -> 12.1 ms; measured alternating in
one process).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import initializers
from .base import GemmProduct, Layer, Param, param_specs, reject_unknown


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
        np.matmul(self.params[0].data, self._x.T, out=y_t)  # the faster layout (module notes)
        if self.use_bias:
            np.add(y_t.T, self.params[1].data, out=y)
        else:
            np.copyto(y, y_t.T)
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        weight = self.params[0]
        np.matmul(dy.T, self._x, out=weight.grad)
        if self.use_bias:
            np.sum(dy, axis=0, out=self.params[1].grad)
        if not need_input_grad:
            return None
        dx = self.buffer("dx", self._x.shape)
        np.matmul(dy, weight.data, out=dx)
        return dx.reshape((dx.shape[0],) + self.input_shape)

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
