"""Dense: gradient check, reference forward/backward (numpy and torch), errors."""
import numpy as np
import pytest

from gradcheck import Source, check_layer
from nnkit.layers import Dense
from nnkit.layers.base import fastest_layout


@pytest.mark.parametrize("shape", [(3, 5), (2, 2, 3, 2)])
def test_gradient_check(shape):
    layer = Dense(4, init="gaussian", w_std=0.5, b_std=0.5)
    check_layer(layer, np.random.default_rng(1).standard_normal(shape))


def test_forward_backward_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    layer = Dense(5)
    src = Source(x)
    y = layer.ComputeFeature(src)
    w, b = layer.GetParams()
    assert w.shape == (5, 18) and b.shape == (5,)
    np.testing.assert_allclose(y, x.reshape(6, -1) @ w.T + b, rtol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    layer.grad = dy
    layer.ComputeGradient()
    np.testing.assert_allclose(layer.params[0].grad, dy.T @ x.reshape(6, -1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.params[1].grad, dy.sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(src.grad, (dy @ w).reshape(x.shape), rtol=1e-5, atol=1e-6)


def test_parity_with_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 30)).astype(np.float32)
    layer = Dense(7)
    src = Source(x)
    layer.ComputeFeature(src)
    w, b = (torch.tensor(a, requires_grad=True) for a in layer.GetParams())
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.linear(xt, w, b)
    np.testing.assert_allclose(layer.data, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal(yt.shape).astype(np.float32)
    yt.backward(torch.tensor(dy))
    layer.grad = dy
    layer.ComputeGradient()
    np.testing.assert_allclose(layer.params[0].grad, w.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.params[1].grad, b.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(src.grad, xt.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_default_init_is_uniform_005_and_zero_bias():
    layer = Dense(300)
    layer.build((200,))
    w, b = layer.GetParams()
    assert w.dtype == np.float32 and -0.05 <= w.min() < -0.049 and 0.049 < w.max() <= 0.05
    assert not b.any()


def test_multipliers_and_init_options():
    layer = Dense(3, w_std=0.1, w_lr=2, b_lr=3, w_wd=0, b_wd=0, b_value=0.5)
    assert [(p.lr_mult, p.wd_mult) for p in layer.params] == [(2.0, 0.0), (3.0, 0.0)]
    layer.build((4,))
    assert layer.params[0].spec.kind == "gaussian"
    np.testing.assert_array_equal(layer.params[1].data, 0.5)


def test_batch_size_may_change():
    layer = Dense(3)
    for n in (4, 7, 2):
        x = np.ones((n, 5), np.float32)
        assert layer.ComputeFeature(Source(x)).shape == (n, 3)


def test_wrong_feature_size_names_layer_and_shapes():
    layer = Dense(3, name="fc1")
    layer.ComputeFeature(Source(np.ones((2, 5), np.float32)))
    with pytest.raises(ValueError, match=r"Dense 'fc1'.*\(2, 6\).*\(batch, 5\)"):
        layer.ComputeFeature(Source(np.ones((2, 6), np.float32)))


def test_set_params_checks_shape():
    layer = Dense(3, name="fc")
    layer.build((5,))
    with pytest.raises(ValueError, match=r"Dense 'fc'.*weight has shape \(3, 5\), got \(5, 3\)"):
        layer.SetParams(np.zeros((5, 3)), np.zeros(3))
    layer.SetParams(np.ones((3, 5)), np.full(3, 2.0))
    np.testing.assert_array_equal(layer.GetParams()[1], 2.0)


def test_unknown_argument_is_an_error():
    with pytest.raises(TypeError, match="w_stdd"):
        Dense(3, w_stdd=0.1)


def test_gemm_products_are_the_layers_own_products():
    """``nnkit time``'s GEMMs alone: x @ W.T, dy.T @ x and dy @ W at the layer's shapes."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    layer = Dense(5)
    src = Source(x)
    y = layer.ComputeFeature(src)
    layer.grad = dy = rng.standard_normal(y.shape).astype(np.float32)
    layer.ComputeGradient()
    w, b = layer.GetParams()
    operands = {"output": (x.reshape(6, -1), w, layer.data - b),
                "weight gradient": (dy, x.reshape(6, -1), layer.params[0].grad),
                "input gradient": (dy, w, src.grad.reshape(6, -1))}
    products = layer.gemm_products()
    assert [(p.phase, p.what) for p in products] == [
        ("forward", "output"), ("backward", "weight gradient"), ("backward", "input gradient")]
    for p in products:
        a, bm, expected = operands[p.what]
        assert (a.shape, bm.shape) == (p.a_shape, p.b_shape)
        result = (a.T if p.transpose_a else a) @ (bm.T if p.transpose_b else bm)
        np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)
        assert p.flops == 2 * result.size * (a.shape[0] if p.transpose_a else a.shape[1])
        # The other layout: the same operands as stored, the output transposed.
        q = p.swapped()
        assert (q.a_shape, q.b_shape, q.flops) == (bm.shape, a.shape, p.flops)
        swapped = (bm.T if q.transpose_a else bm) @ (a.T if q.transpose_b else a)
        np.testing.assert_allclose(swapped, expected.T, rtol=1e-4, atol=1e-5)
        seconds, (qa, qb, out) = fastest_layout(p, rng, iterations=2)
        assert seconds > 0 and out.shape in (result.shape, result.shape[::-1])
        assert (qa.shape[0], qb.shape[1]) == out.shape
    assert Dense(3).gemm_products() == []  # not built: no shapes yet


def test_transpose_bias_kernel_writes_a_slice_of_columns():
    """The forward's last move, y[:, lo:hi] = y_t[lo:hi].T + b[lo:hi], on a part's columns."""
    from nnkit._kernels import im2col as layout
    rng = np.random.default_rng(5)
    y_t = rng.standard_normal((37, 21)).astype(np.float32)  # not multiples of the 16 x 16 tiles
    b = rng.standard_normal(37).astype(np.float32)
    y = np.zeros((21, 50), np.float32)
    layout.transpose_bias(y_t, b, y[:, 5:42])
    np.testing.assert_array_equal(y[:, 5:42], y_t.T + b)
    assert not y[:, :5].any() and not y[:, 42:].any()  # nothing outside the slice
    layout.transpose_bias(y_t, np.empty(0, np.float32), y[:, 5:42])  # no bias
    np.testing.assert_array_equal(y[:, 5:42], y_t.T)
    with pytest.raises(ValueError, match="do not fit"):
        layout.transpose_bias(y_t, b[:-1], y[:, 5:42])
