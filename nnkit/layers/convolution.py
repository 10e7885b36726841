"""2-D convolution over NCHW images: im2col + GEMM on a few images at a time, or Winograd.

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
peak; a col of few rows takes more columns, up to CHUNK_VALUES values. A training batch
of a single chunk (batch 1 on CIFAR-10, and up to 3 images for its conv1) keeps its one
col (under 1 MB per layer for that net), and backward skips the im2col: the batch-1 step
takes 0.98 of the time it took recomputing col (median of 5 alternating pairs). The batch
is also cut into parts (``nnkit.parallel``), one per core, each running its own chunks
with its own buffers: the im2col and layout kernels of one part then run while another
part's GEMM does, instead of leaving cores idle.

Which way round: the products above write one row per filter, (F, G*OH*OW). OpenBLAS's
AVX-512 kernels run the same products 1.3-2x faster the other way round, one row per output
pixel: ``out (G*OH*OW, F) = col.T @ W.T``, ``dW.T = col @ dy_t`` with ``dy_t`` (G*OH*OW, F),
and the transposed input gradient likewise (measured one thread each on a Zen 5 VM, for
F = 32, C*kh*kw = 800, 1024 columns: forward 97 -> 132 GFLOP/s, weight gradient 85 -> 168;
the whole CIFAR-10 training step 67-72 -> 55-58 ms at batch 100). Its AVX2 kernels run both
alike, the per-filter rows slightly faster (the same step 80 against 85 ms). ``PIXEL_ROWS``
picks the layout from the kernels numpy's OpenBLAS loaded, once per process, so results do
not depend on timing; ``scatter_bias_rows`` and ``gather_rows_sum`` move between it and NCHW.

Winograd: a 5x5, stride-1 layer with at least WINOGRAD_MIN_PIXELS output pixels per image
and WINOGRAD_MIN_FORWARD_CHANNELS input channels, on more than one chunk of images, runs as
Winograd F(4x4, 5x5) instead
(``nnkit._kernels.winograd``): 64 GEMMs of (F, C) by (C, tiles), 6.25x fewer
multiplications than the im2col GEMM, between an input and an output transform. Backward
too, given WINOGRAD_MIN_CHANNELS input channels: the weight gradient is the forward pass's
adjoint (64 GEMMs of the transformed dy by the transformed input, then ``G^T dU G``), the
input gradient a Winograd convolution of dy (``_winograd_backward``). Times over the im2col
route's on the CIFAR-10 CNN (``benchmarks/winograd.py``, medians of the rounds' ratios;
batch 100, then 256), on a machine of the CI class with the transforms of then (``--rounds
7``) and on a Zen 5 one (``--rounds 5``, OpenBLAS's SkylakeX kernels) with the transforms
over the whole chunk (``nnkit._kernels.winograd``):

| layer | forward | forward + backward (the input gradient included) |
|---|---|---|
| conv2 (32 channels, 16x16 outputs) | 0.35, 0.40; Zen 5: 0.29, 0.31 | 0.36, 0.40; Zen 5: 0.34, 0.34 |
| conv3 (32 to 64 channels, 8x8 outputs) | 0.46, 0.66; Zen 5: 0.37, 0.38 | 0.51, 0.64; Zen 5: 0.46, 0.50 |
| conv1 (3 channels, 32x32 outputs) | 0.90, 0.91; Zen 5: 0.64, 0.82 | 1.17, 1.14; Zen 5: 0.79, 0.88 (backward on im2col in the layer) |

F(2x2, 5x5), which this route ran before (36 GEMMs, 2.8x fewer multiplications), measured
in the same session 0.58 (forward) and 0.59 (training) for conv2 at both batches, 0.81 and
0.80 for conv3 at batch 256, and 1.68 in forward for conv1. Layers of 4x4 outputs (one tile per image) gained at batch 100
and lost at 256, hence WINOGRAD_MIN_PIXELS. A padding past 4 (past the kernel's reach) keeps
backward on im2col. Float32 outputs and gradients differ from im2col's by up to about 1e-5
of the largest (the transforms scale by up to 21/4 and 1/90).

Output size: OH = floor((H + 2*ph - kh) / sh) + 1, likewise OW (convolution floors).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np

from .. import initializers
from .._kernels import im2col as _k
from .._kernels import winograd as _winograd
from .. import parallel
from .base import GemmProduct, Layer, Param, pair, param_specs, reject_unknown

IntPair = int | tuple[int, int]

#: Columns (output pixels) per chunk: wide enough for BLAS to run near its peak, small
#: enough for col (C*kh*kw rows) to stay in the cache between im2col and the GEMM. On the
#: CIFAR-10 CNN, 512 to 1536 measured alike and 4096 10-15% slower.
CHUNK_COLUMNS = 1024
#: A col of few rows (C*kh*kw: 75 for the CIFAR-10 conv1) takes more columns, up to this
#: many values (1 MB in float32): the BLAS runs its thin products as fast on wider chunks
#: (conv1's, 71-77 GFLOP/s from 1024 to 4096 columns on one thread), and fewer chunks cost
#: less Python per image. The CIFAR-10 CNN at batch 100, conv1 taking 3 images per chunk
#: instead of 1: inference 0.936 of the time at CHUNK_COLUMNS (medians of 7 alternating
#: rounds); 5 images gave 0.942 (training 0.930), 21 images (5 chunks for 2 cores) 1.016.
CHUNK_VALUES = 256 * 1024

#: OpenBLAS's kernel sets with AVX-512 (threadpoolctl's names, lower case).
AVX512_KERNELS = frozenset({"skylakex", "cooperlake", "sapphirerapids"})
#: Whether the products write one row per output pixel, (G*OH*OW, F), rather than one per
#: filter (module notes): where numpy's OpenBLAS runs AVX-512 kernels. Fixed per process.
PIXEL_ROWS = (parallel.blas_kernels() or "").lower() in AVX512_KERNELS


#: Tiles (4x4 output blocks) per chunk of the Winograd route: V and M (64 x C and 64 x F
#: rows, 1.6 MB each for 32 channels) stay near the cores. The CIFAR-10 conv2's forward
#: pass at batch 100 over im2col's: 0.42 at 128 tiles, 0.35 at 256, 0.32 at 384, 0.33 at
#: 512, 0.47 at 1024 (5 rounds each); 192 (0.39 against 256's 0.36 in one 7-round run, and
#: 0.40 against 0.44 at batch 256) keeps the CIFAR-10 step 2 MB smaller. A layer of more
#: than 32 channels in or out takes proportionally fewer, so that V and M stay at that
#: size: the CIFAR-10 conv3 (64 filters) takes 96.
WINOGRAD_TILES = 192
#: The fewest input channels for which a 5x5 convolution's backward pass takes the Winograd
#: route. With few channels its weight-gradient GEMMs are thin: with the first transforms
#: the CIFAR-10 conv1 (C = 3) lost (forward and backward 1.17 of im2col's time), and with
#: the transforms over the whole chunk its backward pass alone took 0.92-0.95 of im2col's
#: on a Zen 5 machine. With the transforms' copies vectorized (no test per cell, 4x4
#: transposes) it took 0.85 at batch 100 and at 256 on a Zen 4 machine
#: (``benchmarks/winograd.py --rounds 9 --layers conv1``, training minus forward), so 3
#: channels take the route. One or two do not: a GEMM with a dimension of 1 leaves BLAS
#: (``WINOGRAD_MIN_FORWARD_CHANNELS``).
WINOGRAD_MIN_CHANNELS = 3
#: The fewest input channels for which a 5x5 convolution's forward pass takes the Winograd
#: route. With one channel the 64 GEMMs have an inner dimension of 1, for which numpy's
#: matmul runs its own loop instead of BLAS: a grayscale 32x32 first layer of 32 filters
#: took 5.3x im2col's time at batch 100, 4.2x at 256 (``benchmarks/winograd.py --layers
#: gray --rounds 5``, Zen 4). Computing those products inside the output transform brought
#: it to 1.04 of im2col's (not kept: im2col does as well without another kernel); with 2-4
#: channels that kernel was even with numpy's GEMMs and the output transform.
WINOGRAD_MIN_FORWARD_CHANNELS = 2
#: G of Winograd F(4x4, 5x5), the weight transform U = G g G^T (``nnkit._kernels.winograd``):
#: row j is p^k / prod(p - q over the other points q) for p = 0, 1, -1, 2, -2, 1/2, -1/2
#: (row 0's sign flipped, as is B^T's row 0), then infinity.
WINOGRAD_G = np.array([[1, 0, 0, 0, 0],
                       [-2 / 9, -2 / 9, -2 / 9, -2 / 9, -2 / 9],
                       [-2 / 9, 2 / 9, -2 / 9, 2 / 9, -2 / 9],
                       [1 / 90, 2 / 90, 4 / 90, 8 / 90, 16 / 90],
                       [1 / 90, -2 / 90, 4 / 90, -8 / 90, 16 / 90],
                       [32 / 45, 16 / 45, 8 / 45, 4 / 45, 2 / 45],
                       [32 / 45, -16 / 45, 8 / 45, -4 / 45, 2 / 45],
                       [0, 0, 0, 0, 1]])
#: Cells of a transformed tile: the route's GEMMs per chunk.
WINOGRAD_CELLS = _winograd.CELLS
#: (64, 25): row xi*8 + nu holds G[xi, k] G[nu, l] at column k*5 + l, so that one GEMM with
#: the filters as rows of 25 taps gives every U[xi nu] = (G g G^T)[xi, nu] at once.
WINOGRAD_KRON = np.kron(WINOGRAD_G, WINOGRAD_G)
#: The fewest output pixels per image for which a 5x5 convolution takes the Winograd route:
#: each image plane's transforms have a fixed cost, which the one tile of a 4x4 output paid
#: back at batch 100 (forward 0.63 of im2col's time) but not at 256 (1.38; module notes).
WINOGRAD_MIN_PIXELS = 36
#: Whether 5x5 stride-1 convolutions may take the Winograd route (tests turn it off).
WINOGRAD = True


@functools.cache
def _winograd_kron(dtype: np.dtype) -> np.ndarray:
    """WINOGRAD_KRON in ``dtype``, made once (the Winograd route reads it every batch)."""
    return WINOGRAD_KRON.astype(dtype)


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

    def _winograd(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray, y: np.ndarray,
                  pad: tuple[int, int]) -> None:
        """y = conv(x, w) + bias by Winograd F(4x4, 5x5), for a 5x5 kernel w (F, C, 5, 5),
        stride 1, padding ``pad``; x (N, C, H, W) and y (N, F, OH, OW) contiguous.

        The 64 GEMMs of each chunk of tiles take 64 * F * C multiplications per 4x4 tile
        against the im2col GEMM's 400 * F * C (``nnkit._kernels.winograd``).
        """
        n, c = x.shape[:2]
        f, oh, ow = y.shape[1:]
        tiles = _winograd.plane_tiles(oh, ow)
        chunk = _winograd_chunk(n, tiles, max(c, f))
        kron = _winograd_kron(np.dtype(self.dtype))

        def run(part: int, first: int, last: int) -> None:
            # U[xi nu] (F, C), the transformed filters: one small GEMM (0.04 ms for conv2,
            # where an einsum took 0.87), done by each part under the split's one-thread
            # BLAS: outside a split, OpenBLAS's threads would spin against the parts.
            u = self._view(f"{part}wu", WINOGRAD_CELLS * f * c, (WINOGRAD_CELLS, f, c))
            np.matmul(kron, w.reshape(f * c, 25).T, out=u.reshape(WINOGRAD_CELLS, f * c))
            size = max(_winograd.input_scratch(chunk, *x.shape[2:], *pad),
                       _winograd.output_scratch(chunk, oh, ow))
            scratch = self._view(f"{part}wscratch", size, (size,))
            for start in range(first * chunk, min(n, last * chunk), chunk):
                stop = min(n, start + chunk)
                t = (stop - start) * tiles
                # The im2col route's col and output buffers: no more memory than it needs.
                v = self._view(f"{part}col", WINOGRAD_CELLS * c * chunk * tiles, (WINOGRAD_CELLS, c, t))
                m = self._view(f"fnp{part}", WINOGRAD_CELLS * f * chunk * tiles, (WINOGRAD_CELLS, f, t))
                _winograd.winograd_input(x[start:stop], v, *pad, scratch)
                np.matmul(u, v, out=m)
                _winograd.winograd_output(m, bias, y[start:stop], scratch)

        parallel.split(run, *_chunk_items(n, chunk, x[0].size), blas=True)

    def _winograd_backward(self, x: np.ndarray, dy: np.ndarray, dx: np.ndarray | None) -> None:
        """dW, db (into the grads) and dx (if not None) by Winograd F(4x4, 5x5) (module notes).

        For x (N, C, H, W) and dy (N, F, OH, OW) of a 5x5, stride-1 layer padded by at most
        4. Per chunk of tiles: the weight gradient is the adjoint of the forward pass,
        ``dU[xi nu] += dM[xi nu] @ V[xi nu].T`` with ``dM = A dY A^T`` and V the input
        transform, and ``dW = G^T dU G`` once per batch; the input gradient is the
        convolution of dy, padded by 4 - pad, with the filters transposed and flipped
        (``_transposed_pad``), itself by Winograd.
        """
        n, c, h, w = x.shape
        f, oh, ow = dy.shape[1:]
        ph, pw = self.pad
        tpad = (4 - ph, 4 - pw)
        tiles, dx_tiles = _winograd.plane_tiles(oh, ow), _winograd.plane_tiles(h, w)
        chunk = _winograd_chunk(n, tiles, max(c, f))
        kron = _winograd_kron(np.dtype(self.dtype))
        wp = self.params[0]
        flipped = None
        if dx is not None:
            flipped = self.buffer("w_t", (c, f, 5, 5))
            np.copyto(flipped, wp.data.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
        no_bias = self.buffer("no_bias", (0,))
        # The im2col route's col and output buffers hold the tiles of C and of F channels
        # (x's and the output's, then dx's and dy's): no more memory than forward needs.
        c_capacity, f_capacity = (WINOGRAD_CELLS * k * chunk * max(tiles, dx_tiles) for k in (c, f))
        scratch_size = max(_winograd.input_scratch(chunk, h, w, ph, pw),
                           _winograd.output_scratch(chunk, oh, ow),
                           _winograd.input_scratch(chunk, oh, ow, *tpad),
                           _winograd.output_scratch(chunk, h, w))

        def part_grads(part: int) -> tuple[np.ndarray, np.ndarray]:
            """(dW, db) summed by one part: part 0's dW goes straight into the grad."""
            dw = wp.grad if part == 0 else self.buffer(f"dw{part}", wp.grad.shape)
            return dw, self.buffer(f"db{part}", (f if self.bias else 0,), np.float64)

        def run(part: int, first: int, last: int) -> None:
            dw, db = part_grads(part)
            db[...] = 0  # the adjoint transform accumulates over the chunks, in double
            # Scratch within this call, in the workspace (as forward's U): the model's
            # Winograd layers share it.
            du = self._view(f"{part}wdu", WINOGRAD_CELLS * f * c, (WINOGRAD_CELLS, f, c))
            du_chunk = self._view(f"{part}wdu2", WINOGRAD_CELLS * f * c, (WINOGRAD_CELLS, f, c))
            if flipped is not None:
                ut = self._view(f"{part}wu", WINOGRAD_CELLS * c * f, (WINOGRAD_CELLS, c, f))
                np.matmul(kron, flipped.reshape(c * f, 25).T, out=ut.reshape(WINOGRAD_CELLS, c * f))
            scratch = self._view(f"{part}wscratch", scratch_size, (scratch_size,))
            lo = first * chunk
            for start in range(lo, min(n, last * chunk), chunk):
                stop = min(n, start + chunk)
                t = (stop - start) * tiles
                v = self._view(f"{part}col", c_capacity, (WINOGRAD_CELLS, c, t))
                dm = self._view(f"fnp{part}", f_capacity, (WINOGRAD_CELLS, f, t))
                _winograd.winograd_input(x[start:stop], v, ph, pw, scratch)
                _winograd.winograd_grad_output(dy[start:stop], dm, db, scratch)
                # V transposed is a view BLAS takes as it is.
                np.matmul(dm, v.transpose(0, 2, 1), out=du if start == lo else du_chunk)
                if start != lo:
                    du += du_chunk
                if flipped is not None:  # V and dM are used up: dy's and dx's tiles
                    t = (stop - start) * dx_tiles
                    vt = self._view(f"fnp{part}", f_capacity, (WINOGRAD_CELLS, f, t))
                    mt = self._view(f"{part}col", c_capacity, (WINOGRAD_CELLS, c, t))
                    _winograd.winograd_input(dy[start:stop], vt, *tpad, scratch)
                    np.matmul(ut, vt, out=mt)
                    _winograd.winograd_output(mt, no_bias, dx[start:stop], scratch)
            # dW = G^T dU G, per part under the split's one-thread BLAS (as the weight
            # transform: outside a split, OpenBLAS's threads would spin against the next
            # split's parts, which slowed this layer's backward pass twofold).
            np.matmul(du.reshape(WINOGRAD_CELLS, f * c).T, kron, out=dw.reshape(f * c, 25))

        ranges = parallel.split(run, *_chunk_items(n, chunk, x[0].size), blas=True)
        dw, db = _sum_parts(part_grads, len(ranges))
        if self.bias:
            self.params[1].grad[...] = db

    def _takes_winograd(self, channels: int, pixels: int, backward: bool = False) -> bool:
        """Whether a forward (or ``backward``) pass of ``channels`` input channels and
        ``pixels`` output pixels per image runs by Winograd (module notes)."""
        return (WINOGRAD and self.kernel == (5, 5) and self.stride == (1, 1)
                and pixels >= WINOGRAD_MIN_PIXELS
                and channels >= (WINOGRAD_MIN_CHANNELS if backward else WINOGRAD_MIN_FORWARD_CHANNELS))

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
        chunk = _chunk_size(n, oh * ow, x.shape[1] * math.prod(self.kernel))
        weight = self.params[0].data.reshape(f, -1)
        bias = self._bias_array()
        y = self.buffer("y", (n, f, oh, ow))
        y3 = y.reshape(n, f, oh * ow)
        # A batch of one chunk (small batches: one image at a time in training) keeps its
        # col for backward, which then skips recomputing it: that col is at most
        # CHUNK_COLUMNS columns (module notes).
        keep = self.training and n <= chunk
        self._kept_col = None
        if n > chunk and self._takes_winograd(x.shape[1], oh * ow):
            self._winograd(x, self.params[0].data, bias, y, self.pad)
            self._x = x
            return y

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
        chunk = _chunk_size(n, oh * ow, x.shape[1] * math.prod(self.kernel))
        wp = self.params[0]
        weight = wp.data.reshape(f, -1)
        dy3 = dy.reshape(n, f, oh * ow)
        dx = self.input_grad_buffer(x.shape) if need_input_grad else None
        if n > chunk and self._takes_winograd(c, oh * ow, backward=True) and max(self.pad) <= 4:
            self._winograd_backward(x, dy, dx)
            return dx
        transposed = tpad = None
        if need_input_grad:
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
        dw, db = _sum_parts(part_grads, len(ranges))
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


