"""LRN2D: gradient checks, a direct numpy reference, PyTorch parity, errors, buffers."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gradcheck import Source, check_layer, run
from nnkit.layers import LRN2D


def reference_lrn(x: np.ndarray, size: int, alpha: float, beta: float, k: float,
                  region: str) -> np.ndarray:
    """The documented definition, summed window offset by window offset (float64)."""
    x = x.astype(np.float64)
    sq = x * x
    s = np.zeros_like(x)
    if region == "across_channels":
        before, after = size // 2, (size - 1) // 2
        padded = np.pad(sq, ((0, 0), (before, after), (0, 0), (0, 0)))
        for d in range(size):
            s += padded[:, d:d + x.shape[1]]
        n = size
    else:
        p = (size - 1) // 2
        padded = np.pad(sq, ((0, 0), (0, 0), (p, p), (p, p)))
        for i in range(size):
            for j in range(size):
                s += padded[:, :, i:i + x.shape[2], j:j + x.shape[3]]
        n = size * size
    return x / (k + alpha / n * s) ** beta


def randn(shape: tuple[int, ...], dtype: Any = np.float32, seed: int = 0, scale: float = 1.0
          ) -> np.ndarray:
    """Standard normal draws times ``scale``, in ``dtype``."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


# ----------------------------------------------------------------- gradient checks (float64)
# alpha is large so the cross term of the gradient matters; beta 0.75 takes the sqrt fast
# path, 0.6 the general exp/log one.
@pytest.mark.parametrize("beta", [0.75, 0.6])
@pytest.mark.parametrize("size", [3, 4, 5])
def test_gradient_across_channels(size: int, beta: float) -> None:
    layer = LRN2D(size, alpha=2.0, beta=beta, k=1.5)
    check_layer(layer, randn((2, 4, 3, 2), np.float64, seed=size))


@pytest.mark.parametrize("beta", [0.75, 0.6])
@pytest.mark.parametrize("size", [3, 5])
def test_gradient_within_channel(size: int, beta: float) -> None:
    layer = LRN2D(size, alpha=4.0, beta=beta, k=1.5, norm_region="within_channel")
    check_layer(layer, randn((2, 2, 4, 5), np.float64, seed=size))


