"""2-D convolution over NCHW images, as im2col + GEMM on a few images at a time.

Forward, for a batch x (N, C, H, W), weight W (F, C, kh, kw) and bias b (F,), one chunk
of G images after the other:

    col = im2col(x[chunk])               (C*kh*kw, G*OH*OW)
    out = W.reshape(F, -1) @ col         (F, G*OH*OW)         one BLAS call
    y[chunk] = scatter_bias(out, b)      (G, F, OH, OW)

Backward, for dy (N, F, OH, OW), chunk by chunk:

    dy_t, db += gather_sum(dy[chunk])    (F, G*OH*OW), (F,)
    col = im2col(x[chunk])               recomputed: cheaper than keeping it (see below),
                                         except for a batch of one chunk, which keeps it
    dW += dy_t @ col.T
    dx[chunk] = col2im(W_flat.T @ dy_t)  or, with stride 1, a convolution of dy (see
                                         ``_transposed_pad``); skipped when the source
                                         takes no gradient

Why chunks: a whole batch's col is large (82 MB for the CIFAR-10 conv2 at batch 100), so
writing it and reading it back in the GEMM runs at memory speed, and keeping it for
backward would double the layer's memory. A chunk of about a thousand columns stays in
the cache between im2col and the GEMM, and is still wide enough for BLAS to run near its
peak. A training batch of a single chunk (at most CHUNK_COLUMNS output pixels: batch 1 on
CIFAR-10) keeps its one col (under 1 MB per layer for that net), and backward skips the
im2col: the batch-1 step takes 0.98 of the time it took recomputing col (median of 5
alternating pairs).
The batch is also cut into parts (``nnkit.parallel``), one per core, each running its own
chunks with its own buffers: the im2col and layout kernels of one part then run while
another part's GEMM does, instead of leaving cores idle.

Which way round: the products above write one row per filter, (F, G*OH*OW). OpenBLAS's
AVX-512 kernels run the same products 1.3-2x faster the other way round, one row per output
pixel: ``out (G*OH*OW, F) = col.T @ W.T``, ``dW.T = col @ dy_t`` with ``dy_t`` (G*OH*OW, F),
and the transposed input gradient likewise (measured one thread each on a Zen 5 VM, for
F = 32, C*kh*kw = 800, 1024 columns: forward 97 -> 132 GFLOP/s, weight gradient 85 -> 168;
the whole CIFAR-10 training step 67-72 -> 55-58 ms at batch 100). Its AVX2 kernels run both
alike, the per-filter rows slightly faster (the same step 80 against 85 ms). ``PIXEL_ROWS``
picks the layout from the kernels numpy's OpenBLAS loaded, once per process, so results do
not depend on timing; ``scatter_bias_rows`` and ``gather_rows_sum`` move between it and NCHW.

Output size: OH = floor((H + 2*ph - kh) / sh) + 1, likewise OW (convolution floors).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import initializers
from .._kernels import im2col as _k
from .. import parallel
from .base import GemmProduct, Layer, Param, pair, param_specs, reject_unknown

IntPair = int | tuple[int, int]

#: Columns (output pixels) per chunk: wide enough for BLAS to run near its peak, small
#: enough for col (C*kh*kw rows) to stay in the cache between im2col and the GEMM. On the
#: CIFAR-10 CNN, 512 to 1536 measured alike and 4096 10-15% slower.
CHUNK_COLUMNS = 1024

#: OpenBLAS's kernel sets with AVX-512 (threadpoolctl's names, lower case).
AVX512_KERNELS = frozenset({"skylakex", "cooperlake", "sapphirerapids"})
#: Whether the products write one row per output pixel, (G*OH*OW, F), rather than one per
#: filter (module notes): where numpy's OpenBLAS runs AVX-512 kernels. Fixed per process.
PIXEL_ROWS = (parallel.blas_kernels() or "").lower() in AVX512_KERNELS


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

    conf_field = "convolution"

    def __init__(self, nb_filter: int, kernel: IntPair, stride: IntPair = 1, pad: IntPair = 0,
                 init: str | None = None, bias: bool = True, name: str | None = None,
                 **param_kwargs: Any) -> None:
        super().__init__(name)
        owner = self.describe()
        if isinstance(nb_filter, bool) or not isinstance(nb_filter, (int, np.integer)) \
                or nb_filter < 1:
            raise self.error(f"nb_filter must be a positive int, got {nb_filter!r}")
        self.nb_filter = int(nb_filter)
        self.kernel = pair(kernel, "kernel", 1, owner)
        self.stride = pair(stride, "stride", 1, owner)
        self.pad = pair(pad, "pad", 0, owner)
        self.init = init
        self.bias = bool(bias)
        self._param_kwargs = dict(param_kwargs)  # kept verbatim for get_config
        self._x: np.ndarray | None = None  # the last forward's input, for backward
        self._kept_col: np.ndarray | None = None  # its col, when backward may reuse it
        kwargs = dict(param_kwargs)
        self._w_spec = param_specs("w", init, kwargs, initializers.UNIFORM, owner)
        self._b_spec = param_specs("b", None, kwargs, initializers.ZERO, owner)
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

    def param_shapes(self, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Weight (F, C, kh, kw), bias (F,) for an input (C, H, W)."""
        shapes = {"weight": (self.nb_filter, input_shape[0], *self.kernel)}
        if self.bias:
            shapes["bias"] = (self.nb_filter,)
        return shapes

    def create_params(self, input_shape: tuple[int, ...], dtype: np.dtype,
                      rng: np.random.Generator) -> None:
        """Weight (F, C, kh, kw) with fan_in C*kh*kw and fan_out F*kh*kw; bias (F,)."""
        c = input_shape[0]
        kh, kw = self.kernel
        fan_in, fan_out = c * kh * kw, self.nb_filter * kh * kw
        specs = {"weight": self._w_spec, "bias": self._b_spec}
        self.params = []
        for pname, shape in self.param_shapes(input_shape).items():
            spec, lr_mult, wd_mult = specs[pname]
            p = Param(self, pname, spec, lr_mult, wd_mult)
            p.allocate(shape, dtype, fan_in, fan_out, rng)
            self.params.append(p)

    # ----------------------------------------------------------------- compute
    def _geometry(self) -> tuple[int, int, int, int, int, int]:
        """(kh, kw, sh, sw, ph, pw), the argument tail of every im2col kernel call."""
        return (*self.kernel, *self.stride, *self.pad)

    def _bias_array(self) -> np.ndarray:
        """The bias, or an empty array: "no bias" to the kernels."""
        return self.params[1].data if self.bias else self.buffer("no_bias", (0,))

    def _view(self, key: str, capacity: int, shape: tuple[int, ...]) -> np.ndarray:
        """A contiguous ``shape`` view of the scratch buffer ``key`` of ``capacity`` values.

        Buffers are sized for a full chunk; the last chunk of a batch may be smaller and
        takes a view of the same buffer. They live in the model's workspace: every buffer
        here is scratch within one call (one part's, by its key), so a model's convolutions
        share them (``Workspace``).
        """
        return self.workspace.view(key, capacity, shape, self.dtype)

    def _im2col_buffers(self, x: np.ndarray, chunk: int, key: str,
                        pad: tuple[int, int] | None = None,
                        own: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(col, padded scratch) for im2col of the images ``x`` (at most ``chunk``), unfilled.

        They are the workspace buffers ``key``, except a col that must outlive the call
        (``own``: the layer's own buffer). ``pad`` defaults to the layer's; the stride is
        the layer's.
        """
        m, c, h, w = x.shape
        (kh, kw), (sh, sw) = self.kernel, self.stride
        ph, pw = pad or self.pad
        pixels = conv_output_size(h, kh, sh, ph) * conv_output_size(w, kw, sw, pw)
        rows, padded_shape = c * kh * kw, (c, h + 2 * ph, w + 2 * pw)
        if own:
            col = self.buffer("kept_col", (rows, m * pixels))
        else:
            col = self._view(key + "col", rows * chunk * pixels, (rows, m * pixels))
        padded = self._view(key + "padded", chunk * math.prod(padded_shape), (m, *padded_shape))
        return col, padded

    def _im2col(self, x: np.ndarray, chunk: int, key: str,
                pad: tuple[int, int] | None = None,
                own: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """im2col of the images ``x`` (at most ``chunk`` of them): ``_im2col_buffers`` filled.

        Returns (col, the padded scratch).
        """
        col, padded = self._im2col_buffers(x, chunk, key, pad, own)
        ph, pw = pad or self.pad
        _k.im2col(x, col, padded, *self.kernel, *self.stride, ph, pw)
        return col, padded

    def _transposed_pad(self) -> tuple[int, int] | None:
        """The padding that turns the input gradient into a plain convolution, if any.

        With stride 1, dx is the convolution of dy, padded by k - 1 - pad, with the weights
        flipped in space and transposed to (C, F, kh, kw). That runs as im2col + GEMM with
        F*kh*kw terms per sum, instead of a GEMM with only F terms followed by col2im,
        whose overlapping read-modify-writes are several times slower than im2col's copies.
        But im2col then unfolds F channels where col2im folds C: with more filters than
        input channels col2im is faster (CIFAR-10 conv3, F = 2C: by 15% of the backward
        pass; conv2, F = C: the transposed route by 15%). Strided convolutions (and
        pad >= kernel) take the col2im route.
        """
        if (self.stride != (1, 1) or any(p >= k for p, k in zip(self.pad, self.kernel))
                or self.nb_filter > self.input_shape[0]):
            return None
        return self.kernel[0] - 1 - self.pad[0], self.kernel[1] - 1 - self.pad[1]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """y = conv(x, W) + b for a batch x (N, C, H, W); keeps x for backward."""
        x = np.ascontiguousarray(x)
        n = x.shape[0]
        f, oh, ow = self.output_shape(x.shape[1:])
        chunk = _chunk_size(n, oh * ow)
        weight = self.params[0].data.reshape(f, -1)
        bias = self._bias_array()
        y = self.buffer("y", (n, f, oh, ow))
        y3 = y.reshape(n, f, oh * ow)
        # A batch of one chunk (small batches: one image at a time in training) keeps its
        # col for backward, which then skips recomputing it: that col is at most
        # CHUNK_COLUMNS columns, and at batch 1 im2col is a tenth of each layer's step.
        keep = self.training and n <= chunk
        self._kept_col = None

        def run(part: int, first: int, last: int) -> None:
            for start in range(first * chunk, min(n, last * chunk), chunk):
                stop = min(n, start + chunk)
                col, _ = self._im2col(x[start:stop], chunk, f"{part}", own=keep)
                if keep:
                    self._kept_col = col
                if PIXEL_ROWS:
                    # (G*OH*OW, F): one row per output pixel (module notes). The buffer is
                    # shared with backward's gathered dy.
                    out = self._view(f"fnp{part}", f * chunk * oh * ow, (col.shape[1], f))
                    np.matmul(col.T, weight.T, out=out)
                    _k.scatter_bias_rows(out, bias, y3[start:stop])
                    continue
                if chunk == 1:
                    # One image: (F, OH*OW) is already its layout in y, so the GEMM writes
                    # there and the bias is added in place (each entry reads only itself).
                    out = y3[start]
                else:
                    # The (F, G*OH*OW) buffer is shared with backward's gathered dy.
                    out = self._view(f"fnp{part}", f * chunk * oh * ow, (f, col.shape[1]))
                np.matmul(weight, col, out=out)
                _k.scatter_bias(out, bias, y3[start:stop])

        parallel.split(run, *_chunk_items(n, chunk, x[0].size), blas=True)
        self._x = x
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Fills dW (and db) from dy (N, F, OH, OW); returns dx, or None if not needed."""
        x = self._x
        if x is None:
            raise self.error("backward called before forward", RuntimeError)
        expected = (x.shape[0], *self.output_shape(x.shape[1:]))
        if dy.shape != expected:
            raise self.error(f"backward got dy of shape {dy.shape}, expected {expected} for the "
                             f"input {x.shape} of the last forward")
        dy = np.ascontiguousarray(dy, dtype=self.dtype)
        n, f, oh, ow = dy.shape
        c = x.shape[1]
        chunk = _chunk_size(n, oh * ow)
        wp = self.params[0]
        weight = wp.data.reshape(f, -1)
        dy3 = dy.reshape(n, f, oh * ow)
        dx = transposed = tpad = None
        if need_input_grad:
            dx = self.input_grad_buffer(x.shape)
            tpad = self._transposed_pad()
            if tpad is not None:
                # (C, F*kh*kw): the weights transposed and flipped in space, once per batch.
                transposed = self.buffer("w_t", (c, f, *self.kernel))
                np.copyto(transposed, wp.data.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
                transposed = transposed.reshape(c, -1)
        # Forward's col, if it kept it; used up below (col2im's dcol may take its buffer).
        kept, self._kept_col = self._kept_col, None

        def part_grads(part: int) -> tuple[np.ndarray, np.ndarray]:
            """(dW, db) summed by one part: part 0's dW goes straight into the grad.

            With PIXEL_ROWS each part sums dW transposed, (C*kh*kw, F), and the parts' sums
            are transposed into the grad at the end.
            """
            if PIXEL_ROWS:
                dw = self.buffer(f"dw{part}", weight.shape[::-1])
            else:
                dw = wp.grad.reshape(f, -1) if part == 0 else self.buffer(f"dw{part}", weight.shape)
            return dw, self.buffer(f"db{part}", (f if self.bias else 0,), np.float64)

        def run(part: int, first: int, last: int) -> None:
            dw, db = part_grads(part)
            db[...] = 0  # gather_sum accumulates over the chunks, in double
            lo = first * chunk
            for start in range(lo, min(n, last * chunk), chunk):
                stop = min(n, start + chunk)
                pixels = (stop - start) * oh * ow
                if PIXEL_ROWS:
                    dy_t = self._view(f"fnp{part}", f * chunk * oh * ow, (pixels, f))
                    _k.gather_rows_sum(dy3[start:stop], dy_t, db)
                else:
                    dy_t = self._view(f"fnp{part}", f * chunk * oh * ow, (f, pixels))
                    _k.gather_sum(dy3[start:stop], dy_t, db)
                if kept is not None:  # the batch is this one chunk (forward)
                    col, padded = kept, self._im2col_buffers(x, chunk, f"{part}")[1]
                else:
                    col, padded = self._im2col(x[start:stop], chunk, f"{part}")
                # dW = dy_t @ col.T (or its transpose col @ dy_t with PIXEL_ROWS): col.T is
                # a transposed view, which BLAS takes as it is.
                target = dw if start == lo else self.buffer(f"dw_chunk{part}", dw.shape)
                if PIXEL_ROWS:
                    np.matmul(col, dy_t, out=target)
                else:
                    np.matmul(dy_t, col.T, out=target)
                if target is not dw:
                    dw += target
                if transposed is not None:
                    # col is used up: dcol takes its buffer.
                    dcol, _ = self._im2col(dy[start:stop], chunk, f"{part}", tpad)
                    in_pixels = dcol.shape[1]
                    capacity = c * in_pixels // (stop - start) * chunk
                    dx3 = dx[start:stop].reshape(stop - start, c, -1)
                    if PIXEL_ROWS:
                        dx_t = self._view(f"cnp{part}", capacity, (in_pixels, c))
                        np.matmul(dcol.T, transposed.T, out=dx_t)
                        _k.scatter_bias_rows(dx_t, self.buffer("no_bias", (0,)), dx3)
                    else:
                        dx_t = self._view(f"cnp{part}", capacity, (c, in_pixels))
                        np.matmul(transposed, dcol, out=dx_t)
                        _k.scatter_bias(dx_t, self.buffer("no_bias", (0,)), dx3)
                elif dx is not None:
                    # col is used up: it takes dcol.
                    np.matmul(weight.T, dy_t.T if PIXEL_ROWS else dy_t, out=col)
                    _k.col2im(col, dx[start:stop], padded, *self._geometry())

        ranges = parallel.split(run, *_chunk_items(n, chunk, x[0].size), blas=True)
        dw, db = part_grads(0)
        for part in range(1, len(ranges)):
            dw_part, db_part = part_grads(part)
            dw += dw_part
            db += db_part
        if PIXEL_ROWS:
            np.copyto(wp.grad.reshape(f, -1), dw.T)
        if self.bias:
            self.params[1].grad[...] = db
        return dx

    def gemm_products(self) -> list[GemmProduct]:
        """im2col over the whole batch: ``W @ col``; backward ``dy @ col.T`` and ``W.T @ dy``.

        W is (F, C*kh*kw), col (C*kh*kw, N*OH*OW), dy (F, N*OH*OW): the textbook shapes,
        one product each over the batch, not the chunks the layer runs (module docstring).
        """
        if self.data is None:
            return []
        n, f, oh, ow = self.data.shape
        k, cols = self.params[0].data.size // f, n * oh * ow
        products = [GemmProduct("forward", "output", (f, k), (k, cols)),
                    GemmProduct("backward", "weight gradient", (f, cols), (k, cols),
                                transpose_b=True)]
        if self.srcs and self.srcs[0].accepts_grad:
            products.append(GemmProduct("backward", "input gradient", (f, k), (f, cols),
                                        transpose_a=True))
        return products


def _chunk_items(n: int, chunk: int, image_values: int) -> tuple[int, int]:
    """(chunks, values per chunk): a batch of ``n`` images splits in whole chunks.

    The parallel parts are ranges of chunk indices: ``parallel.split(run, *_chunk_items(...))``
    calls ``run(part, first, last)`` for chunks first .. last - 1.
    """
    return -(-n // chunk), chunk * image_values


def _chunk_size(n: int, pixels: int) -> int:
    """Images per chunk: at most CHUNK_COLUMNS output pixels, at least one image."""
    return max(1, min(n, CHUNK_COLUMNS // pixels))
