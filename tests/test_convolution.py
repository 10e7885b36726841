"""Convolution2D and its im2col kernels: gradients, parity with torch, shapes and errors."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from gradcheck import Source, check_layer
from nnkit import initializers
from nnkit._kernels import im2col as kernels
from nnkit.layers import convolution
from nnkit.layers.convolution import Convolution2D, conv_output_size


class NoGradSource(Source):
    """A source that, like an input layer, takes no gradient."""

    accepts_grad = False


@pytest.fixture(autouse=True, params=[False, True], ids=["filter-rows", "pixel-rows"])
def product_layout(request, monkeypatch):
    """Every test of the layer runs with both layouts of its products (``PIXEL_ROWS``).

    A process uses one of them, chosen by the kernels numpy's OpenBLAS loaded; the tests
    check both, whatever this machine's BLAS is.
    """
    monkeypatch.setattr(convolution, "PIXEL_ROWS", request.param)
    return request.param


def reference_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                   stride: tuple[int, int], pad: tuple[int, int]) -> np.ndarray:
    """A direct NCHW cross-correlation in numpy: one einsum per kernel tap."""
    (sh, sw), (ph, pw) = stride, pad
    f, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (xp.shape[2] - kh) // sh + 1
    ow = (xp.shape[3] - kw) // sw + 1
    y = np.zeros((x.shape[0], f, oh, ow), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
            y += np.einsum("nchw,fc->nfhw", patch, w[:, :, i, j])
    if b is not None:
        y += b[None, :, None, None]
    return y


def make_layer(x: np.ndarray, *args, seed: int = 0, **kwargs) -> tuple[Convolution2D, Source]:
    """A built layer with random weights and bias (the bias defaults to zero otherwise)."""
    layer = Convolution2D(*args, **kwargs)
    src = Source(x)
    layer.ComputeFeature(src)
    rng = np.random.default_rng(seed)
    layer.SetParams(*(rng.standard_normal(p.data.shape) for p in layer.params))
    return layer, src


# (C, H, W, F, kernel, stride, pad)
GRAD_CONFIGS = [
    (2, 5, 6, 3, 3, 1, 0),
    (2, 5, 6, 3, 3, 1, 1),
    (2, 5, 6, 2, (3, 2), 2, 2),
    (3, 5, 6, 2, (2, 3), (2, 1), (1, 0)),
    (1, 6, 5, 2, 2, 2, 1),
]


@pytest.mark.parametrize("c,h,w,f,kernel,stride,pad", GRAD_CONFIGS)
@pytest.mark.parametrize("bias", [True, False])
def test_gradient_check(c, h, w, f, kernel, stride, pad, bias):
    x = np.random.default_rng(1).standard_normal((2, c, h, w))
    layer, _ = make_layer(x, f, kernel, stride, pad, bias=bias)
    assert len(layer.params) == (2 if bias else 1)
    check_layer(layer, x)


def test_float64_matches_reference():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 7, 6))
    layer, src = make_layer(x, 4, (3, 2), (2, 1), (1, 2))
    y = layer.ComputeFeature(src)
    assert y.dtype == np.float64 and layer.params[0].data.dtype == np.float64
    w, b = layer.GetParams()
    np.testing.assert_allclose(y, reference_conv(x, w, b, (2, 1), (1, 2)), rtol=1e-12, atol=1e-12)


def test_default_dtype_is_float32():
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 6)).astype(np.float32)
    layer = Convolution2D(4, 3)
    y = layer.ComputeFeature(Source(x))
    assert y.dtype == np.float32
    assert all(p.data.dtype == np.float32 and p.grad.dtype == np.float32 for p in layer.params)


@pytest.mark.parametrize("h,w,kernel,stride,pad,expected", [
    (32, 32, 5, 1, 2, (32, 32)),
    (7, 7, 3, 2, 0, (3, 3)),      # (7 - 3) / 2 + 1 = 3
    (8, 8, 3, 2, 0, (3, 3)),      # (8 - 3) / 2 + 1 = 3.5, floored
    (8, 9, (3, 2), (2, 3), (1, 0), (4, 3)),  # (8+2-3)//2+1 = 4, (9-2)//3+1 = 3
    (4, 4, 6, 1, 1, (1, 1)),      # the kernel exactly covers the padded input
])
def test_output_size_formula(h, w, kernel, stride, pad, expected):
    layer = Convolution2D(5, kernel, stride, pad)
    assert layer.output_shape((2, h, w)) == (5, *expected)
    x = np.zeros((1, 2, h, w), np.float32)
    assert layer.ComputeFeature(Source(x)).shape == (1, 5, *expected)
    assert conv_output_size(h, layer.kernel[0], layer.stride[0], layer.pad[0]) == expected[0]


def test_batch_size_change():
    rng = np.random.default_rng(4)
    layer = Convolution2D(3, 3, 2, 1, name="c1")
    for n in (4, 2, 5, 4):
        x = rng.standard_normal((n, 2, 7, 5))
        y = layer.ComputeFeature(Source(x))
        w, b = layer.GetParams()
        np.testing.assert_allclose(y, reference_conv(x, w, b, (2, 2), (1, 1)), rtol=1e-10,
                                   atol=1e-12)
        # db is the sum of dy over batch and positions: it must follow the current batch.
        layer.grad = rng.standard_normal(y.shape)
        layer.ComputeGradient()
        np.testing.assert_allclose(layer.params[1].grad, layer.grad.sum(axis=(0, 2, 3)))
        assert layer.srcs[0].grad.shape == x.shape


def test_need_input_grad_false_leaves_source_alone():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 5, 5))
    src = NoGradSource(x)
    layer = Convolution2D(3, 3, 1, 1)  # F <= C, stride 1: dx would take the transposed route
    layer.ComputeFeature(src)
    sentinel = np.full_like(x, 7.0)
    src.grad = sentinel
    layer.grad = rng.standard_normal(layer.data.shape)
    layer.ComputeGradient()
    assert src.grad is sentinel and np.all(sentinel == 7.0)
    # The work was skipped: no input gradient, no flipped weights, no padded or unfolded dy
    # (part 0's buffers; the route that does compute dx allocates every one of these).
    assert not {"dx", "w_t", "d0padded", "d0col"} & set(layer._buffers)
    # The param grads are still those of a layer whose source does take gradients.
    twin = Convolution2D(3, 3, 1, 1)
    twin.ComputeFeature(Source(x))
    twin.SetParams(*layer.GetParams())
    twin.grad = layer.grad
    twin.ComputeGradient()
    for p, q in zip(layer.params, twin.params):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12)
    assert layer.backward(layer.grad, need_input_grad=False) is None


def test_errors_name_the_layer():
    layer = Convolution2D(4, 3, name="conv_a")
    with pytest.raises(ValueError, match=r"Convolution2D 'conv_a'.*4-D.*\(batch, 5, 6\)"):
        layer.ComputeFeature(Source(np.zeros((2, 5, 6), np.float32)))

    big = Convolution2D(4, (7, 3), pad=1, name="conv_b")
    with pytest.raises(ValueError, match=r"Convolution2D 'conv_b'.*\(7, 3\).*padded input \(6, 6\)"):
        big.ComputeFeature(Source(np.zeros((1, 2, 4, 4), np.float32)))

    # A fresh layer: base.build records the input shape before validating it, so a layer
    # whose first input was rejected stays built for that bad shape.
    layer = Convolution2D(4, 3, name="conv_a")
    layer.ComputeFeature(Source(np.zeros((1, 2, 5, 6), np.float32)))
    with pytest.raises(ValueError, match=r"Convolution2D 'conv_a'.*weight has shape \(4, 2, 3, 3\)"):
        layer.SetParams(np.zeros((4, 3, 3, 3)), np.zeros(4))
    with pytest.raises(ValueError, match=r"Convolution2D 'conv_a'.*bias has shape \(4,\)"):
        layer.SetParams(np.zeros((4, 2, 3, 3)), np.zeros(5))
    with pytest.raises(ValueError, match=r"conv_a.*does not match"):
        layer.ComputeFeature(Source(np.zeros((1, 3, 5, 6), np.float32)))
    with pytest.raises(ValueError, match=r"Convolution2D 'conv_a'.*dy of shape \(1, 4, 3, 3\), "
                                         r"expected \(1, 4, 3, 4\)"):
        layer.backward(np.zeros((1, 4, 3, 3), np.float32))
    with pytest.raises(RuntimeError, match=r"conv_c.*before forward"):
        Convolution2D(2, 3, name="conv_c").backward(np.zeros((1, 2, 3, 3), np.float32))


@pytest.mark.parametrize("args,kwargs,kind,pattern", [
    ((0, 3), {}, ValueError, "nb_filter"),
    ((4, 0), {}, ValueError, "kernel"),
    ((4, 3, (1, 0)), {}, ValueError, "stride"),
    ((4, 3, 1, -1), {}, ValueError, "pad"),
    ((4, (3, 3, 3)), {}, TypeError, "kernel"),
    ((4, 3), {"w_sdt": 0.1}, TypeError, "w_sdt"),
])
def test_bad_arguments(args, kwargs, kind, pattern):
    with pytest.raises(kind, match=pattern):
        Convolution2D(*args, name="bad", **kwargs)


def test_param_options_and_config():
    layer = Convolution2D(32, 5, 1, 2, w_std=0.0001, b_lr=2, name="conv1")
    layer.rng = np.random.default_rng(0)
    layer.build((3, 32, 32))
    w, b = layer.params
    assert (w.name, w.data.shape, b.name, b.data.shape) == ("weight", (32, 3, 5, 5), "bias", (32,))
    assert w.spec == initializers.InitSpec("gaussian", {"std": 0.0001})
    assert 0.5e-4 < w.data.std() < 1.5e-4 and np.all(b.data == 0)
    assert (w.lr_mult, b.lr_mult, b.wd_mult) == (1.0, 2.0, 1.0)
    config = layer.get_config()
    assert config == {"nb_filter": 32, "kernel": (5, 5), "stride": (1, 1), "pad": (2, 2),
                      "init": None, "bias": True, "name": "conv1", "w_std": 0.0001, "b_lr": 2}
    clone = Convolution2D(**config)
    assert clone.get_config() == config


def test_glorot_fans():
    # glorot_uniform draws from U(-a, a), a = sqrt(6 / (C*kh*kw + F*kh*kw)).
    layer = Convolution2D(8, (3, 2), init="glorot_uniform")
    layer.rng = np.random.default_rng(0)
    layer.build((4, 6, 6))
    limit = np.sqrt(6.0 / (4 * 6 + 8 * 6))
    w = layer.params[0].data
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.9 * limit


# (N, C, H, W, kh, kw, sh, sw, ph, pw): a strided, asymmetric case and stride-1 cases
# whose output widths (8, 16, 32) take the kernels' unrolled copies.
KERNEL_CONFIGS = [
    (2, 3, 5, 7, 3, 2, 2, 3, 1, 2),
    (2, 2, 8, 8, 5, 5, 1, 1, 2, 2),
    (1, 2, 6, 16, 3, 1, 1, 1, 0, 0),
    (2, 1, 4, 32, 3, 3, 1, 1, 1, 1),
    (1, 2, 5, 9, 2, 3, 1, 1, 1, 0),
]


@pytest.mark.parametrize("n,c,h,w,kh,kw,sh,sw,ph,pw", KERNEL_CONFIGS)
def test_im2col_kernel_against_numpy(n, c, h, w, kh, kw, sh, sw, ph, pw):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    col = np.full((c * kh * kw, n * oh * ow), np.nan, np.float32)  # padding must be written
    padded = np.full((n, c, h + 2 * ph, w + 2 * pw), np.nan, np.float32)  # and the scratch
    kernels.im2col(x, col, padded, kh, kw, sh, sw, ph, pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    expected = np.stack([xp[:, ci, i:i + sh * oh:sh, j:j + sw * ow:sw].reshape(-1)
                         for ci in range(c) for i in range(kh) for j in range(kw)])
    np.testing.assert_array_equal(col, expected)
    # col2im is the adjoint of im2col: <im2col(x), d> == <x, col2im(d)>.
    d = rng.standard_normal(col.shape).astype(np.float32)
    dx = np.full_like(x, np.nan)
    padded[...] = np.nan  # col2im must not trust the scratch either
    kernels.col2im(d, dx, padded, kh, kw, sh, sw, ph, pw)
    np.testing.assert_allclose(np.sum(col * d, dtype=np.float64),
                               np.sum(x * dx, dtype=np.float64), rtol=1e-5)


def test_im2col_kernel_checks_its_arrays():
    x = np.zeros((2, 3, 5, 7), np.float32)
    col = np.zeros((3 * 3 * 2, 2 * 3 * 4), np.float32)  # kernel (3, 2), stride (2, 3), pad (1, 2)
    padded = np.zeros((2, 3, 7, 11), np.float32)
    kernels.im2col(x, col, padded, 3, 2, 2, 3, 1, 2)
    with pytest.raises(ValueError, match="column array has shape"):
        kernels.im2col(x, np.zeros((18, 23), np.float32), padded, 3, 2, 2, 3, 1, 2)
    with pytest.raises(ValueError, match="padded scratch has shape"):
        kernels.im2col(x, col, np.zeros((2, 3, 6, 11), np.float32), 3, 2, 2, 3, 1, 2)
    with pytest.raises(ValueError, match="padded scratch has shape"):
        kernels.col2im(col, x, np.zeros((1, 3, 7, 11), np.float32), 3, 2, 2, 3, 1, 2)
    with pytest.raises(ValueError, match="stride"):
        kernels.col2im(col, x, padded, 3, 2, 0, 3, 1, 2)


def test_gather_sum_accumulates_the_bias_gradient_in_double():
    rng = np.random.default_rng(9)
    dy = rng.standard_normal((3, 4, 5)).astype(np.float32)
    dy_t = np.empty((4, 15), np.float32)
    db = np.full(4, 0.5)  # gather_sum adds to what is there
    kernels.gather_sum(dy, dy_t, db)
    np.testing.assert_array_equal(dy_t, dy.transpose(1, 0, 2).reshape(4, 15))
    np.testing.assert_allclose(db, 0.5 + dy.sum(axis=(0, 2), dtype=np.float64), rtol=1e-12)
    kernels.gather_sum(dy, dy_t, np.empty(0))  # no bias: nothing to add to
    with pytest.raises(ValueError, match="do not fit"):
        kernels.gather_sum(dy, dy_t, np.empty(3))


def test_pixel_row_moves_are_transposes():
    rng = np.random.default_rng(12)
    out = rng.standard_normal((3 * 70, 5)).astype(np.float32)  # N=3, P=70 (> one block)
    bias = rng.standard_normal(5).astype(np.float32)
    y = np.empty((3, 5, 70), np.float32)
    kernels.scatter_bias_rows(out, bias, y)
    np.testing.assert_array_equal(y, out.reshape(3, 70, 5).transpose(0, 2, 1) + bias[:, None])
    kernels.scatter_bias_rows(out, np.empty(0, np.float32), y)  # no bias
    np.testing.assert_array_equal(y, out.reshape(3, 70, 5).transpose(0, 2, 1))
    rows = np.empty_like(out)
    db = np.full(5, 0.5)  # accumulates, in double, like gather_sum
    kernels.gather_rows_sum(y, rows, db)
    np.testing.assert_array_equal(rows, out)
    np.testing.assert_allclose(db, 0.5 + y.sum(axis=(0, 2), dtype=np.float64), rtol=1e-12)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.scatter_bias_rows(out[:-1], bias, y)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.gather_rows_sum(y, rows, np.empty(4))


@pytest.mark.parametrize("core", ["Haswell", "SkylakeX"])
def test_the_layout_follows_the_blas_kernels(core):
    """A process picks pixel rows exactly when its OpenBLAS runs AVX-512 kernels."""
    if core == "SkylakeX" and "avx512bw" not in open("/proc/cpuinfo").read():
        pytest.skip("this CPU runs no AVX-512 kernels")
    code = ("from nnkit import parallel; from nnkit.layers import convolution as c; "
            "print(parallel.blas_kernels(), c.PIXEL_ROWS)")
    env = dict(os.environ, OPENBLAS_CORETYPE=core)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [core, str(core == "SkylakeX")]


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few output pixels, so that small test batches take several chunks (and
    no wider chunks for cols of few rows)."""
    monkeypatch.setattr(convolution, "CHUNK_COLUMNS", 80)
    monkeypatch.setattr(convolution, "CHUNK_VALUES", 0)


