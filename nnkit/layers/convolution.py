"""2-D convolution over NCHW images, as one im2col + GEMM per batch.

Forward, for a batch x (N, C, H, W), weight W (F, C, kh, kw) and bias b (F,):

    col = im2col(x)                      (C*kh*kw, N*OH*OW)   kept for backward
    out = W.reshape(F, -1) @ col         (F, N*OH*OW)         one BLAS call
    y   = scatter_bias(out, b)           (N, F, OH, OW)

Backward, for dy (N, F, OH, OW):

    dy_t, db = gather_sum(dy)            (F, N*OH*OW), (F,)
    dW  = dy_t @ col.T                   written straight into the weight's grad
    dx  = col2im(W_flat.T @ dy_t)        skipped when the source takes no gradient

Output size: OH = floor((H + 2*ph - kh) / sh) + 1, likewise OW (convolution floors).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import initializers
from .._kernels import im2col as _k
from .base import Layer, Param, param_specs, reject_unknown

IntPair = int | tuple[int, int]


def _pair(value: IntPair, what: str, minimum: int, owner: str) -> tuple[int, int]:
    """Normalizes an int or an (h, w) pair, checking every entry is an int >= ``minimum``."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 for v in pair):
        raise TypeError(f"{owner}: {what} must be an int or a pair (h, w) of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{owner}: {what} must be >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


def conv_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """``floor((size + 2*pad - kernel) / stride) + 1``; < 1 when the kernel does not fit."""
    return (size + 2 * pad - kernel) // stride + 1


class Convolution2D(Layer):
    """A 2-D convolution (cross-correlation, like Caffe and PyTorch) with ``nb_filter`` filters.

    Args:
        nb_filter: the number of output channels F.
        kernel: the kernel size, an int or a pair (kh, kw).
        stride: the step between windows, an int or a pair (sh, sw).
        pad: zeros added on each side of the image, an int or a pair (ph, pw).
        init: the weight init kind (see :mod:`nnkit.initializers`); default uniform.
        bias: whether the layer has a bias (initialized to zero by default).
        name: the layer's name.
        **param_kwargs: per-parameter settings ``w_std``, ``w_mean``, ``w_low``, ``w_high``,
            ``w_value``, ``w_lr``, ``w_wd`` and the same with ``b_`` for the bias.

    Input (N, C, H, W); output (N, F, OH, OW); weight (F, C, kh, kw); bias (F,).
    ``Convolution2D(32, 5, 1, 2, w_std=0.0001, b_lr=2)`` is 32 filters of 5x5, stride 1,
    pad 2, gaussian weights with std 1e-4 and a doubled bias learning rate.
    """

    def __init__(self, nb_filter: int, kernel: IntPair, stride: IntPair = 1, pad: IntPair = 0,
                 init: str | None = None, bias: bool = True, name: str | None = None,
                 **param_kwargs: Any) -> None:
        super().__init__(name)
        owner = self.describe()
        if isinstance(nb_filter, bool) or not isinstance(nb_filter, (int, np.integer)) \
                or nb_filter < 1:
            raise self.error(f"nb_filter must be a positive int, got {nb_filter!r}")
        self.nb_filter = int(nb_filter)
        self.kernel = _pair(kernel, "kernel", 1, owner)
        self.stride = _pair(stride, "stride", 1, owner)
        self.pad = _pair(pad, "pad", 0, owner)
        self.init = init
        self.bias = bool(bias)
        self._param_kwargs = dict(param_kwargs)  # kept verbatim for get_config
        self._x_shape: tuple[int, ...] | None = None  # input shape of the last forward
        kwargs = dict(param_kwargs)
        self._w_spec = param_specs("w", init, kwargs, initializers.UNIFORM)
        self._b_spec = param_specs("b", None, kwargs, initializers.ZERO)
        reject_unknown(owner, kwargs)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, kernel/stride/pad as (h, w) pairs."""
        return {"nb_filter": self.nb_filter, "kernel": self.kernel, "stride": self.stride,
                "pad": self.pad, "init": self.init, "bias": self.bias, "name": self.name,
                **self._param_kwargs}

    # ----------------------------------------------------------------- shapes and params
    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(F, OH, OW) for an input (C, H, W); raises naming the layer if it does not fit."""
        _, h, w = self.require_images(input_shape)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
        if oh < 1 or ow < 1:
            raise self.error(
                f"kernel {self.kernel} is larger than the padded input ({h + 2 * ph}, "
                f"{w + 2 * pw}) (input (batch, {', '.join(map(str, input_shape))}), "
                f"pad {self.pad})")
        return self.nb_filter, oh, ow

    def create_params(self, input_shape: tuple[int, ...], dtype: np.dtype,
                      rng: np.random.Generator) -> None:
        """Weight (F, C, kh, kw) with fan_in C*kh*kw and fan_out F*kh*kw; bias (F,)."""
        c = input_shape[0]
        kh, kw = self.kernel
        fan_in, fan_out = c * kh * kw, self.nb_filter * kh * kw
        specs = [("w", self._w_spec, (self.nb_filter, c, kh, kw))]
        if self.bias:
            specs.append(("b", self._b_spec, (self.nb_filter,)))
        self.params = []
        for pname, (spec, lr_mult, wd_mult), shape in specs:
            p = Param(self, pname, spec, lr_mult, wd_mult)
            p.allocate(shape, dtype, fan_in, fan_out, rng)
            self.params.append(p)

    # ----------------------------------------------------------------- compute
    def _geometry(self) -> tuple[int, int, int, int, int, int]:
        """(kh, kw, sh, sw, ph, pw), the argument tail of every im2col kernel call."""
        return (*self.kernel, *self.stride, *self.pad)

    def _bias_array(self, attr: str) -> np.ndarray:
        """The bias ``data`` or ``grad`` (``attr``), or an empty array: "no bias" to the kernels."""
        if self.bias:
            return getattr(self.params[1], attr)
        return self.buffer("no_bias", (0,))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """y = conv(x, W) + b for a batch x (N, C, H, W); keeps im2col(x) for backward."""
        x = np.ascontiguousarray(x)
        n = x.shape[0]
        f, oh, ow = self.output_shape(x.shape[1:])
        w = self.params[0].data
        k = w[0].size
        col = self.buffer("col", (k, n * oh * ow))
        _k.im2col(x, col, *self._geometry())
        # The (F, N*OH*OW) buffer is shared with backward's gathered dy: never live at once.
        out = self.buffer("fnp", (f, n * oh * ow))
        np.matmul(w.reshape(f, k), col, out=out)
        y = self.buffer("y", (n, f, oh, ow))
        _k.scatter_bias(out, self._bias_array("data"), y.reshape(n, f, oh * ow))
        self._x_shape = x.shape
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Fills dW (and db) from dy (N, F, OH, OW); returns dx, or None if not needed."""
        if self._x_shape is None:
            raise self.error("backward called before forward", RuntimeError)
        expected = (self._x_shape[0], *self.output_shape(self._x_shape[1:]))
        if dy.shape != expected:
            raise self.error(f"backward got dy of shape {dy.shape}, expected {expected} for the "
                             f"input {self._x_shape} of the last forward")
        dy = np.ascontiguousarray(dy, dtype=self.dtype)
        n, f, oh, ow = dy.shape
        wp = self.params[0]
        k = wp.data[0].size
        col = self._buffers["col"]  # im2col of the last forward's input
        dy_t = self.buffer("fnp", (f, n * oh * ow))
        _k.gather_sum(dy.reshape(n, f, oh * ow), dy_t, self._bias_array("grad"))
        # dW = dy_t @ col.T: col.T is a transposed view, which BLAS takes without a copy.
        np.matmul(dy_t, col.T, out=wp.grad.reshape(f, k))
        if not need_input_grad:
            return None
        dcol = self.buffer("dcol", col.shape)
        np.matmul(wp.data.reshape(f, k).T, dy_t, out=dcol)
        dx = self.buffer("dx", self._x_shape)
        _k.col2im(dcol, dx, *self._geometry())
        return dx
