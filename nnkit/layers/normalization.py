"""Local response normalization (LRN) over NCHW images; the kernels are in ``_kernels/lrn.pyx``.

Large batches run as parallel parts (``nnkit.parallel``): ranges of blocks (images
across channels, planes within a channel), each part with scratch of its own.
"""
from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

from .._kernels import lrn as _kernels
from .. import parallel
from .base import Layer

#: The values ``norm_region`` accepts (Caffe's ACROSS_CHANNELS and WITHIN_CHANNEL).
NORM_REGIONS = ("across_channels", "within_channel")


class _Views(NamedTuple):
    """One batch's kernel arguments: arrays as 2-D ``(blocks, rows * cols)`` views."""

    x: np.ndarray
    y: np.ndarray
    scale: np.ndarray       # k + alpha/n * S
    scale_pow: np.ndarray   # scale ** -beta, kept so backward needs no pow
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
        self.size = int(size)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.k = float(k)
        self.norm_region = norm_region
        self._x: np.ndarray | None = None

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

    def _views(self, x: np.ndarray) -> _Views:
        """The kernel arguments for ``x``, with the layer's buffers for this shape.

        Across channels a block is one image, (C, H*W); within a channel it is one plane,
        (H, W). Both are free reshapes of contiguous NCHW arrays. Buffers keep their memory
        while the shape stays the same, so backward sees what forward wrote.
        """
        n, c, h, w = x.shape
        blocks, rows, cols = (n, c, h * w) if self.across else (n * c, h, w)
        flat = (blocks, rows * cols)
        y, scale, scale_pow = (self.buffer(key, x.shape, x.dtype).reshape(flat)
                               for key in ("y", "scale", "scale_pow"))
        scratch = [tuple(self.buffer(f"{key}{part}", (rows * cols,), np.float64)
                         for key in ("vals", "tmp"))
                   for part in range(len(parallel.parts(blocks, rows * cols)))]
        return _Views(x.reshape(flat), y, scale, scale_pow, scratch, rows, cols)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalizes the batch ``x`` (N, C, H, W); keeps ``x`` and the scale for backward."""
        self.output_shape(x.shape[1:])
        x = np.ascontiguousarray(x)
        v = self._views(x)

        def run(part: int, lo: int, hi: int) -> None:
            _kernels.lrn_forward(v.x[lo:hi], v.scale[lo:hi], v.scale_pow[lo:hi], v.y[lo:hi],
                                 *v.scratch[part], self.across, v.rows, v.cols, self.size,
                                 self.alpha, self.beta, self.k)

        parallel.split(run, len(v.x), v.x.shape[1])
        self._x = x
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
        dy2 = np.ascontiguousarray(dy, dtype=x.dtype).reshape(v.x.shape)
        dx = self.buffer("dx", x.shape, x.dtype)
        dx2 = dx.reshape(v.x.shape)

        def run(part: int, lo: int, hi: int) -> None:
            _kernels.lrn_backward(v.x[lo:hi], v.y[lo:hi], v.scale[lo:hi], v.scale_pow[lo:hi],
                                  dy2[lo:hi], dx2[lo:hi], *v.scratch[part], self.across, v.rows,
                                  v.cols, self.size, self.alpha, self.beta)

        parallel.split(run, len(v.x), v.x.shape[1])
        return dx
