"""2-D max and average pooling over NCHW images, with Caffe's output-size rule.

Output size per axis (``ceil_mode=True``, Caffe's and this module's default):

    out = ceil((size + 2 * pad - k) / stride) + 1

and ``floor`` instead of ``ceil`` with ``ceil_mode=False``. With ``ceil_mode`` a last window
that would start at or beyond ``size + pad`` (entirely in the right padding) is dropped, the
rule Caffe and PyTorch share; the sizes match PyTorch's ``ceil_mode`` exactly.

Max pooling never picks a padding cell. Average pooling divides by the number of window
cells inside the padded image ``[-pad, size + pad)`` (Caffe; PyTorch's
``count_include_pad=True``): in ceil mode a window may reach past ``size + pad`` and those
cells do not count.

The kernels (``nnkit/_kernels/pooling.pyx``) pool the forward passes without positions
row by row, straight from the image; max pooling with positions and average pooling's
backward pass first copy each image into a scratch plane where every window is whole and
every load contiguous, and :class:`_Geometry` builds the index tables for that copy once
per input shape. By rows, the CIFAR-10 net's pools at batch 100 (two threads, medians of 5
alternating runs on a Zen 5 machine) took 0.61 ms where the scratch route took 0.86
(pool1, max in evaluation mode), 0.20 for 0.30 and 0.15 for 0.22 (the average pools).
Large batches run as parallel parts (``nnkit.parallel``), each part a range of planes
with scratch of its own.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import parallel
from .._kernels import pooling as _kernels
from .base import DEFAULT_DTYPE, Layer, pair

IntPair = int | tuple[int, int]

#: The scratch holds about this many cells (or one plane, if larger): the planes of a
#: group share its rows, so small images still make long vector loops, and it stays in
#: the L1 cache.
_SCRATCH_CELLS = 4096


def pooled_size(size: int, k: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """The number of windows along one axis of ``size`` cells (may be < 1: the caller checks)."""
    span = size + 2 * pad - k
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1  # the last window would lie entirely in the right padding
    return out


def _window_cells(size: int, k: int, stride: int, pad: int, out: int) -> np.ndarray:
    """Each window's number of cells inside the padded axis ``[-pad, size + pad)``."""
    first = np.arange(out) * stride - pad
    return np.minimum(first + k, size + pad) - first


