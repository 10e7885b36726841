"""MaxPooling2D and AvgPooling2D: output sizes, parity with PyTorch, gradients, errors."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from nnkit.layers.pooling import AvgPooling2D, MaxPooling2D, pooled_size
from tests.gradcheck import Source, check_layer

KINDS = {"max": MaxPooling2D, "avg": AvgPooling2D}


def run(layer, x: np.ndarray, dy: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward through the per-layer API; copies of y and dx."""
    src = Source(x)
    y = layer.ComputeFeature(src).copy()
    layer.grad = np.ones_like(y) if dy is None else dy
    layer.ComputeGradient()
    return y, src.grad.copy()


def reference(kind: str, x: np.ndarray, k: tuple[int, int], s: tuple[int, int],
              p: tuple[int, int], ceil_mode: bool) -> np.ndarray:
    """Caffe pooling, one window at a time (slow and obvious), as an independent check."""
    n, c, h, w = x.shape
    outs = []
    for size, kk, ss, pp in zip((h, w), k, s, p):
        span = size + 2 * pp - kk
        out = (int(np.ceil(span / ss)) if ceil_mode else span // ss) + 1
        if ceil_mode and (out - 1) * ss >= size + pp:
            out -= 1
        outs.append(out)
    y = np.empty((n, c, *outs), x.dtype)
    for i, j in itertools.product(range(outs[0]), range(outs[1])):
        h0, w0 = i * s[0] - p[0], j * s[1] - p[1]
        window = x[:, :, max(h0, 0):min(h0 + k[0], h), max(w0, 0):min(w0 + k[1], w)]
        if kind == "max":
            y[:, :, i, j] = window.max(axis=(2, 3))
        else:
            cells = (min(h0 + k[0], h + p[0]) - h0) * (min(w0 + k[1], w + p[1]) - w0)
            y[:, :, i, j] = window.sum(axis=(2, 3)) / cells
    return y


# ------------------------------------------------------------------ output size
@pytest.mark.parametrize("size,k,s,p,ceil_mode,expected", [
    (32, 3, 2, 0, True, 16),   # the CIFAR net: ceil((32 - 3) / 2) + 1
    (32, 3, 2, 0, False, 15),  # floor
    (16, 3, 2, 0, True, 8),
    (7, 3, 2, 1, True, 4),
    (7, 3, 2, 1, False, 4),
    (6, 2, 3, 0, True, 2),     # a 3rd window would start at 6 = size + pad: dropped
    (5, 2, 2, 1, True, 3),     # a 4th window would start at 6 - 1 = size + pad: dropped
    (2, 3, 2, 0, True, 1),     # window larger than the image: one clipped window
])
def test_pooled_size_formula(size, k, s, p, ceil_mode, expected):
    assert pooled_size(size, k, s, p, ceil_mode) == expected
    layer = MaxPooling2D(k, s, p, ceil_mode)
    assert layer.output_shape((3, size, size)) == (3, expected, expected)


def test_output_shape_matches_torch_on_a_grid():
    torch = pytest.importorskip("torch")
    for size, k, s, ceil_mode in itertools.product(range(2, 12), (2, 3, 4), (1, 2, 3, 4),
                                                  (True, False)):
        for p in range(k // 2 + 1):
            x = torch.zeros(1, 1, size, size + 1)
            try:
                expected = tuple(torch.nn.functional.max_pool2d(x, k, s, p, ceil_mode=ceil_mode)
                                 .shape[1:])
            except RuntimeError:  # torch: output too small; so must we
                with pytest.raises(ValueError, match="output size"):
                    MaxPooling2D(k, s, p, ceil_mode).output_shape((1, size, size + 1))
                continue
            got = MaxPooling2D(k, s, p, ceil_mode).output_shape((1, size, size + 1))
            assert got == expected, (size, k, s, p, ceil_mode)


# ------------------------------------------------------------------ parity with PyTorch
GRID = [(k, s, p, c) for k, s, p, c in itertools.product((2, 3), (1, 2, 3), (0, 1), (True, False))
        if p <= k // 2]  # PyTorch needs pad <= kernel / 2
SHAPES = [(2, 3, 7, 7), (2, 3, 8, 8), (1, 2, 6, 9)]  # odd, even, non-square


def torch_pool(torch, kind: str, x: np.ndarray, dy: np.ndarray, k, s, p, ceil_mode):
    """PyTorch's output and input gradient for the same pooling."""
    tx = torch.from_numpy(x.copy()).requires_grad_()
    if kind == "max":
        ty = torch.nn.functional.max_pool2d(tx, k, s, p, ceil_mode=ceil_mode)
    else:
        ty = torch.nn.functional.avg_pool2d(tx, k, s, p, ceil_mode=ceil_mode,
                                            count_include_pad=True)
    ty.backward(torch.from_numpy(dy))
    return ty.detach().numpy(), tx.grad.numpy()


def assert_parity(torch, kind, x, k, s, p, ceil_mode, seed=0):
    layer = KINDS[kind](k, s, p, ceil_mode)
    dy = np.random.default_rng(seed).standard_normal(
        (x.shape[0], *layer.output_shape(x.shape[1:]))).astype(x.dtype)
    y, dx = run(layer, x, dy)
    ty, tdx = torch_pool(torch, kind, x, dy, k, s, p, ceil_mode)
    assert y.dtype == x.dtype and dx.dtype == x.dtype
    assert y.shape == ty.shape
    if kind == "max":  # a max is a copy, and each input gets the same routed gradients
        np.testing.assert_array_equal(y, ty)
    else:
        np.testing.assert_allclose(y, ty, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, tdx, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("k,s,p,ceil_mode", GRID)
def test_parity_with_torch(kind, k, s, p, ceil_mode):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(k * 100 + s * 10 + p)
    for shape in SHAPES:
        x = rng.standard_normal(shape).astype(np.float32)
        assert_parity(torch, kind, x, k, s, p, ceil_mode)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_parity_non_square_window(kind):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((2, 2, 9, 8)).astype(np.float32)
    for ceil_mode in (True, False):
        assert_parity(torch, kind, x, (3, 2), (2, 1), (1, 0), ceil_mode)
        assert_parity(torch, kind, x, (2, 3), (1, 3), (0, 1), ceil_mode)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_parity_cifar_shape(kind):
    """The fast path (3x3, stride 2, rows longer than the vector width) on a real shape."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).standard_normal((2, 4, 32, 32)).astype(np.float32)
    assert_parity(torch, kind, x, 3, 2, 0, True)
    assert_parity(torch, kind, x, 2, 2, 0, False)


def test_max_ties_nan_and_inf_match_torch():
    """First maximum wins ties (ReLU zeros), NaN propagates, padding never beats -inf."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    ties = rng.integers(0, 3, (2, 3, 9, 8)).astype(np.float32)
    relu = np.maximum(rng.standard_normal((2, 3, 9, 8)), 0).astype(np.float32)
    nan = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    nan[0, 0, 2, 3] = nan[1, 1, 0, 0] = nan[1, 1, 0, 2] = np.nan
    neg_inf = np.full((1, 1, 5, 5), -np.inf, np.float32)
    neg_inf[0, 0, 2, 2] = 1.0
    for x in (ties, relu, nan, neg_inf):
        for k, s, p in ((3, 2, 1), (2, 2, 0), (3, 1, 1)):
            layer = MaxPooling2D(k, s, p)
            dy = rng.standard_normal((x.shape[0], *layer.output_shape(x.shape[1:])))
            y, dx = run(layer, x, dy.astype(np.float32))
            ty, tdx = torch_pool(torch, "max", x, dy.astype(np.float32), k, s, p, True)
            np.testing.assert_array_equal(y, ty)  # NaNs compare equal here
            np.testing.assert_array_equal(dx, tdx)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_float64_matches_torch(kind):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(4).standard_normal((2, 3, 11, 10))
    assert_parity(torch, kind, x, 3, 2, 1, True)
    assert_parity(torch, kind, x, 2, 3, 0, False)
    x = np.random.default_rng(4).standard_normal((2, 4, 32, 32))  # several plane groups
    assert_parity(torch, kind, x, 3, 2, 0, True)


# ------------------------------------------------------------------ without PyTorch
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_forward_matches_window_by_window_reference(kind):
    rng = np.random.default_rng(5)
    for (k, s, p, ceil_mode), shape in itertools.product(
            [(3, 2, 0, True), (3, 2, 1, True), (2, 3, 1, True), (3, 1, 1, False),
             ((3, 2), (2, 1), (1, 0), True)], [(2, 3, 7, 7), (1, 2, 8, 11)]):
        x = rng.standard_normal(shape).astype(np.float32)
        k2, s2, p2 = ((v, v) if isinstance(v, int) else v for v in (k, s, p))
        y, _ = run(KINDS[kind](k, s, p, ceil_mode), x)
        np.testing.assert_allclose(y, reference(kind, x, k2, s2, p2, ceil_mode),
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_avg_divisor_and_max_routing_by_hand(kind):
    """A 3x3 image, window 2, stride 2, pad 1: every window is a corner cell region."""
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    y, dx = run(KINDS[kind](2, 2, 1), x)
    if kind == "max":  # windows {1}, {2,3}, {4,7}, {5,6,8,9}
        np.testing.assert_array_equal(y[0, 0], [[1, 3], [7, 9]])
        np.testing.assert_array_equal(dx[0, 0], [[1, 0, 1], [0, 0, 0], [1, 0, 1]])
    else:  # every window has 4 cells inside the padded image [-1, 4)
        np.testing.assert_allclose(y[0, 0], [[1 / 4, 5 / 4], [11 / 4, 28 / 4]])
        np.testing.assert_allclose(dx[0, 0], np.full((3, 3), 0.25))


def test_avg_ceil_mode_cells_past_the_padding_do_not_count():
    # 6 wide, window 3, stride 2, no pad, ceil: the last window [4, 7) has 2 cells in [0, 6).
    x = np.ones((1, 1, 1, 6))
    y, dx = run(AvgPooling2D((1, 3), (1, 2), 0, True), x)
    np.testing.assert_allclose(y[0, 0, 0], [1.0, 1.0, 1.0])  # not 2/3 at the end
    np.testing.assert_allclose(dx[0, 0, 0], [1 / 3, 1 / 3, 2 / 3, 1 / 3, 1 / 3 + 1 / 2, 1 / 2])


def test_max_gradient_check():
    # Well separated distinct values: the argmax does not move under a 1e-6 perturbation.
    rng = np.random.default_rng(6)
    for (k, s, p, ceil_mode), shape in [((3, 2, 1, True), (2, 2, 5, 6)),
                                        ((2, 2, 0, True), (1, 2, 5, 5)),
                                        (((3, 2), (1, 2), (1, 0), False), (1, 2, 4, 6))]:
        x = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1
        check_layer(MaxPooling2D(k, s, p, ceil_mode), x)


def test_avg_gradient_check():
    rng = np.random.default_rng(7)
    for (k, s, p, ceil_mode), shape in [((3, 2, 1, True), (2, 2, 5, 6)),
                                        ((3, 2, 0, True), (1, 2, 6, 6)),
                                        (((3, 2), (1, 2), (1, 0), False), (1, 2, 4, 6))]:
        check_layer(AvgPooling2D(k, s, p, ceil_mode), rng.standard_normal(shape))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_batch_size_changes_between_calls(kind):
    layer = KINDS[kind](3, 2, 1)
    rng = np.random.default_rng(8)
    for n in (3, 5, 2, 5):
        x = rng.standard_normal((n, 2, 9, 7)).astype(np.float32)
        dy = rng.standard_normal((n, 2, 5, 4)).astype(np.float32)
        y, dx = run(layer, x, dy)
        np.testing.assert_allclose(y, reference(kind, x, (3, 3), (2, 2), (1, 1), True),
                                   rtol=1e-6, atol=1e-7)
        # The gradient of one example does not depend on the others in the batch.
        one, one_dx = run(KINDS[kind](3, 2, 1), x[-1:], dy[-1:])
        np.testing.assert_array_equal(dx[-1:], one_dx)
        assert dx.shape == x.shape


def test_max_evaluation_mode_pools_alike_and_backward_finds_the_maxima_again():
    """Evaluation mode records no positions (the unrolled windows without them, and the
    general path); its outputs are training mode's, bit for bit, and a backward pass after
    it routes the gradient as after a training forward."""
    rng = np.random.default_rng(12)
    ties = rng.integers(0, 3, (2, 3, 9, 8)).astype(np.float32)
    nan = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    nan[0, 0, 2, 3] = nan[1, 1, 0, 0] = np.nan
    neg_inf = np.full((1, 2, 5, 5), -np.inf, np.float32)  # padding (-inf by rows) never wins
    neg_inf[0, 0, 2, 2] = 1.0
    for x in (ties, nan, neg_inf, rng.standard_normal((3, 4, 32, 32)).astype(np.float32)):
        for k, s, p in ((3, 2, 1), (2, 2, 0), (3, 1, 1), (3, 2, 0), ((3, 2), (2, 1), (1, 0))):
            layer = MaxPooling2D(k, s, p)
            dy = rng.standard_normal((x.shape[0], *layer.output_shape(x.shape[1:])))
            trained = run(layer, x, dy.astype(np.float32))
            layer.train(False)
            assert layer.ComputeFeature(Source(x)) is layer.data
            np.testing.assert_array_equal(layer.data, trained[0])
            assert layer._argmax is None  # none recorded
            layer.grad = dy.astype(np.float32)
            np.testing.assert_array_equal(layer.backward(layer.grad), trained[1])
            np.testing.assert_array_equal(layer.data, trained[0])  # left as it was


def test_max_backward_before_forward_names_the_layer():
    layer = MaxPooling2D(name="pool1")
    layer.build((2, 9, 9))
    with pytest.raises(RuntimeError, match="pool1.*backward called before forward"):
        layer.backward(np.ones((1, 2, 4, 4), np.float32))


def test_backward_without_input_grad_returns_none():
    for layer in (MaxPooling2D(), AvgPooling2D()):
        layer.ComputeFeature(Source(np.ones((1, 1, 5, 5), np.float32)))
        assert layer.backward(np.ones_like(layer.data), need_input_grad=False) is None


def test_float32_default_and_float64_kept():
    for cls in KINDS.values():
        for dtype in (np.float32, np.float64):
            layer = cls()
            y = layer.ComputeFeature(Source(np.ones((2, 1, 5, 5), dtype)))
            assert y.dtype == dtype and layer.dtype == dtype


def test_config_round_trip():
    layer = MaxPooling2D((3, 2), 2, (1, 0), ceil_mode=False, name="pool1")
    config = layer.get_config()
    assert config == {"pool_size": (3, 2), "stride": (2, 2), "pad": (1, 0),
                      "ceil_mode": False, "name": "pool1"}
    assert AvgPooling2D(**config).get_config() == config


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("cls", [MaxPooling2D, AvgPooling2D])
def test_pad_not_smaller_than_window(cls):
    with pytest.raises(ValueError, match=r"'p1'.*pad \(3, 3\).*pool_size \(3, 3\)"):
        cls(3, 2, 3, name="p1")
    with pytest.raises(ValueError, match=r"pad \(0, 2\) must be smaller than pool_size \(3, 2\)"):
        cls((3, 2), 1, (0, 2))


def test_bad_arguments():
    with pytest.raises(ValueError, match="must be >= 1"):
        MaxPooling2D(3, 0)
    with pytest.raises(TypeError, match="pool_size must be an int or a pair"):
        MaxPooling2D((3, 3, 3))


@pytest.mark.parametrize("shape", [(2, 5, 5), (2, 1, 1, 5, 5)])
def test_input_not_4d(shape):
    layer = MaxPooling2D(name="pool")
    with pytest.raises(ValueError, match=r"MaxPooling2D 'pool'.*expects 4-D input.*"
                                         + str(len(shape)) + "-D"):
        layer.ComputeFeature(Source(np.ones(shape, np.float32)))


def test_kernels_reject_buffers_that_do_not_fit():
    from nnkit._kernels import pooling as kernels

    layer = MaxPooling2D()
    layer.ComputeFeature(Source(np.ones((1, 2, 9, 9), np.float32)))
    g = layer._geometry
    x, y = np.ones((2, 9, 9), np.float32), np.empty((2, 4, 4), np.float32)
    argmax = np.empty((2, 4, 4), np.intc)
    best, where = np.empty(g.count, np.float32), np.empty(g.count, np.intc)
    with pytest.raises(ValueError, match="buffers do not fit"):
        kernels.max_forward(x, y, argmax, g.src, g.phases, g.border,
                            np.empty(g.cells - 1, np.float32), best, where, *g.args)
    with pytest.raises(ValueError, match="argmax rows is 3"):
        kernels.max_forward(x, y, np.empty((2, 3, 4), np.intc), g.src, g.phases, g.border,
                            np.empty(g.cells, np.float32), best, where, *g.args)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_kernels_by_rows_reject_buffers_that_do_not_fit(kind):
    """The evaluation-mode max and the average forward read no further than they check."""
    from nnkit._kernels import pooling as kernels

    x, scale = np.ones((2, 9, 9), np.float32), np.ones((4, 4), np.float32)
    cells = kernels.row_cells(9, 4, 3, 2, 0)

    def call(y, row):
        if kind == "max":
            kernels.max_values(x, y, row, 3, 3, 2, 2, 0, 0)
        else:
            kernels.avg_forward(x, y, np.ones(y.shape[1:], np.float32), row, 3, 3, 2, 2, 0, 0)

    call(np.empty((2, 4, 4), np.float32), np.empty(cells, np.float32))  # fits
    with pytest.raises(ValueError, match="a row buffer of 8 cells for 9"):
        call(np.empty((2, 4, 4), np.float32), np.empty(cells - 1, np.float32))
    with pytest.raises(ValueError, match="6x4 outputs do not fit a 9x9 plane"):
        call(np.empty((2, 6, 4), np.float32), np.empty(cells, np.float32))  # row 10 of 9
    with pytest.raises(ValueError, match="number of output planes is 3"):
        call(np.empty((3, 4, 4), np.float32), np.empty(cells, np.float32))
    if kind == "avg":
        with pytest.raises(ValueError, match="scale rows is 3"):
            kernels.avg_forward(x, np.empty((2, 4, 4), np.float32), scale[:3],
                                np.empty(cells, np.float32), 3, 3, 2, 2, 0, 0)


def test_output_size_below_one():
    layer = AvgPooling2D(5, 1, 1, ceil_mode=False, name="tiny")
    with pytest.raises(ValueError, match=r"AvgPooling2D 'tiny'.*\(3, 2, 2\).*output size "
                                         r"\(0, 0\) < 1"):
        layer.ComputeFeature(Source(np.ones((1, 3, 2, 2), np.float32)))