# (N, C, H, W, F, kernel, stride, pad, dx route). At 80 columns per chunk these batches
# split into chunks of 2 or 3 images with a smaller last one, or into single images (whose
# forward GEMM writes straight into the output).
CHUNK_CONFIGS = [
    (5, 3, 5, 6, 2, 3, 1, 1, "transposed"),           # F <= C, stride 1; chunks 2, 2, 1
    (5, 3, 5, 6, 2, (3, 2), 1, (2, 1), "transposed"),  # asymmetric kernel and pad; 1 image
    (5, 2, 5, 6, 3, 3, 1, 1, "col2im"),               # F > C; chunks 2, 2, 1
    (5, 2, 10, 9, 2, 3, 2, 1, "col2im"),              # strided; chunks 3, 2
    (3, 2, 4, 4, 2, 3, 1, 3, "col2im"),               # pad >= kernel; 1 image
]


def w_rows(layer: Convolution2D) -> int:
    """The rows of the layer's col, C*kh*kw."""
    return layer.params[0].data[0].size


def test_chunk_sizes_of_the_cifar10_layers():
    """1024 columns, or more for a col of few rows: 256 * 1024 values (the module notes)."""
    assert convolution._chunk_size(100, 32 * 32, 3 * 25) == 3     # conv1: 3495 columns
    assert convolution._chunk_size(100, 16 * 16, 32 * 25) == 4    # conv2: 1024 columns
    assert convolution._chunk_size(100, 8 * 8, 32 * 25) == 16     # conv3
    assert convolution._chunk_size(3, 32 * 32, 3 * 25) == 3       # never more than the batch
    assert convolution._chunk_size(100, 64 * 64, 32 * 25) == 1    # at least one image