class _Geometry:
    """The kernels' scratch for one input shape and the tables that go with it.

    See ``nnkit/_kernels/pooling.pyx`` for the layout. Tables index the scratch as for the
    first plane of a group.

    Attributes:
        count: outputs computed per pass over a row (``group * wq`` rounded up to 4).
        cells: the scratch's size in cells.
        src: for each scratch cell, the plane index of the nearest image cell (the argmax).
        phases: for each phase, the [lo, hi) range of its cells that are image columns.
        border: (scratch index, plane index of the nearest image cell) of each cell outside
            the image, which max pooling fills with that copy.
        dst: for each plane cell, its scratch index, or one in the zero row after the last
            phase row if no window reads it (average pooling's backward pass).
        args: the trailing ints every kernel takes: ``kh, kw, sh, sw, ph, pw, wq, group``.
        window_cells: (out_h, out_w) cells of each window inside the padded image, Caffe's
            divisor for average pooling.
    """

    def __init__(self, image: tuple[int, int], out: tuple[int, int], k: tuple[int, int],
                 stride: tuple[int, int], pad: tuple[int, int]) -> None:
        (h, w), (kh, kw), (sh, sw), (ph, pw) = image, k, stride, pad
        wq = out[1] + (kw - 1) // sw
        rows = (out[0] - 1) * sh + kh
        group = max(1, _SCRATCH_CELLS // (rows * sw * wq))
        self.count = -(-group * wq // 4) * 4
        pitch = self.count + (kw - 1) // sw
        self.cells = (rows * sw + 1) * pitch
        self.args = (kh, kw, sh, sw, ph, pw, wq, group)
        self.window_cells = np.outer(_window_cells(h, kh, sh, ph, out[0]),
                                     _window_cells(w, kw, sw, pw, out[1]))
        # Image row of each scratch row, image column of each cell of a phase row.
        row = (np.arange(rows) - ph)[:, None, None]
        col = (np.arange(pitch) * sw + np.arange(sw)[:, None] - pw)[None]
        nearest = (np.clip(row, 0, h - 1) * w + np.clip(col, 0, w - 1)).ravel()
        inside = ((row >= 0) & (row < h) & (col >= 0) & (col < w)).ravel()
        mine = np.broadcast_to(np.arange(pitch) < wq, (rows, sw, pitch)).ravel()  # plane 0's
        self.src = np.ascontiguousarray(nearest, dtype=np.intc)
        in_col = (col[0, :, :wq] >= 0) & (col[0, :, :wq] < w)
        lo = np.argmax(in_col, axis=1)  # each phase's image columns are one run
        self.phases = np.ascontiguousarray(np.stack([lo, lo + in_col.sum(axis=1)], 1),
                                           dtype=np.intc)
        outside = np.flatnonzero(mine & ~inside)
        self.border = np.ascontiguousarray(np.stack([outside, nearest[outside]], 1),
                                           dtype=np.intc)
        self.dst = np.full(h * w, rows * sw * pitch, dtype=np.intc)
        self.dst[nearest[mine & inside]] = np.flatnonzero(mine & inside)


class _Pooling2D(Layer):
    """What max and average pooling share: arguments, output size, scratch geometry."""

    def __init__(self, pool_size: IntPair = (3, 3), stride: IntPair = 2, pad: IntPair = 0,
                 ceil_mode: bool = True, name: str | None = None) -> None:
        super().__init__(name)
        owner = self.describe()
        self.pool_size = pair(pool_size, "pool_size", 1, owner)
        self.stride = pair(stride, "stride", 1, owner)
        self.pad = pair(pad, "pad", 0, owner)
        self.ceil_mode = bool(ceil_mode)
        if any(p >= k for p, k in zip(self.pad, self.pool_size)):
            # A window could then lie entirely in the padding, with nothing to pool.
            raise self.error(f"pad {self.pad} must be smaller than pool_size {self.pool_size}")
        self._geometry: _Geometry | None = None

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this layer."""
        return {"pool_size": self.pool_size, "stride": self.stride, "pad": self.pad,
                "ceil_mode": self.ceil_mode, "name": self.name}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(C, H, W) -> (C, out_h, out_w); raises if the input is not an image or too small."""
        c, h, w = self.require_images(input_shape)
        out = tuple(pooled_size(size, k, s, p, self.ceil_mode)
                    for size, k, s, p in zip((h, w), self.pool_size, self.stride, self.pad))
        if min(out) < 1:
            raise self.error(f"input (C, H, W) = {tuple(input_shape)} is too small for "
                             f"pool_size {self.pool_size}, stride {self.stride}, pad {self.pad} "
                             f"(ceil_mode={self.ceil_mode}): output size {out} < 1")
        return (c, *out)

    def build(self, input_shape: Sequence[int], dtype: Any = DEFAULT_DTYPE) -> None:
        """Fixes the input shape and builds the scratch tables once for it."""
        super().build(input_shape, dtype)
        _, h, w = self.input_shape
        _, out_h, out_w = self.output_shape(self.input_shape)
        self._geometry = _Geometry((h, w), (out_h, out_w), self.pool_size, self.stride,
                                   self.pad)
        self._plane_size = h * w
        self._row_cells = _kernels.row_cells(w, out_w, self.pool_size[1], self.stride[1],
                                             self.pad[1])

    def _planes(self, a: np.ndarray) -> np.ndarray:
        """(N, C, H, W) as (N*C, H, W), the stack of planes the kernels take (free: no copy)."""
        a = np.ascontiguousarray(a, dtype=self.dtype)
        return a.reshape(-1, *a.shape[2:])

    @property
    def _window_args(self) -> tuple[int, int, int, int, int, int]:
        """The trailing ints of the kernels by rows: ``kh, kw, sh, sw, ph, pw``."""
        return (*self.pool_size, *self.stride, *self.pad)

    def _row(self, part: int) -> np.ndarray:
        """The kernels' padded row (by rows) for one part of a split batch."""
        return self.buffer(f"row{part}", (self._row_cells,))

    def _scratch(self, part: int) -> np.ndarray:
        """The kernels' scratch plane (see ``_Geometry``) for one part of a split batch."""
        return self.buffer(f"scratch{part}", (self._geometry.cells,))

    def _output(self, n: int) -> np.ndarray:
        """This layer's output buffer for a batch of ``n``."""
        return self.buffer("y", (n, *self.output_shape(self.input_shape)))

    def _input_grad(self, n: int) -> np.ndarray:
        """This layer's input-gradient buffer for a batch of ``n``."""
        return self.input_grad_buffer((n, *self.input_shape))


class MaxPooling2D(_Pooling2D):
    """Max pooling: each output is the largest input in its window (padding never wins).

    Args:
        pool_size: window size, an int or (h, w).
        stride: window step, an int or (h, w).
        pad: implicit padding on each side, an int or (h, w); smaller than ``pool_size``.
        ceil_mode: round the output size up (Caffe, the default) or down.
        name: the layer's name.

    Ties go to the first maximum in row-major window order; a NaN in a window propagates.
    Backward routes each output gradient to the input its maximum came from.
    """

    conf_field = "max_pooling"

    _argmax: np.ndarray | None = None  # each output's flat index h * W + w in its plane

    def _part_buffers(self, part: int) -> tuple[np.ndarray, ...]:
        """Scratch plane and one row of maxima and of their positions."""
        count = self._geometry.count
        return (self._scratch(part), self.buffer(f"best{part}", (count,)),
                self.buffer(f"where{part}", (count,), np.intc))

    _x: np.ndarray | None = None  # the last forward's input, if it recorded no positions

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Pools ``x`` (N, C, H, W) and, in training mode, remembers where each maximum came
        from. Evaluation mode records no positions and pools by rows (the kernel notes)."""
        y = self._output(x.shape[0])
        if self.training:
            self._x, self._argmax = None, self._pool(x, y)
            return y
        self._x, self._argmax = x, None
        xp, yp = self._planes(x), self._planes(y)

        def run(part: int, lo: int, hi: int) -> None:
            _kernels.max_values(xp[lo:hi], yp[lo:hi], self._row(part), *self._window_args)

        parallel.split(run, len(xp), self._plane_size)
        return y

    def _pool(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """y = the pooled x; returns the positions of the maxima."""
        g = self._geometry
        xp, yp = self._planes(x), self._planes(y)
        argmax = self.buffer("argmax", yp.shape, np.intc)

        def run(part: int, lo: int, hi: int) -> None:
            _kernels.max_forward(xp[lo:hi], yp[lo:hi], argmax[lo:hi], g.src, g.phases,
                                 g.border, *self._part_buffers(part), *g.args)

        parallel.split(run, len(xp), self._plane_size)
        return argmax

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Routes ``dy`` to the positions of the last forward's maxima (found again, if that
        forward ran in evaluation mode)."""
        if not need_input_grad:
            return None
        if self._argmax is None:
            if self._x is None:
                raise self.error("backward called before forward", RuntimeError)
            self._argmax = self._pool(self._x, self.buffer("y_again", dy.shape))
        dx = self._input_grad(dy.shape[0])
        dyp, argmax = self._planes(dy), self._argmax
        dxp = dx.reshape(len(argmax), -1)

        def run(part: int, lo: int, hi: int) -> None:
            _kernels.max_backward(dyp[lo:hi], argmax[lo:hi], dxp[lo:hi])

        parallel.split(run, len(argmax), self._plane_size)
        return dx


class AvgPooling2D(_Pooling2D):
    """Average pooling, dividing by the window's cells inside the padded image (Caffe).

    That is PyTorch's ``count_include_pad=True``; in ceil mode the cells of a window past
    the padding do not count.

    Args:
        pool_size: window size, an int or (h, w).
        stride: window step, an int or (h, w).
        pad: implicit zero padding on each side, an int or (h, w); smaller than ``pool_size``.
        ceil_mode: round the output size up (Caffe, the default) or down.
        name: the layer's name.
    """

    conf_field = "avg_pooling"

    _scale: np.ndarray  # 1 / window_cells, in the layer's dtype

    def build(self, input_shape: Sequence[int], dtype: Any = DEFAULT_DTYPE) -> None:
        """Also computes each window's 1 / cell count once for this input shape."""
        super().build(input_shape, dtype)
        self._scale = np.ascontiguousarray(1.0 / self._geometry.window_cells, dtype=self.dtype)

    def _part_buffers(self, part: int) -> tuple[np.ndarray, ...]:
        """Scratch plane and one row of window sums (backward)."""
        return self._scratch(part), self.buffer(f"acc{part}", (self._geometry.count,))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Averages ``x`` (N, C, H, W) over each window, by rows (the kernel notes)."""
        y = self._output(x.shape[0])
        xp, yp = self._planes(x), self._planes(y)

        def run(part: int, lo: int, hi: int) -> None:
            _kernels.avg_forward(xp[lo:hi], yp[lo:hi], self._scale, self._row(part),
                                 *self._window_args)

        parallel.split(run, len(xp), self._plane_size)
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Spreads each output gradient evenly over its window's counted cells."""
        if not need_input_grad:
            return None
        g = self._geometry
        dx = self._input_grad(dy.shape[0])
        dyp, dxp = self._planes(dy), self._planes(dx)

        def run(part: int, lo: int, hi: int) -> None:
            _kernels.avg_backward(dyp[lo:hi], dxp[lo:hi], g.dst, *self._part_buffers(part),
                                  self._scale, *g.args)

        parallel.split(run, len(dyp), self._plane_size)
        return dx