def _sum_parts(part_grads: Callable[[int], tuple[np.ndarray, np.ndarray]],
               parts: int) -> tuple[np.ndarray, np.ndarray]:
    """Part 0's (dW, db) of a split backward pass, every other part's added in."""
    dw, db = part_grads(0)
    for part in range(1, parts):
        dw_part, db_part = part_grads(part)
        dw += dw_part
        db += db_part
    return dw, db


def _winograd_chunk(n: int, tiles: int, channels: int) -> int:
    """Images per chunk of the Winograd route, for ``tiles`` tiles per image and at most
    ``channels`` channels in or out.

    About WINOGRAD_TILES tiles, fewer for more than 32 channels (V and M then hold no more
    than at 32), in as many chunks as a multiple of the threads, so that the parts get
    equal work (the CIFAR-10 conv3 at batch 100: 7 chunks of 16 images would split 4 / 3).
    """
    budget = WINOGRAD_TILES * 32 // max(32, channels)
    chunk = max(1, min(n, budget // tiles))
    chunks = -(-n // chunk)
    chunks = -(-chunks // parallel.thread_count()) * parallel.thread_count()
    return max(1, -(-n // chunks))


def _chunk_size(n: int, pixels: int, rows: int) -> int:
    """Images per chunk, for ``pixels`` output pixels per image and col ``rows`` (C*kh*kw):
    at most CHUNK_COLUMNS columns, or CHUNK_VALUES values of col if that is more; at least
    one image."""
    columns = max(CHUNK_COLUMNS, CHUNK_VALUES // rows)
    return max(1, min(n, columns // pixels))
