"""BatchNormalization: gradient checks, a numpy reference, PyTorch parity, state, errors."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import nnkit
from gradcheck import Source, check_layer, run
from nnkit.layers import BatchNormalization

IMAGES = (4, 3, 5, 2)
ROWS = (6, 5)


def randn(shape: tuple[int, ...], dtype: Any = np.float32, seed: int = 0, scale: float = 1.0,
          shift: float = 0.0) -> np.ndarray:
    """Normal draws with mean ``shift`` and std ``scale``, in ``dtype``."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(dtype)


def channel_axes(x: np.ndarray) -> tuple[int, ...]:
    """The axes statistics run over: all but the channel axis 1."""
    return (0,) + tuple(range(2, x.ndim))


def per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """A (C,) vector shaped to broadcast against an (N, C, ...) array."""
    return np.asarray(v, np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def reference_bn(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                 var: np.ndarray, eps: float) -> np.ndarray:
    """The documented formula in float64, with the given per-channel statistics."""
    x = x.astype(np.float64)
    g, b, m, v = (per_channel(a, x.ndim) for a in (gamma, beta, mean, var))
    return g * (x - m) / np.sqrt(v + eps) + b


def batch_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel mean and biased variance, in float64."""
    x = x.astype(np.float64)
    return x.mean(axis=channel_axes(x)), x.var(axis=channel_axes(x))


def built(shape: tuple[int, ...], dtype: Any = np.float32, seed: int = 1,
          **kwargs: Any) -> BatchNormalization:
    """A built layer with random weight and bias (so gamma and beta both matter)."""
    layer = BatchNormalization(**kwargs)
    layer.build(shape[1:], dtype)
    c = shape[1]
    layer.SetParams(randn((c,), dtype, seed, 0.5, 1.0), randn((c,), dtype, seed + 1))
    return layer


# ----------------------------------------------------------------- gradient checks (float64)
@pytest.mark.parametrize("shape", [IMAGES, ROWS], ids=["images", "rows"])
def test_gradient_training_mode(shape: tuple[int, ...]) -> None:
    layer = built(shape, np.float64, epsilon=1e-2)
    check_layer(layer, randn(shape, np.float64, seed=3, scale=2.0, shift=0.5))


@pytest.mark.parametrize("shape", [IMAGES, ROWS], ids=["images", "rows"])
def test_gradient_eval_mode(shape: tuple[int, ...]) -> None:
    layer = built(shape, np.float64)
    c = shape[1]
    layer.SetState(moving_mean=randn((c,), np.float64, 7),
                   moving_variance=randn((c,), np.float64, 8) ** 2 + 0.1)
    layer.eval()
    check_layer(layer, randn(shape, np.float64, seed=4))


# ----------------------------------------------------------------- forward vs numpy
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [IMAGES, ROWS, (2, 4, 1, 1), (1, 7)],
                         ids=["images", "rows", "1x1-images", "one-row"])
def test_training_forward_and_moving_stats_match_numpy(shape: tuple[int, ...],
                                                       dtype: type) -> None:
    layer = built(shape, dtype, momentum=0.9, epsilon=1e-3)
    gamma, beta = (p.data.copy() for p in layer.params)
    moving_mean = np.zeros(shape[1])
    moving_var = np.ones(shape[1])
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for step in range(3):
        # A mean far from zero checks that the statistics do not cancel in float32.
        x = randn(shape, dtype, seed=step, scale=3.0, shift=50.0)
        y, _ = run(layer, x)
        mean, var = batch_stats(x)
        assert y.dtype == dtype and y.shape == x.shape
        np.testing.assert_allclose(y, reference_bn(x, gamma, beta, mean, var, 1e-3),
                                   rtol=tol, atol=tol)
        moving_mean = 0.9 * moving_mean + 0.1 * mean
        moving_var = 0.9 * moving_var + 0.1 * var
        assert layer.state["moving_mean"].dtype == dtype
        np.testing.assert_allclose(layer.state["moving_mean"], moving_mean, rtol=tol)
        np.testing.assert_allclose(layer.state["moving_variance"], moving_var, rtol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [IMAGES, ROWS], ids=["images", "rows"])
def test_eval_forward_uses_moving_stats_and_leaves_them(shape: tuple[int, ...],
                                                        dtype: type) -> None:
    layer = built(shape, dtype)
    c = shape[1]
    mean, var = randn((c,), dtype, 5), randn((c,), dtype, 6) ** 2 + 0.5
    layer.SetState(moving_mean=mean, moving_variance=var)
    layer.eval()
    x = randn(shape, dtype, seed=9)
    y, dx = run(layer, x, np.ones_like(x))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    gamma, beta = layer.GetParams()
    np.testing.assert_allclose(y, reference_bn(x, gamma, beta, mean, var, 1e-3), rtol=tol,
                               atol=tol)
    # The eval-mode input gradient is the affine map's slope.
    np.testing.assert_allclose(dx, np.broadcast_to(per_channel(gamma / np.sqrt(var + 1e-3),
                                                               x.ndim), x.shape), rtol=tol)
    np.testing.assert_array_equal(layer.state["moving_mean"], mean)
    np.testing.assert_array_equal(layer.state["moving_variance"], var)


def test_backward_uses_the_mode_of_its_forward_and_batch_size_changes() -> None:
    """Switching mode between forward and backward does not change the gradient; buffers
    follow new batch sizes."""
    layer = BatchNormalization()
    for i, n in enumerate([4, 7, 2, 7]):
        x = randn((n, 3, 4, 4), np.float64, seed=i)
        dy = randn(x.shape, np.float64, seed=10 + i)
        src = Source(x)
        layer.train().ComputeFeature(src)
        layer.eval()
        layer.grad = dy
        layer.ComputeGradient()
        dx = src.grad.copy()
        fresh = BatchNormalization(**layer.get_config())
        _, fresh_dx = run(fresh, x, dy)
        np.testing.assert_allclose(dx, fresh_dx, rtol=1e-13, atol=1e-15)


def test_get_config_rebuilds_and_no_input_grad() -> None:
    layer = BatchNormalization(momentum=0.9, epsilon=1e-5, name="bn1")
    config = layer.get_config()
    assert config == {"momentum": 0.9, "epsilon": 1e-5, "name": "bn1"}
    assert BatchNormalization(**config).get_config() == config
    assert BatchNormalization().get_config() == {"momentum": 0.99, "epsilon": 1e-3,
                                                 "name": "batch_normalization"}
    x = randn(IMAGES)
    y, _ = run(layer, x)
    dy = randn(IMAGES, seed=1)
    assert layer.backward(dy, need_input_grad=False) is None
    # The param grads are filled all the same.
    np.testing.assert_allclose(layer.params[1].grad, dy.sum(axis=(0, 2, 3)), rtol=1e-5)


# ----------------------------------------------------------------- params and state
def test_running_stats_are_state_and_updaters_leave_them() -> None:
    layer = BatchNormalization(name="bn")
    run(layer, randn(IMAGES, shift=2.0), randn(IMAGES, seed=1))
    assert [p.name for p in layer.params] == ["weight", "bias"]
    assert [p.full_name for p in layer.params] == ["bn/weight", "bn/bias"]
    assert set(layer.state) == {"moving_mean", "moving_variance"}
    assert all(p.data.shape == (3,) and p.data.dtype == np.float32 for p in layer.params)
    assert layer.param_count() == 6
    state = {k: v.copy() for k, v in layer.GetState().items()}
    params = [a.copy() for a in layer.GetParams()]
    assert not np.allclose(state["moving_mean"], 0)  # one training step moved it
    nnkit.SGD(lr=0.1).Update(1, layer)
    for before, p in zip(params, layer.params):
        np.testing.assert_allclose(p.data, before - np.float32(0.1) * p.grad, rtol=1e-6)
        assert not np.array_equal(p.data, before)
    for key, before in state.items():
        np.testing.assert_array_equal(layer.state[key], before)


def test_initial_values_and_momentum_extremes() -> None:
    x = randn(ROWS, np.float64, shift=3.0)
    mean, var = batch_stats(x)
    fixed = BatchNormalization(momentum=1.0)
    run(fixed, x)
    np.testing.assert_array_equal(fixed.state["moving_mean"], np.zeros(ROWS[1]))
    np.testing.assert_array_equal(fixed.state["moving_variance"], np.ones(ROWS[1]))
    np.testing.assert_array_equal(fixed.params[0].data, np.ones(ROWS[1]))
    np.testing.assert_array_equal(fixed.params[1].data, np.zeros(ROWS[1]))
    latest = BatchNormalization(momentum=0.0)
    run(latest, x)
    np.testing.assert_allclose(latest.state["moving_mean"], mean, rtol=1e-14)
    np.testing.assert_allclose(latest.state["moving_variance"], var, rtol=1e-14)


# ----------------------------------------------------------------- errors
def test_errors_name_the_layer() -> None:
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"BatchNormalization 'bn'.*momentum.*\[0, 1\]"):
            BatchNormalization(momentum=bad, name="bn")
    for bad in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match=r"BatchNormalization 'bn'.*epsilon.*positive"):
            BatchNormalization(epsilon=bad, name="bn")
    for shape in ((2, 3, 4), (2,), (2, 3, 4, 5, 6)):
        with pytest.raises(ValueError, match=r"BatchNormalization 'bn'.*2-D.*4-D.*got "
                                             rf"{len(shape)}-D"):
            BatchNormalization(name="bn").ComputeFeature(Source(np.zeros(shape, np.float32)))
    with pytest.raises(ValueError, match=r"BatchNormalization 'bn'.*non-empty batch"):
        BatchNormalization(name="bn").ComputeFeature(Source(np.zeros((0, 3), np.float32)))
    with pytest.raises(RuntimeError, match=r"BatchNormalization 'bn'.*before forward"):
        BatchNormalization(name="bn").backward(np.zeros((2, 3), np.float32))
    layer = BatchNormalization(name="bn")
    layer.ComputeFeature(Source(np.zeros((2, 3, 4, 4), np.float32)))
    with pytest.raises(ValueError, match=r"BatchNormalization 'bn'.*\(2, 3, 4, 5\)"):
        layer.backward(np.zeros((2, 3, 4, 5), np.float32))


# ----------------------------------------------------------------- PyTorch parity
def torch_bn(torch, shape: tuple[int, ...], layer: BatchNormalization):
    """A torch BatchNorm1d/2d with the layer's weight, bias and converted conventions:
    PyTorch's momentum is 1 - Keras's, and its eps is the same."""
    cls = torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d
    dtype = torch.float64 if layer.dtype == np.float64 else torch.float32
    bn = cls(shape[1], eps=layer.epsilon, momentum=1.0 - layer.momentum, dtype=dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(layer.params[0].data))
        bn.bias.copy_(torch.from_numpy(layer.params[1].data))
    return bn


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(8, 16, 12, 12), (5, 3, 4, 7), (32, 10), (3, 4)],
                         ids=["images", "small-images", "rows", "small-rows"])
def test_torch_parity_training(shape: tuple[int, ...], dtype: type) -> None:
    """Forward, dx, dgamma and dbeta of every step, then the running statistics.

    PyTorch's ``running_var`` follows the *unbiased* batch variance, nnkit's (like tf.keras's)
    the biased one, so each is checked against an EMA built from torch's own per-step
    batch variances: nnkit's from the biased ones, torch's from the unbiased ones. The
    means follow the same EMA in both, so they are compared directly.
    """
    torch = pytest.importorskip("torch")
    layer = built(shape, dtype, momentum=0.8, epsilon=1e-3)
    bn = torch_bn(torch, shape, layer).train()
    k = layer.momentum
    ema_biased = np.ones(shape[1])
    ema_unbiased = np.ones(shape[1])
    fwd_tol, grad_tol = (1e-12, 1e-10) if dtype == np.float64 else (2e-5, 2e-4)
    for step in range(5):
        x = randn(shape, dtype, seed=step, scale=1.0 + step, shift=step - 2.0)
        dy = randn(shape, dtype, seed=100 + step)
        y, dx = run(layer, x, dy)

        t = torch.tensor(x, requires_grad=True)
        bn.weight.grad = bn.bias.grad = None
        yt = bn(t)
        yt.backward(torch.tensor(dy))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=fwd_tol, atol=fwd_tol)
        np.testing.assert_allclose(dx, t.grad.numpy(), rtol=grad_tol, atol=grad_tol)
        np.testing.assert_allclose(layer.params[0].grad, bn.weight.grad.numpy(), rtol=grad_tol,
                                   atol=grad_tol)
        np.testing.assert_allclose(layer.params[1].grad, bn.bias.grad.numpy(), rtol=grad_tol,
                                   atol=grad_tol)

        dims = list(channel_axes(x))
        xt = t.detach().double()
        biased = xt.var(dim=dims, unbiased=False).numpy()
        unbiased = xt.var(dim=dims, unbiased=True).numpy()
        ema_biased = k * ema_biased + (1 - k) * biased
        ema_unbiased = k * ema_unbiased + (1 - k) * unbiased

    np.testing.assert_allclose(layer.state["moving_mean"], bn.running_mean.numpy(),
                               rtol=fwd_tol, atol=fwd_tol)
    np.testing.assert_allclose(layer.state["moving_variance"], ema_biased, rtol=fwd_tol)
    np.testing.assert_allclose(bn.running_var.numpy(), ema_unbiased, rtol=fwd_tol)
    # The conventions really differ, by a factor M / (M - 1) in each step's variance.
    m = x.size // shape[1]
    assert not np.allclose(layer.state["moving_variance"], bn.running_var.numpy(),
                           rtol=0.1 / m, atol=0)


@pytest.mark.parametrize("shape", [(6, 5, 3, 3), (9, 4)], ids=["images", "rows"])
def test_torch_parity_eval(shape: tuple[int, ...]) -> None:
    """After some training, torch in eval mode with nnkit's running statistics agrees."""
    torch = pytest.importorskip("torch")
    layer = built(shape, momentum=0.5)
    for step in range(3):
        run(layer, randn(shape, seed=step, scale=2.0, shift=1.0))
    layer.eval()
    bn = torch_bn(torch, shape, layer).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(layer.state["moving_mean"]))
        bn.running_var.copy_(torch.from_numpy(layer.state["moving_variance"]))
    x = randn(shape, seed=10, scale=2.0)
    dy = randn(shape, seed=11)
    y, dx = run(layer, x, dy)
    t = torch.tensor(x, requires_grad=True)
    yt = bn(t)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.params[0].grad, bn.weight.grad.numpy(), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(layer.params[1].grad, bn.bias.grad.numpy(), rtol=1e-5,
                               atol=1e-5)


def test_large_batch_runs_in_parallel_parts_and_matches_one_part(monkeypatch) -> None:
    """A batch big enough to split over channels gives the single-part result exactly."""
    from nnkit import parallel
    shape = (16, 8, 32, 32)  # 16K values per channel: several parts on a multi-core machine
    x = randn(shape, seed=1, shift=1.0)
    dy = randn(shape, seed=2)
    y, dx = run(built(shape), x, dy)
    split = built(shape)
    monkeypatch.setattr(parallel, "MIN_PART_VALUES", 1)
    monkeypatch.setattr(parallel, "_threads", 4)
    assert len(parallel.parts(shape[1], shape[0] * 32 * 32)) == 4
    y2, dx2 = run(split, x, dy)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(dx, dx2)
