"""Activation: gradient checks, reference formulas, torch parity, errors."""
import warnings

import numpy as np
import pytest

from gradcheck import Source, check_layer
from nnkit.layers import Activation
from nnkit.layers.activation import ACTIVATIONS, STANH_A, STANH_B


class NoGradSource(Source):
    """A source that, like an input layer, takes no gradient."""

    accepts_grad = False


def away_from_zero(shape, seed=0):
    """Inputs in +-[0.2, 1.5]: none near relu's kink, where the numerical gradient is wrong."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2, 2)])
def test_gradient_check(activation, shape):
    check_layer(Activation(activation), away_from_zero(shape))


REFERENCE = {
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "stanh": lambda x: 1.7159 * np.tanh(2 * x / 3),
    "linear": lambda x: x,
}


@pytest.mark.parametrize("activation", sorted(REFERENCE))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_formula(activation, dtype):
    x = away_from_zero((4, 2, 3), seed=1).astype(dtype) * 3
    layer = Activation(activation)
    y = layer.ComputeFeature(Source(x))
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, REFERENCE[activation](x.astype(np.float64)), rtol=2e-6, atol=1e-7)


def test_stanh_constants_and_fixed_points():
    assert (STANH_A, STANH_B) == (1.7159, 2.0 / 3.0)
    y = Activation("stanh").ComputeFeature(Source(np.array([[-1.0, 0.0, 1.0]])))
    np.testing.assert_allclose(y, [[-1.0, 0.0, 1.0]], atol=1e-4)  # LeCun: f(+-1) = +-1


def test_softmax_over_classes_and_channels():
    rng = np.random.default_rng(2)
    x2 = rng.standard_normal((3, 5))
    y2 = Activation("softmax").ComputeFeature(Source(x2))
    e = np.exp(x2 - x2.max(1, keepdims=True))
    np.testing.assert_allclose(y2, e / e.sum(1, keepdims=True), rtol=1e-12)
    x4 = rng.standard_normal((2, 4, 3, 2))
    y4 = Activation("softmax").ComputeFeature(Source(x4))
    np.testing.assert_allclose(y4.sum(axis=1), 1.0, rtol=1e-12)
    e = np.exp(x4)
    np.testing.assert_allclose(y4, e / e.sum(1, keepdims=True), rtol=1e-12)


def test_softmax_is_stable_for_huge_scores():
    y = Activation("softmax").ComputeFeature(Source(np.array([[1000.0, 0.0], [-1000.0, -1000.0]],
                                                             np.float32)))
    np.testing.assert_allclose(y, [[1.0, 0.0], [0.5, 0.5]])


def test_sigmoid_saturates_without_overflow_warning():
    x = np.array([[-200.0, -20.0, 0.0, 20.0, 200.0]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = Activation("sigmoid").ComputeFeature(Source(x))
    np.testing.assert_allclose(y, [[0.0, 2.0611537e-09, 0.5, 1.0, 1.0]], rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("activation,shape", [("relu", (5, 7)), ("sigmoid", (5, 7)),
                                              ("tanh", (2, 3, 4, 4)), ("softmax", (6, 10)),
                                              ("softmax", (2, 5, 3, 3))])
def test_parity_with_torch(activation, shape):
    torch = pytest.importorskip("torch")
    functional = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
                  "softmax": lambda t: torch.softmax(t, dim=1)}[activation]
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    layer, src = Activation(activation), Source(x)
    layer.ComputeFeature(src)
    layer.grad = dy
    layer.ComputeGradient()
    xt = torch.tensor(x, requires_grad=True)
    yt = functional(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(layer.data, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(src.grad, xt.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_output_is_a_reused_layer_buffer():
    layer = Activation("linear")
    x = np.ones((2, 3), np.float32)
    y1 = layer.ComputeFeature(Source(x))
    assert y1 is not x and not np.shares_memory(y1, x)
    y2 = layer.ComputeFeature(Source(2 * x))
    assert y2 is y1 and (y2 == 2).all()


def test_no_input_gradient_when_the_source_takes_none():
    layer, src = Activation("tanh"), NoGradSource(np.ones((2, 3)))
    layer.ComputeFeature(src)
    layer.grad = np.ones((2, 3))
    layer.ComputeGradient()
    assert src.grad is None


def test_get_config():
    assert Activation("stanh", name="act1").get_config() == {"activation": "stanh", "name": "act1"}


def test_unknown_activation_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Activation 'a1'.*'swish'.*relu, sigmoid, tanh, stanh, "
                                         r"softmax, linear"):
        Activation("swish", name="a1")


def test_softmax_needs_a_class_axis():
    with pytest.raises(ValueError, match=r"Activation 'sm'.*softmax.*\(batch,\)"):
        Activation("softmax", name="sm").ComputeFeature(Source(np.ones(4)))


def float32_sweep() -> np.ndarray:
    """Float32 inputs over tanh's whole range: a fine grid, every decade down to the
    subnormals (both signs), and the special values."""
    grid = np.linspace(-12, 12, 1_000_001)
    decades = np.logspace(-45, 1.5, 100_000)
    special = [0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, -1e-45, 7.9988, 8.0]
    return np.concatenate([grid, decades, -decades, special]).astype(np.float32)


@pytest.mark.parametrize("baseline", [False, True], ids=["best build", "SSE2 build"])
def test_float32_tanh_kernel_is_within_7_ulp_of_tanh_everywhere(baseline):
    from nnkit._kernels.activations import scaled_tanh_forward
    x = float32_sweep()
    y = np.empty_like(x)
    scaled_tanh_forward(x, 1.0, 1.0, y, baseline)
    exact = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    errors = np.abs(y - exact) / ulp
    assert errors.max() <= 7, f"{errors.max():.1f} ulp at x = {x[errors.argmax()]!r}"
    assert np.abs(y).max() <= 1.0
    np.testing.assert_array_equal(np.signbit(y), np.signbit(x))  # odd, -0.0 included
    np.testing.assert_array_equal(y[np.abs(x) < 1e-4], x[np.abs(x) < 1e-4])  # tanh(v) = v there


def test_float32_tanh_kernel_keeps_nan_and_scales():
    from nnkit._kernels.activations import scaled_tanh_forward
    x = np.array([np.nan, 1.0, -2.0, np.nan], np.float32)
    y = np.empty_like(x)
    scaled_tanh_forward(x, STANH_A, STANH_B, y)
    assert np.isnan(y[0]) and np.isnan(y[3])
    np.testing.assert_allclose(y[1:3], STANH_A * np.tanh(STANH_B * x[1:3].astype(np.float64)),
                               rtol=5e-7)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 31, 33, 1000])
def test_float32_tanh_kernel_in_place_and_every_tail_length(n):
    """The SIMD loop's remainder and the in-place call give the values of one by one."""
    from nnkit._kernels.activations import scaled_tanh_forward
    x = (np.random.default_rng(n).standard_normal(n) * 4).astype(np.float32)
    y = np.full_like(x, np.nan)
    scaled_tanh_forward(x, STANH_A, STANH_B, y)
    one_by_one = np.empty_like(x)
    for i in range(n):
        scaled_tanh_forward(x[i:i + 1], STANH_A, STANH_B, one_by_one[i:i + 1])
    np.testing.assert_array_equal(y, one_by_one)
    scaled_tanh_forward(x, STANH_A, STANH_B, x)
    np.testing.assert_array_equal(x, y)


def test_float32_tanh_kernel_rejects_arrays_of_different_lengths():
    from nnkit._kernels.activations import scaled_tanh_forward
    with pytest.raises(ValueError, match="x has 3 values, y 2"):
        scaled_tanh_forward(np.zeros(3, np.float32), 1.0, 1.0, np.zeros(2, np.float32))
