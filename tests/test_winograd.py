"""Winograd F(4x4, 5x5): its matrices from the Toom-Cook points, its kernels against a direct
convolution and their adjoints, and the layer's route forward and backward."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from gradcheck import Source, check_layer, run
from nnkit._kernels import winograd as kernels
from nnkit.layers import convolution
from nnkit.layers.convolution import WINOGRAD_G, Convolution2D
from test_convolution import make_layer, reference_conv

CELLS, TILE = kernels.CELLS, kernels.TILE
# Toom-Cook at the points 0, 1, -1, 2, -2, 1/2, -1/2 and infinity: the matrices the kernels
# hardcode (row 0 of B^T and of G with their signs flipped, which leaves the products alike).
POINTS = [Fraction(p) for p in (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2))]
B_T = np.array([[1, 0, -21 / 4, 0, 21 / 4, 0, -1, 0],
                [0, 1, 1, -17 / 4, -17 / 4, 1, 1, 0],
                [0, -1, 1, 17 / 4, -17 / 4, -1, 1, 0],
                [0, 1 / 2, 1 / 4, -5 / 2, -5 / 4, 2, 1, 0],
                [0, -1 / 2, 1 / 4, 5 / 2, -5 / 4, -2, 1, 0],
                [0, 2, 4, -5 / 2, -5, 1 / 2, 1, 0],
                [0, -2, 4, 5 / 2, -5, -1 / 2, 1, 0],
                [0, -1, 0, 21 / 4, 0, -21 / 4, 0, 1]])
A_T = np.array([[float(p ** i) for p in POINTS] + [float(i == TILE - 1)] for i in range(TILE)])


def test_g_follows_from_the_points():
    """Row j of G is p_j^k / prod over the other points q of (p_j - q); infinity's is e_4."""
    rows = []
    for p in POINTS:
        scale = np.prod([p - q for q in POINTS if q != p])
        rows.append([float(p ** k / scale) for k in range(5)])
    rows.append([0, 0, 0, 0, 1])
    rows[0] = [-v for v in rows[0]]  # the flipped sign
    np.testing.assert_allclose(WINOGRAD_G, rows, rtol=1e-15, atol=1e-15)
    assert A_T.tolist()[1] == [0, 1, -1, 2, -2, 0.5, -0.5, 0]


def winograd_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """The kernels and numpy's GEMMs, as the layer chains them, for one chunk."""
    n, c, h, width = x.shape
    f = w.shape[0]
    oh, ow = h + 2 * pad - 4, width + 2 * pad - 4
    tiles = n * kernels.plane_tiles(oh, ow)
    u = np.einsum("ak,fckl,bl->abfc", WINOGRAD_G, w, WINOGRAD_G).reshape(CELLS, f, c)
    v = np.empty((CELLS, c, tiles), x.dtype)
    kernels.winograd_input(x, v, pad, pad, np.empty(kernels.input_scratch(n, h, width, pad, pad),
                                                    x.dtype))
    m = np.matmul(u.astype(x.dtype), v)
    y = np.empty((n, f, oh, ow), x.dtype)
    kernels.winograd_output(m, b.astype(x.dtype), y,
                            np.empty(kernels.output_scratch(n, oh, ow), x.dtype))
    return y


