"""Normalization layers: local response normalization (LRN) over NCHW images, kernels in
``_kernels/lrn.pyx``, and batch normalization, kernels in ``_kernels/batchnorm.pyx``.

Large batches run as parallel parts (``nnkit.parallel``): for LRN ranges of blocks (images
across channels, planes within a channel), each part with scratch of its own; for batch
normalization ranges of channels, whose statistics are independent.
"""
from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

from .._kernels import lrn as _kernels
from .._kernels import batchnorm as _bn_kernels
from .. import initializers
from .. import parallel
from .base import Layer, Param

#: The values ``norm_region`` accepts (Caffe's ACROSS_CHANNELS and WITHIN_CHANNEL).
NORM_REGIONS = ("across_channels", "within_channel")


class _Views(NamedTuple):
    """One batch's kernel arguments: arrays as 2-D ``(blocks, rows * cols)`` views."""

    x: np.ndarray
    y: np.ndarray
    scale: np.ndarray       # k + alpha/n * S for backward; no blocks when not kept
    scratch: list           # per part of a split batch: two float64 arrays, one block long
    rows: int
    cols: int


class LRN2D(Layer):
    """Local response normalization (Caffe's LRN layer, PyTorch's ``local_response_norm``).

    Each entry is divided by a power of the energy in a window around it::

        y = x / (k + alpha / n * S) ** beta

    where ``S`` is the sum of ``x**2`` over the window (zero-padded at the borders) and ``n``
    is the number of cells in the window, padding included:

    - ``norm_region='across_channels'`` (default): the window runs over channels at the same
      pixel, ``size // 2`` channels before and ``(size - 1) // 2`` after; ``n = size``. This is
      exactly ``torch.nn.functional.local_response_norm(x, size, alpha, beta, k)``.
    - ``norm_region='within_channel'``: a ``size x size`` spatial window centred on the pixel,
      zero-padded by ``(size - 1) // 2`` (``size`` must be odd); ``n = size * size``. This is
      Caffe's WITHIN_CHANNEL, i.e. ``x / (k + alpha * avg_pool2d(x**2, size, stride=1,
      pad=(size - 1) // 2, count_include_pad=True)) ** beta``.

    Alpha scaling: ``alpha`` is divided by ``n`` as in Caffe and PyTorch. Krizhevsky et al.
    (AlexNet) do not divide; to reproduce their ``alpha`` pass ``alpha * n`` here.

    Args:
        size: the window size (channels, or pixels per side for ``within_channel``).
        alpha: the scale of the sum of squares (divided by ``n``, see above).
        beta: the exponent.
        k: the additive constant (keep it > 0 so an all-zero window does not divide by 0).
        norm_region: ``'across_channels'`` or ``'within_channel'``.
        name: the layer name.
    """

    conf_field = "lrn"

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0,
                 norm_region: str = "across_channels", name: str | None = None) -> None:
        super().__init__(name)
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise self.error(f"size must be a positive integer, got {size!r}")
        if norm_region not in NORM_REGIONS:
            raise self.error(f"unknown norm_region {norm_region!r}; expected one of "
                             f"{', '.join(repr(r) for r in NORM_REGIONS)}")
        if norm_region == "within_channel" and size % 2 == 0:
            # The box is centred on the pixel: an even side has no centre.
            raise self.error(f"norm_region 'within_channel' needs an odd size, got {size}")
        alpha, beta, k = float(alpha), float(beta), float(k)
        if not 0.0 <= alpha < float("inf"):  # these comparisons also reject NaN
            raise self.error(f"alpha must be a finite number >= 0, got {alpha}")
        if not -float("inf") < beta < float("inf"):
            raise self.error(f"beta must be finite, got {beta}")
        if not 0.0 < k < float("inf"):
            # k > 0 keeps the divisor positive: an all-zero window would divide by k ** beta.
            raise self.error(f"k must be a finite number > 0, got {k}")
        self.size = int(size)
        self.alpha = alpha
        self.beta = beta
        self.k = k
        self.norm_region = norm_region
        self._x: np.ndarray | None = None
        self._scale_kept = False  # whether the last forward kept the scale

    @property
    def across(self) -> bool:
        """True when the window runs over channels, False for a spatial window."""
        return self.norm_region == "across_channels"

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this layer."""
        return {"size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k,
                "norm_region": self.norm_region, "name": self.name}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The input shape (C, H, W); raises unless the input is a batch of images."""
        return self.require_images(input_shape)

    def _views(self, x: np.ndarray, keep_scale: bool = True) -> _Views:
        """The kernel arguments for ``x``, with the layer's buffers for this shape.

        Across channels a block is one image, (C, H*W); within a channel it is one plane,
        (H, W). Both are free reshapes of contiguous NCHW arrays. Buffers keep their memory
        while the shape stays the same, so backward sees what forward wrote. Without
        ``keep_scale`` the scale is an empty array, which the kernel leaves alone.
        """
        n, c, h, w = x.shape
        blocks, rows, cols = (n, c, h * w) if self.across else (n * c, h, w)
        flat = (blocks, rows * cols)
        y = self.buffer("y", x.shape, x.dtype).reshape(flat)
        scale = (self.buffer("scale", x.shape, x.dtype).reshape(flat) if keep_scale
                 else self.buffer("no_scale", (0, rows * cols), x.dtype))
        scratch = [tuple(self.buffer(f"{key}{part}", (rows * cols,), np.float64)
                         for key in ("vals", "tmp"))
                   for part in range(len(parallel.parts(blocks, rows * cols)))]
        return _Views(x.reshape(flat), y, scale, scratch, rows, cols)

    def _normalize(self, v: _Views) -> None:
        """Fills ``v.y`` (and ``v.scale``, if it has blocks) from ``v.x``."""
        def run(part: int, lo: int, hi: int) -> None:
            _kernels.lrn_forward(v.x[lo:hi], v.scale[lo:hi], v.y[lo:hi], *v.scratch[part],
                                 self.across, v.rows, v.cols, self.size, self.alpha, self.beta,
                                 self.k)

        parallel.split(run, len(v.x), v.x.shape[1])

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalizes the batch ``x`` (N, C, H, W); keeps ``x``, and in training mode the
        scale, for backward. Evaluation mode keeps no scale: the CIFAR-10 network holds one
        array fewer of each LRN's input size (backward computes it again if asked)."""
        self.output_shape(x.shape[1:])
        x = np.ascontiguousarray(x)
        self._normalize(self._views(x, keep_scale=self.training))
        self._x, self._scale_kept = x, self.training
        return self.buffer("y", x.shape, x.dtype)

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """The input gradient for ``dy`` (None when not needed: LRN has no parameters)."""
        if not need_input_grad:
            return None
        x = self._x
        if x is None:
            raise self.error("backward called before forward", RuntimeError)
        if dy.shape != x.shape:
            raise self.error(f"gradient of shape {dy.shape} does not match the output shape "
                             f"{x.shape}")
        v = self._views(x)
        if not self._scale_kept:  # an evaluation-mode forward: the scale again (y is the same)
            self._normalize(v)
            self._scale_kept = True
        dy2 = np.ascontiguousarray(dy, dtype=x.dtype).reshape(v.x.shape)
        dx = self.input_grad_buffer(x.shape, x.dtype)
        dx2 = dx.reshape(v.x.shape)

        def run(part: int, lo: int, hi: int) -> None:
            _kernels.lrn_backward(v.x[lo:hi], v.y[lo:hi], v.scale[lo:hi], dy2[lo:hi],
                                  dx2[lo:hi], *v.scratch[part], self.across, v.rows, v.cols,
                                  self.size, self.alpha, self.beta)

        parallel.split(run, len(v.x), v.x.shape[1])
        return dx