@pytest.mark.parametrize("n,c,h,w,f,kernel,stride,pad,route", CHUNK_CONFIGS)
def test_chunked_layer_matches_reference_and_gradients(small_chunks, n, c, h, w, f, kernel,
                                                       stride, pad, route):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((n, c, h, w))
    layer, src = make_layer(x, f, kernel, stride, pad)
    assert (layer._transposed_pad() is not None) == (route == "transposed")
    y = layer.ComputeFeature(src)
    assert convolution._chunk_size(n, y[0, 0].size, w_rows(layer)) < n  # more than one chunk
    w_, b = layer.GetParams()
    np.testing.assert_allclose(y, reference_conv(x, w_, b, layer.stride, layer.pad),
                               rtol=1e-10, atol=1e-12)
    check_layer(layer, x)


def test_both_input_gradient_routes_agree(small_chunks):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 4, 6, 7))
    layer, src = make_layer(x, 3, (3, 2), 1, (1, 1))
    layer.ComputeFeature(src)
    layer.grad = rng.standard_normal(layer.data.shape)
    layer.ComputeGradient()
    assert layer._transposed_pad() == (1, 0)
    transposed = src.grad.copy()
    layer._transposed_pad = lambda: None  # force the col2im route
    layer.ComputeGradient()
    np.testing.assert_allclose(src.grad, transposed, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("f,route", [(2, "transposed"), (5, "col2im")])
def test_one_chunk_batch_reuses_forward_col(f, route):
    """A training batch of one chunk keeps forward's col for backward: the gradients are
    those of backward's own im2col, bit for bit, and a second backward (col used up by the
    first) recomputes it and agrees too."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 6, 7))
    dy = None
    grads = {}
    for mode in ("kept", "recomputed"):
        layer, src = make_layer(x, f, 3, 1, 1)
        assert (layer._transposed_pad() is not None) == (route == "transposed")
        layer.train(mode == "kept")  # an evaluation-mode forward keeps nothing
        layer.ComputeFeature(src)
        assert (layer._kept_col is not None) == (mode == "kept")
        if dy is None:
            dy = rng.standard_normal(layer.data.shape)
        for attempt in ("first", "again"):
            layer.grad = dy.copy()
            layer.ComputeGradient()
            assert layer._kept_col is None
            grads[mode, attempt] = [src.grad.copy()] + [p.grad.copy() for p in layer.params]
    for key, got in grads.items():
        for a, b in zip(got, grads["recomputed", "first"]):
            np.testing.assert_array_equal(a, b, err_msg=str(key))


# ----------------------------------------------------------------- parity with torch
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


# (N, C, H, W, F, kernel, stride, pad)
TORCH_CONFIGS = [
    (4, 3, 32, 32, 32, 5, 1, 2),      # CIFAR-10 conv1
    (3, 32, 16, 16, 32, 5, 1, 2),     # CIFAR-10 conv2 (smaller batch)
    (2, 4, 9, 11, 6, (3, 2), (2, 3), (1, 0)),
    (2, 3, 8, 8, 5, 3, 2, 1),
    (1, 2, 5, 5, 3, 5, 1, 0),         # a single output pixel
    (10, 32, 8, 8, 64, 5, 1, 2),      # CIFAR-10 conv3: F > C, the col2im route
    (34, 32, 8, 8, 32, 5, 1, 2),      # several chunks (16 images at 1024 columns), the
                                      # last one smaller; F = C, the transposed route
]


@pytest.mark.parametrize("n,c,h,w,f,kernel,stride,pad", TORCH_CONFIGS)
def test_torch_parity(torch, monkeypatch, n, c, h, w, f, kernel, stride, pad):
    """The im2col routes against PyTorch (test_winograd.py has the Winograd route's)."""
    monkeypatch.setattr(convolution, "WINOGRAD", False)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    layer, src = make_layer(x, f, kernel, stride, pad, seed=8)
    y = layer.ComputeFeature(src)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    layer.grad = dy
    layer.ComputeGradient()

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.params[0].data, requires_grad=True)
    bt = torch.tensor(layer.params[1].data, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=layer.stride, padding=layer.pad)
    yt.backward(torch.tensor(dy))
    # atol scales with the size of the sums involved (unit-variance data and weights).
    scale = np.sqrt(layer.params[0].data[0].size)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(src.grad, xt.grad.numpy(), rtol=1e-4, atol=1e-5 * scale)
    gscale = np.sqrt(y[:, 0].size)
    np.testing.assert_allclose(layer.params[0].grad, wt.grad.numpy(), rtol=1e-4,
                               atol=1e-5 * gscale)
    np.testing.assert_allclose(layer.params[1].grad, bt.grad.numpy(), rtol=1e-4,
                               atol=1e-5 * gscale)


def test_gemm_products_are_the_batch_wide_im2col_shapes():
    """``nnkit time``'s GEMMs alone: W @ col, dy @ col.T and (if the source takes it) W.T @ dy."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 8, 6))
    for src, count in ((Source(x), 3), (NoGradSource(x), 2)):
        layer = Convolution2D(5, 3, 1, 1)
        y = layer.ComputeFeature(src)
        products = layer.gemm_products()
        cols, k = 4 * y.shape[2] * y.shape[3], 3 * 3 * 3
        assert len(products) == count
        assert products[0][:4] == ("forward", "output", (5, k), (k, cols))
        assert products[0].flops == 2 * y.size * k  # every output value: k multiply-adds
        assert products[1][:4] == ("backward", "weight gradient", (5, cols), (k, cols))
        assert products[1].transpose_b and products[1].flops == products[0].flops
        if count == 3:
            assert products[2][:4] == ("backward", "input gradient", (5, k), (5, cols))
            assert products[2].transpose_a and products[2].flops == products[0].flops