def test_the_matrices_compute_a_1d_correlation():
    """A^T ((G g) * (B^T d)) is the 'valid' correlation of 8 inputs with 5 taps."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        g, d = rng.standard_normal(5), rng.standard_normal(8)
        np.testing.assert_allclose(A_T @ ((WINOGRAD_G @ g) * (B_T @ d)),
                                   np.correlate(d, g, "valid"), rtol=1e-12, atol=1e-12)


def test_plane_tiles_are_4x4_blocks():
    assert [kernels.plane_tiles(s, s) for s in (1, 4, 5, 8, 16)] == [1, 1, 4, 4, 16]
    assert kernels.plane_tiles(6, 13) == 2 * 4


# (N, C, F, H, W, pad): odd and even outputs, a 1x1 output, a pad of 0 and one past the
# kernel's reach, more filters than channels and fewer.
SHAPES = [(2, 3, 4, 6, 7, 2), (3, 5, 2, 5, 5, 0), (1, 2, 3, 9, 4, 1), (2, 8, 6, 16, 16, 2),
          (3, 4, 9, 8, 8, 2), (1, 1, 1, 1, 1, 2), (2, 3, 2, 7, 9, 3), (1, 2, 2, 12, 3, 4)]


@pytest.mark.parametrize("n,c,f,h,w,pad", SHAPES)
def test_kernels_match_a_direct_convolution(n, c, f, h, w, pad):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w))
    wt, b = rng.standard_normal((f, c, 5, 5)), rng.standard_normal(f)
    expected = reference_conv(x, wt, b, (1, 1), (pad, pad))
    np.testing.assert_allclose(winograd_conv(x, wt, b, pad), expected, rtol=1e-11, atol=1e-11)
    # float32: the transforms scale by up to 21/4 and 1/90; still within 1e-5 of the largest.
    got = winograd_conv(x.astype(np.float32), wt.astype(np.float32), b, pad)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_no_bias_adds_nothing():
    rng = np.random.default_rng(2)
    x, wt = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((2, 3, 5, 5))
    np.testing.assert_allclose(winograd_conv(x, wt, np.zeros(0), 2),
                               reference_conv(x, wt, None, (1, 1), (2, 2)), atol=1e-11)


def test_kernels_check_their_arrays():
    x = np.zeros((2, 3, 6, 6))  # 6x6 outputs: 2x2 tiles per image
    scratch = np.zeros(kernels.input_scratch(2, 6, 6, 2, 2))
    with pytest.raises(ValueError, match=r"V is \(64, 3, 7\), needs \(64, 3, 8\)"):
        kernels.winograd_input(x, np.zeros((64, 3, 7)), 2, 2, scratch)
    with pytest.raises(ValueError, match="scratch of 5 values"):
        kernels.winograd_input(x, np.zeros((64, 3, 8)), 2, 2, np.zeros(5))
    with pytest.raises(ValueError, match="no 5x5 output for 3x3 images"):
        kernels.winograd_input(np.zeros((1, 1, 3, 3)), np.zeros((64, 1, 0)), 0, 0, scratch)
    y, out_scratch = np.zeros((2, 4, 6, 6)), np.zeros(kernels.output_scratch(2, 6, 6))
    with pytest.raises(ValueError, match=r"M is \(36, 4, 8\), needs \(64, 4, 8\)"):
        kernels.winograd_output(np.zeros((36, 4, 8)), np.zeros(4), y, out_scratch)
    with pytest.raises(ValueError, match="3 biases for 4 filters"):
        kernels.winograd_output(np.zeros((64, 4, 8)), np.zeros(3), y, out_scratch)


def grad_output_reference(dy: np.ndarray) -> np.ndarray:
    """A dY A^T of every 4x4 tile of dy (N, F, OH, OW), zero past the edge: (64, F, tiles)."""
    n, f, oh, ow = dy.shape
    th, tw = -(-oh // TILE), -(-ow // TILE)
    padded = np.zeros((n, f, TILE * th, TILE * tw))
    padded[:, :, :oh, :ow] = dy
    tiles = padded.reshape(n, f, th, TILE, tw, TILE).transpose(0, 1, 2, 4, 3, 5)  # n f th tw i j
    dm = np.einsum("xi,nfabij,uj->xufanb", A_T.T, tiles, A_T.T)  # columns (th, n, tw)
    return dm.reshape(CELLS, f, n * th * tw)


# Partial tiles, one tile, 4 tiles per tile row of an image, and 2 (so that 4 tiles at a
# time cross from one image to the next).
@pytest.mark.parametrize("n,f,oh,ow", [(2, 3, 4, 6), (1, 2, 5, 7), (3, 1, 1, 1), (2, 4, 16, 16),
                                       (1, 2, 11, 9), (3, 2, 8, 8)])
def test_grad_output_is_the_adjoint_of_the_output_transform(n, f, oh, ow):
    rng = np.random.default_rng(5)
    dy = rng.standard_normal((n, f, oh, ow))
    tiles = n * kernels.plane_tiles(oh, ow)
    scratch = np.empty(kernels.output_scratch(n, oh, ow))
    dm, db = np.empty((CELLS, f, tiles)), np.full(f, 0.5)
    kernels.winograd_grad_output(dy, dm, db, scratch)
    np.testing.assert_allclose(dm, grad_output_reference(dy), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(db, 0.5 + dy.sum(axis=(0, 2, 3)), rtol=1e-13)  # added to
    # <output(M), dy> = <M, grad_output(dy)>: the gradient of the output transform.
    m, y = rng.standard_normal((CELLS, f, tiles)), np.empty((n, f, oh, ow))
    kernels.winograd_output(m, np.zeros(0), y, scratch)
    np.testing.assert_allclose(np.vdot(y, dy), np.vdot(m, dm), rtol=1e-12)
    # float32, and no bias gradient asked for.
    dm32 = np.empty((CELLS, f, tiles), np.float32)
    kernels.winograd_grad_output(dy.astype(np.float32), dm32, np.zeros(0),
                                 scratch.astype(np.float32))
    np.testing.assert_allclose(dm32, dm, rtol=1e-5, atol=1e-5)


def test_grad_output_checks_its_arrays():
    dy, scratch = np.zeros((2, 4, 6, 6)), np.zeros(kernels.output_scratch(2, 6, 6))
    with pytest.raises(ValueError, match=r"dM is \(64, 4, 5\), needs \(64, 4, 8\)"):
        kernels.winograd_grad_output(dy, np.zeros((64, 4, 5)), np.zeros(4), scratch)
    with pytest.raises(ValueError, match="3 bias gradients for 4 filters"):
        kernels.winograd_grad_output(dy, np.zeros((64, 4, 8)), np.zeros(3), scratch)
    with pytest.raises(ValueError, match="scratch of 5 values"):
        kernels.winograd_grad_output(dy, np.zeros((64, 4, 8)), np.zeros(4), np.zeros(5))


@pytest.fixture
def small_winograd(monkeypatch):
    """The Winograd route for small test layers: few channels and pixels, small chunks."""
    monkeypatch.setattr(convolution, "CHUNK_COLUMNS", 20)
    monkeypatch.setattr(convolution, "CHUNK_VALUES", 0)
    monkeypatch.setattr(convolution, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(convolution, "WINOGRAD_MIN_PIXELS", 1)
    monkeypatch.setattr(convolution, "WINOGRAD_TILES", 12)
    calls = []
    for name in ("_winograd", "_winograd_backward"):
        route = getattr(Convolution2D, name)

        def counted(self, *args, route=route, name=name):
            calls.append((name, self))
            return route(self, *args)

        monkeypatch.setattr(Convolution2D, name, counted)
    return calls


@pytest.mark.parametrize("n,c,h,w,f,pad", [(5, 2, 6, 7, 3, 2), (4, 3, 5, 5, 2, 1),
                                            (3, 2, 4, 5, 3, 4), (8, 3, 6, 6, 2, 0)])
def test_layer_route_matches_reference_and_gradients(small_winograd, n, c, h, w, f, pad):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, c, h, w))
    layer, src = make_layer(x, f, 5, 1, pad)
    small_winograd.clear()
    y = layer.ComputeFeature(src)
    assert small_winograd == [("_winograd", layer)]
    w_, b = layer.GetParams()
    np.testing.assert_allclose(y, reference_conv(x, w_, b, (1, 1), (pad, pad)),
                               rtol=1e-10, atol=1e-11)
    check_layer(layer, x)  # forward and backward by Winograd
    assert ("_winograd_backward", layer) in small_winograd


def test_layer_gradients_match_im2col_and_without_input_gradient(small_winograd, monkeypatch):
    """The Winograd backward pass against im2col's, in float64, with and without dx."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 3, 7, 6))
    layer, _ = make_layer(x, 4, 5, 1, 2)
    dy = rng.standard_normal((5, 4, 7, 6))
    y, dx = run(layer, x, dy)
    grads = [p.grad.copy() for p in layer.params]
    assert ("_winograd_backward", layer) in small_winograd
    layer.ComputeFeature(Source(x))
    for p in layer.params:
        p.grad[...] = np.nan  # each is written again
    assert layer.backward(dy, need_input_grad=False) is None  # no dx: the weight gradient alone
    for p, g in zip(layer.params, grads):
        np.testing.assert_allclose(p.grad, g, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(convolution, "WINOGRAD", False)
    y_im2col, dx_im2col = run(layer, x, dy)
    np.testing.assert_allclose(y, y_im2col, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(dx, dx_im2col, rtol=1e-10, atol=1e-11)
    for p, g in zip(layer.params, grads):
        np.testing.assert_allclose(g, p.grad, rtol=1e-10, atol=1e-10)


def test_a_padding_past_the_kernel_keeps_backward_on_im2col(small_winograd):
    x = np.random.default_rng(7).standard_normal((4, 2, 3, 3))
    layer, src = make_layer(x, 2, 5, 1, 5)
    check_layer(layer, x)
    assert ("_winograd", layer) in small_winograd
    assert ("_winograd_backward", layer) not in small_winograd


@pytest.mark.parametrize("c,f,side", [(32, 32, 16), (32, 64, 8)])
def test_float32_route_agrees_with_im2col(monkeypatch, c, f, side):
    """The CIFAR-10 conv2 and conv3 at their shapes, float32: output, input and parameter
    gradients of both routes within 2e-5 of the largest."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((100, c, side, side)).astype(np.float32)
    dy = rng.standard_normal((100, f, side, side)).astype(np.float32)
    layer = Convolution2D(f, 5, 1, 2, w_std=0.05)
    results = {}
    for route in (True, False):
        monkeypatch.setattr(convolution, "WINOGRAD", route)
        y, dx = run(layer, x, dy)
        results[route] = [y, dx] + [p.grad.copy() for p in layer.params]
    for winograd, im2col in zip(results[True], results[False]):
        assert winograd.dtype == np.float32
        assert np.abs(winograd - im2col).max() <= 2e-5 * np.abs(im2col).max()
    assert not np.array_equal(results[True][0], results[False][0])  # both routes did run


# (N, C, H, F, kernel, stride, training, takes it): the CIFAR-10 layers at batch 100, and
# what keeps a layer off the route.
ROUTES = [
    (100, 32, 16, 32, 5, 1, True, True),     # conv2
    (100, 32, 16, 32, 5, 1, False, True),    # conv2, evaluation
    (100, 32, 8, 64, 5, 1, True, True),      # conv3
    (100, 32, 4, 64, 5, 1, True, False),     # 4x4 outputs, too few tiles
    (100, 3, 32, 32, 5, 1, True, True),      # conv1: 3 channels
    (100, 1, 32, 32, 5, 1, False, False),    # one channel: im2col (a non-BLAS matmul)
    (4, 32, 16, 32, 5, 1, False, False),     # one im2col chunk
    (100, 32, 16, 32, 3, 1, True, False),    # not 5x5
    (100, 32, 36, 32, 5, 2, True, False),    # strided
]


@pytest.mark.parametrize("n,c,h,f,kernel,stride,training,takes", ROUTES)
def test_which_layers_take_the_route(monkeypatch, n, c, h, f, kernel, stride, training, takes):
    calls = []
    monkeypatch.setattr(Convolution2D, "_winograd", lambda self, *args: calls.append(self))
    layer = Convolution2D(f, kernel, stride, 2)
    layer.train(training)
    layer.ComputeFeature(Source(np.zeros((n, c, h, h), np.float32)))
    assert bool(calls) == takes
    monkeypatch.setattr(convolution, "WINOGRAD", False)
    calls.clear()
    layer.ComputeFeature(Source(np.zeros((n, c, h, h), np.float32)))
    assert not calls


@pytest.mark.parametrize("c,takes", [(1, False), (2, False), (3, True), (16, True)])
def test_backward_takes_the_route_from_3_channels(monkeypatch, c, takes):
    calls = []
    monkeypatch.setattr(Convolution2D, "_winograd_backward",
                        lambda self, *args: calls.append(self))
    x = np.zeros((100, c, 16, 16), np.float32)
    layer, _ = make_layer(x, 8, 5, 1, 2)
    run(layer, x, np.zeros((100, 8, 16, 16), np.float32))
    assert bool(calls) == takes


@pytest.mark.parametrize("n,c,side,f", [(34, 32, 16, 32), (34, 32, 8, 64), (40, 16, 6, 24)])
def test_torch_parity(n, c, side, f):
    """The route (forward, input and parameter gradients) against PyTorch, float32: within
    2e-5 of the largest value, as against im2col."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((n, c, side, side)).astype(np.float32)
    layer, _ = make_layer(x, f, 5, 1, 2, seed=9)
    assert layer._takes_winograd(c, side * side)  # and more than one chunk:
    assert n > convolution._chunk_size(n, side * side, c * 25)
    dy = rng.standard_normal((n, f, side, side)).astype(np.float32)
    y, dx = run(layer, x, dy)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.params[0].data, requires_grad=True)
    bt = torch.tensor(layer.params[1].data, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, padding=2)
    yt.backward(torch.tensor(dy))
    for got, expected in [(y, yt), (dx, xt.grad), (layer.params[0].grad, wt.grad),
                          (layer.params[1].grad, bt.grad)]:
        expected = expected.detach().numpy()
        assert np.abs(got - expected).max() <= 2e-5 * np.abs(expected).max()