# ----------------------------------------------------------------- forward vs the definition
@pytest.mark.parametrize("region,size", [("across_channels", 1), ("across_channels", 2),
                                         ("across_channels", 4), ("across_channels", 9),
                                         ("within_channel", 1), ("within_channel", 3),
                                         ("within_channel", 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_definition(region: str, size: int, dtype: type) -> None:
    x = randn((2, 6, 5, 4), dtype, seed=size, scale=3.0)
    layer = LRN2D(size, alpha=0.7, beta=0.75 if size % 2 else 0.6, k=2.0, norm_region=region)
    y, _ = run(layer, x)
    assert y.dtype == dtype and y.shape == x.shape
    tol = 1e-13 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(y, reference_lrn(x, size, 0.7, layer.beta, 2.0, region),
                               rtol=tol, atol=tol)


def test_running_sums_do_not_drift_in_float32() -> None:
    """Many channels of very different magnitudes: float32 stays close to float64."""
    x = randn((2, 96, 3, 3), np.float32, seed=3)
    x *= np.float32(10.0) ** np.random.default_rng(4).integers(-3, 4, size=(1, 96, 1, 1))
    layer = LRN2D(5, alpha=1e-2, beta=0.75, k=1.0)
    y, _ = run(layer, x)
    np.testing.assert_allclose(y, reference_lrn(x, 5, 1e-2, 0.75, 1.0, "across_channels"),
                               rtol=5e-6, atol=1e-6)


def test_float64_and_batch_size_changes() -> None:
    """Reallocates on a new batch size and stays correct, forward and backward."""
    layer = LRN2D(3, alpha=1.0, beta=0.75, k=1.0, norm_region="within_channel")
    ref = LRN2D(3, alpha=1.0, beta=0.75, k=1.0, norm_region="within_channel")
    for i, n in enumerate([3, 5, 2, 5]):
        x = randn((n, 2, 4, 4), np.float64, seed=i)
        dy = randn((n, 2, 4, 4), np.float64, seed=10 + i)
        y, dx = run(layer, x, dy)
        assert y.dtype == np.float64 and dx.dtype == np.float64 and y.shape == x.shape
        np.testing.assert_allclose(y, reference_lrn(x, 3, 1.0, 0.75, 1.0, "within_channel"),
                                   rtol=1e-13)
        fresh_y, fresh_dx = run(LRN2D(**ref.get_config()), x, dy)
        np.testing.assert_array_equal(y, fresh_y)
        np.testing.assert_array_equal(dx, fresh_dx)


@pytest.mark.parametrize("region,beta", [("across_channels", 0.75),
                                         ("within_channel", 0.6)])
def test_evaluation_mode_keeps_no_scale_and_backward_computes_it_again(region: str,
                                                                     beta: float) -> None:
    """Evaluation mode normalizes as training does, bit for bit, without keeping the scale
    (an array of the input's size); a backward pass after it gives training's gradient."""
    x = randn((3, 6, 5, 4), seed=4, scale=3.0)
    dy = randn((3, 6, 5, 4), seed=5)
    layer = LRN2D(3, alpha=2.0, beta=beta, k=1.5, norm_region=region)
    trained_y, trained_dx = (a.copy() for a in run(layer, x, dy))
    assert layer._buffers["scale"].shape == x.shape  # training keeps it for backward
    fresh = LRN2D(**layer.get_config())
    fresh.train(False)
    assert fresh.ComputeFeature(Source(x)) is fresh.data
    np.testing.assert_array_equal(fresh.data, trained_y)
    assert "scale" not in fresh._buffers
    np.testing.assert_array_equal(fresh.backward(dy), trained_dx)
    np.testing.assert_array_equal(fresh.data, trained_y)  # left as it was
    # The next evaluation forward and its backward again, on the buffers already there.
    np.testing.assert_array_equal(fresh.ComputeFeature(Source(x)), trained_y)
    np.testing.assert_array_equal(fresh.backward(dy), trained_dx)


def test_get_config_rebuilds_and_no_input_grad() -> None:
    layer = LRN2D(5, alpha=1e-3, beta=0.5, k=2.0, norm_region="within_channel", name="norm1")
    config = layer.get_config()
    assert config == {"size": 5, "alpha": 1e-3, "beta": 0.5, "k": 2.0,
                      "norm_region": "within_channel", "name": "norm1"}
    assert LRN2D(**config).get_config() == config
    x = randn((2, 3, 4, 4))
    y, _ = run(layer, x)
    assert layer.backward(np.ones_like(y), need_input_grad=False) is None


# ----------------------------------------------------------------- errors
def test_errors_name_the_layer() -> None:
    with pytest.raises(ValueError, match=r"LRN2D 'lrn'.*'across_channels', 'within_channel'"):
        LRN2D(3, norm_region="spatial", name="lrn")
    with pytest.raises(ValueError, match=r"LRN2D 'lrn'.*odd size, got 4"):
        LRN2D(4, norm_region="within_channel", name="lrn")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"LRN2D 'lrn'.*positive integer"):
            LRN2D(bad, name="lrn")
    with pytest.raises(ValueError, match=r"LRN2D 'lrn'.*4-D input.*\(batch, 3, 4\)"):
        LRN2D(3, name="lrn").ComputeFeature(Source(np.zeros((2, 3, 4), np.float32)))
    with pytest.raises(RuntimeError, match=r"LRN2D 'lrn'.*before forward"):
        LRN2D(3, name="lrn").backward(np.zeros((1, 2, 2, 2), np.float32))
    layer = LRN2D(3, name="lrn")
    layer.ComputeFeature(Source(np.zeros((2, 3, 4, 4), np.float32)))
    with pytest.raises(ValueError, match=r"LRN2D 'lrn'.*\(2, 3, 4, 5\)"):
        layer.backward(np.zeros((2, 3, 4, 5), np.float32))


# ----------------------------------------------------------------- PyTorch parity
def torch_within_channel(t, size: int, alpha: float, beta: float, k: float):
    """The documented within_channel definition, composed from torch ops (autograd)."""
    import torch.nn.functional as F
    avg = F.avg_pool2d(t * t, size, stride=1, padding=(size - 1) // 2, count_include_pad=True)
    return t / (k + alpha * avg) ** beta


@pytest.mark.parametrize("shape,size,alpha,beta,k", [
    ((4, 32, 16, 16), 3, 5e-5, 0.75, 1.0),   # the CIFAR-10 Caffe model's norm layers
    ((3, 7, 5, 6), 4, 0.5, 0.75, 2.0),
    ((3, 7, 5, 6), 5, 1.0, 0.6, 1.0),
    ((2, 3, 4, 4), 7, 0.3, 0.75, 1.0),       # window wider than the channels
])
@pytest.mark.parametrize("region", ["across_channels", "within_channel"])
def test_torch_parity(region: str, shape: tuple[int, ...], size: int, alpha: float, beta: float,
                      k: float) -> None:
    torch = pytest.importorskip("torch")
    if region == "within_channel" and size % 2 == 0:
        size += 1
    x = randn(shape, seed=1, scale=4.0)
    dy = randn(shape, seed=2)
    layer = LRN2D(size, alpha=alpha, beta=beta, k=k, norm_region=region)
    y, dx = run(layer, x, dy)

    t = torch.tensor(x, requires_grad=True)
    if region == "across_channels":
        yt = torch.nn.functional.local_response_norm(t, size, alpha=alpha, beta=beta, k=k)
    else:
        yt = torch_within_channel(t, size, alpha, beta, k)
    yt.backward(torch.tensor(dy))
    assert y.dtype == np.float32 and dx.dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_torch_parity_float64() -> None:
    torch = pytest.importorskip("torch")
    x = randn((2, 6, 4, 5), np.float64, seed=5, scale=2.0)
    dy = randn(x.shape, np.float64, seed=6)
    for region in ("across_channels", "within_channel"):
        layer = LRN2D(3, alpha=0.8, beta=0.7, k=1.0, norm_region=region)
        y, dx = run(layer, x, dy)
        t = torch.tensor(x, requires_grad=True)
        if region == "across_channels":
            yt = torch.nn.functional.local_response_norm(t, 3, alpha=0.8, beta=0.7, k=1.0)
        else:
            yt = torch_within_channel(t, 3, 0.8, 0.7, 1.0)
        yt.backward(torch.tensor(dy))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-11, atol=1e-13)