class BatchNormalization(Layer):
    """Batch normalization (Ioffe & Szegedy 2015) with tf.keras 2.x semantics, on NCHW.

    Statistics are per channel for images ``(batch, C, H, W)`` (over batch, height and
    width) and per feature for rows ``(batch, F)`` (over the batch)::

        y = weight * (x - mean) / sqrt(var + epsilon) + bias

    - Training mode (``layer.training``): ``mean`` and ``var`` are the batch's mean and biased
      variance, and each forward pass updates the running statistics (layer state, see
      :attr:`Layer.state`, never touched by updaters)::

          moving_mean     = momentum * moving_mean     + (1 - momentum) * mean
          moving_variance = momentum * moving_variance + (1 - momentum) * var

      tf.keras's convention: its moving variance follows the biased batch variance too.
      PyTorch's ``BatchNorm`` differs in two ways: its ``momentum`` is ``1 - momentum``
      here, and its ``running_var`` follows the unbiased variance ``var * M / (M - 1)``.
    - Evaluation mode (``layer.eval()``): ``mean`` and ``var`` are the moving statistics, so
      the layer is a fixed per-channel affine map (and so is its gradient).

    Params: ``weight`` (gamma, init 1) and ``bias`` (beta, init 0), one value per channel;
    state: ``moving_mean`` (init 0) and ``moving_variance`` (init 1), in the layer's dtype.

    Args:
        momentum: the running statistics' decay, in [0, 1] (1 keeps them fixed).
        epsilon: added to the variance before the square root, > 0.
        name: the layer name.
    """

    conf_field = "batch_norm"

    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3,
                 name: str | None = None) -> None:
        super().__init__(name)
        momentum, epsilon = float(momentum), float(epsilon)
        if not 0.0 <= momentum <= 1.0:  # also rejects NaN
            raise self.error(f"momentum must be in [0, 1], got {momentum}")
        if not 0.0 < epsilon < float("inf"):
            raise self.error(f"epsilon must be positive and finite, got {epsilon}")
        self.momentum = momentum
        self.epsilon = epsilon
        self.params = [Param(self, "weight", initializers.InitSpec("constant", {"value": 1.0})),
                       Param(self, "bias", initializers.ZERO)]
        self._x: np.ndarray | None = None  # the last forward's input, as an (N, C, S) view
        self._batch_stats = True  # whether the last forward used the batch's statistics
        #: Under distributed training the :class:`nnkit.distributed.World` (duck-typed:
        #: ``allreduce``) that makes the batch statistics the global batch's (see :meth:`distribute`).
        self.sync: Any = None

    def distribute(self, world: Any, step: int) -> None:
        """Before a training batch: synchronised statistics under a distributed model.

        With a world, training-mode statistics are the global batch's: one all-reduce of the
        per-channel sums of ``x`` and ``x**2`` and the counts (float64; the variance is
        ``E[x^2] - E[x]^2``) in the forward pass, one of the weighted per-channel sums of
        ``dy`` and ``dy * xhat`` in the backward pass, so every rank normalises, updates the
        moving statistics and back-propagates as one process would on the whole batch.
        """
        self.sync = world

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this layer."""
        return {"momentum": self.momentum, "epsilon": self.epsilon, "name": self.name}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The input shape; raises unless the input is rows (2-D) or images (4-D)."""
        if len(input_shape) not in (1, 3):
            raise self.error(f"expects 2-D input (batch, features) or 4-D input (batch, "
                             f"channels, height, width), got {len(input_shape) + 1}-D input "
                             f"of shape (batch, {', '.join(map(str, input_shape))})")
        return tuple(input_shape)

    def param_shapes(self, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Weight and bias, one value per channel (the running statistics are state)."""
        return {p.name: (input_shape[0],) for p in self.params}

    def create_params(self, input_shape: tuple[int, ...], dtype: np.dtype,
                      rng: np.random.Generator) -> None:
        """Allocates weight and bias and the running statistics, one value per channel."""
        channels = input_shape[0]
        shapes = self.param_shapes(input_shape)
        for p in self.params:
            p.allocate(shapes[p.name], dtype, channels, channels, rng)
        self.add_state("moving_mean", np.zeros(channels, dtype))
        self.add_state("moving_variance", np.ones(channels, dtype))

    def _stats(self, channels: int) -> tuple[np.ndarray, ...]:
        """The float64 per-channel buffers: mean, var, inv_std, sum_dy, sum_dy_xhat."""
        return tuple(self.buffer(key, (channels,), np.float64)
                     for key in ("mean", "var", "inv_std", "sum_dy", "sum_dy_xhat"))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalizes the batch ``x``; in training mode also updates the running statistics."""
        self.output_shape(x.shape[1:])
        x = np.ascontiguousarray(x)
        n, c = x.shape[:2]
        spatial = int(np.prod(x.shape[2:], dtype=np.int64))  # 1 for rows
        x3 = x.reshape(n, c, spatial)
        batch_stats = self.training
        if batch_stats and n * spatial == 0:
            raise self.error("training mode needs a non-empty batch to take statistics of")
        mean, var, inv_std = self._stats(c)[:3]
        if not batch_stats:
            mean[...] = self.state["moving_mean"]
            var[...] = self.state["moving_variance"]
        synced = batch_stats and self.sync is not None
        if synced:  # the global batch's statistics, given to the kernel as fixed ones
            self._global_stats(x3, mean, var)
        gamma, beta = self.params[0].data, self.params[1].data
        y = self.buffer("y", x.shape, x.dtype)
        y3 = y.reshape(x3.shape)

        def run(part: int, lo: int, hi: int) -> None:
            _bn_kernels.batchnorm_forward(x3, gamma, beta, mean, var, inv_std, self.epsilon,
                                          batch_stats and not synced, y3, lo, hi)

        parallel.split(run, c, n * spatial)
        if batch_stats:
            k = self.momentum
            for key, batch in (("moving_mean", mean), ("moving_variance", var)):
                moving = self.state[key]
                moving[...] = k * moving.astype(np.float64) + (1.0 - k) * batch  # in place: live
        self._x = x3
        self._batch_stats = batch_stats
        return y

    def _global_stats(self, x3: np.ndarray, mean: np.ndarray, var: np.ndarray) -> None:
        """Writes the global batch's per-channel mean and biased variance (one all-reduce)."""
        c = x3.shape[1]
        sums = self.buffer("sync_stats", (2 * c + 1,), np.float64)
        sums[:c] = x3.sum(axis=(0, 2), dtype=np.float64)
        sums[c:2 * c] = np.einsum("ncs,ncs->c", x3, x3, dtype=np.float64)
        sums[2 * c] = x3.shape[0] * x3.shape[2]
        self.sync.allreduce(sums)
        count = sums[2 * c]
        np.divide(sums[:c], count, out=mean)
        np.maximum(sums[c:2 * c] / count - mean * mean, 0.0, out=var)  # rounding may go below 0

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Fills the weight and bias grads; returns the input gradient (None if not needed).

        Differentiates the last forward pass, with the statistics it used (the batch's in
        training mode, the moving ones in evaluation mode).
        """
        x3 = self._x
        if x3 is None:
            raise self.error("backward called before forward", RuntimeError)
        shape = (x3.shape[0],) + self.input_shape
        if dy.shape != shape:
            raise self.error(f"gradient of shape {dy.shape} does not match the output shape "
                             f"{shape}")
        dy3 = np.ascontiguousarray(dy, dtype=x3.dtype).reshape(x3.shape)
        mean, _, inv_std, sum_dy, sum_dy_xhat = self._stats(x3.shape[1])
        gamma = self.params[0].data
        dgamma, dbeta = self.params[0].grad, self.params[1].grad
        dx = self.input_grad_buffer(shape, x3.dtype) if need_input_grad else None
        dx3 = None if dx is None else dx.reshape(x3.shape)

        synced = self._batch_stats and self.sync is not None and dx3 is not None

        def grads(part: int, lo: int, hi: int) -> None:
            _bn_kernels.batchnorm_param_grads(x3, dy3, mean, inv_std, sum_dy, sum_dy_xhat,
                                              dgamma, dbeta, lo, hi)

        def inputs(part: int, lo: int, hi: int) -> None:
            _bn_kernels.batchnorm_input_grad(x3, dy3, gamma, mean, inv_std, sum_dy,
                                             sum_dy_xhat, self._batch_stats, dx3, lo, hi)

        def run(part: int, lo: int, hi: int) -> None:
            grads(part, lo, hi)
            if dx3 is not None:
                inputs(part, lo, hi)

        work = x3.shape[0] * x3.shape[2]
        if not synced:
            parallel.split(run, x3.shape[1], work)
            return dx
        # The global batch's sums, between the two passes. dy is the gradient of this shard's
        # mean loss; weighting each rank's sums by its share of the global batch gives the
        # global loss's sums rescaled so that the kernel's own 1 / (shard count) is right.
        parallel.split(grads, x3.shape[1], work)
        c = x3.shape[1]
        sums = self.buffer("sync_grads", (2 * c,), np.float64)
        sums[:c], sums[c:] = sum_dy, sum_dy_xhat
        self.sync.allreduce(sums, weighted=True)
        sum_dy[...], sum_dy_xhat[...] = sums[:c], sums[c:]
        parallel.split(inputs, c, work)
        return dx
