"""The fused weight-gradient update: a dense layer's weight gradient computed by the updater,
a block of rows at a time, and applied while the block is in the cache.

It must give the values of the unfused step (the gradient GEMM per part, then the update) up
to rounding (BLAS may sum a block of another shape in another order), keep ``p.grad``
readable, and keep every guarantee of a training step: a gradient that is not finite is found
before any update.
"""
import numpy as np
import pytest
from test_model import toy_data

from nnkit import Activation, Dense, Sequential
from nnkit.layers.base import DeferredGrad
from nnkit.training import NonFiniteLossError
from nnkit.updaters import SGD, Adam, Nesterov


class SmallBlocks:
    """Mixed into an updater: blocks of 3 rows of a 20-wide weight (1 or 2 of the wider
    ones), so the toy layers run many blocks, short last ones included."""

    fused_block_bytes = 3 * 20 * 4


class UnfusedSGD(SGD):
    takes_deferred = False


class FusedSGD(SmallBlocks, SGD):
    pass


class UnfusedAdam(Adam):
    takes_deferred = False


class FusedAdam(SmallBlocks, Adam):
    pass


class UnfusedNesterov(Nesterov):
    takes_deferred = False


class FusedNesterov(SmallBlocks, Nesterov):
    pass


def model(updater, widths=(37, 23), seed=0):
    layers = []
    for width in widths:
        layers += [Dense(width, init="gaussian", w_std=0.1), Activation("tanh")]
    m = Sequential(layers + [Dense(4, init="gaussian", w_std=0.1)], input_shape=(20,), seed=seed)
    m.compile(updater, "softmaxloss", ["accuracy"])
    return m


def state(m):
    """Every weight, bias, gradient and updater slot, copied."""
    out = {}
    for p in m.params:
        out[p.full_name] = p.data.copy()
        out[p.full_name + ":grad"] = p.grad.copy()
    for name, slots in m.updater.state_dict()["slots"].items():
        for key, value in slots.items():
            out[f"{name}:{key}"] = np.array(value)
    return out


@pytest.mark.parametrize("fused, unfused, kwargs", [
    (FusedSGD, UnfusedSGD, dict(lr=0.05, momentum=0.9, decay=0.004)),
    (FusedSGD, UnfusedSGD, dict(lr=0.05)),
    (FusedAdam, UnfusedAdam, dict(lr=0.01, decay=0.001)),
    (FusedNesterov, UnfusedNesterov, dict(lr=0.05, momentum=0.9)),
], ids=["sgd-momentum", "sgd", "adam", "nesterov"])
def test_fused_steps_give_the_unfused_values(fused, unfused, kwargs):
    x, y = toy_data()
    a, b = model(fused(**kwargs)), model(unfused(**kwargs))
    assert a.updater.takes_deferred and not b.updater.takes_deferred
    for start in range(0, 160, 32):
        a.train_on_batch(x[start:start + 32], y[start:start + 32])
        b.train_on_batch(x[start:start + 32], y[start:start + 32])
    got, want = state(a), state(b)
    assert got.keys() == want.keys()
    for key in want:  # float32 rounding apart; a misplaced block or rate is far off
        scale = float(np.abs(want[key]).max())
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-5 * scale, err_msg=key)
        assert scale > 0, key


def test_the_dense_weight_gradient_is_deferred_in_fit_and_computed_when_read():
    x, y = toy_data()
    m = model(SGD(lr=0.05, momentum=0.9))
    m.train_on_batch(x[:32], y[:32])
    weight, bias = m.layers[1].params
    assert isinstance(weight.deferred, DeferredGrad) and bias.deferred is None
    # The gradient as a hand-driven ComputeGradient writes it, from the same batch.
    by_hand = model(SGD(lr=0.05, momentum=0.9))
    by_hand.train_on_batch(x[:32], y[:32])
    layer = by_hand.layers[1]
    layer.ComputeGradient()  # not inside fit: computed now, not deferred
    assert layer.params[0].deferred is None
    np.testing.assert_array_equal(weight.grad, layer.params[0].grad)
    assert weight.deferred is None  # read once: now it is an array


def test_a_forward_pass_discards_a_deferred_gradient_and_a_backward_pass_brings_it_back():
    x, y = toy_data()
    m = model(SGD(lr=0.05, momentum=0.9))
    m.train_on_batch(x[:32], y[:32])
    weight, bias = m.layers[1].params
    m.evaluate(x[32:64], y[32:64])  # overwrites the inputs the gradient was described by
    assert weight.grad is None  # not a stale array
    assert bias.grad is not None
    with pytest.raises(RuntimeError, match="has no gradient: run ComputeGradient before Update"):
        m.updater.Update(2, m.layers[1])
    m.train_on_batch(x[:32], y[:32])
    assert weight.grad is not None and np.isfinite(weight.grad).all()


def test_clipping_and_custom_rules_take_whole_gradients():
    assert SGD(momentum=0.9).takes_deferred
    assert not SGD(clip_norm=1.0).takes_deferred
    assert not SGD(clip_value=1.0).takes_deferred

    class Custom(SGD):
        def _apply(self, w, g, lr, wd, state):
            w -= lr * g
            return True
    assert not Custom().takes_deferred
    x, y = toy_data()
    m = model(SGD(lr=0.05, clip_norm=0.5))
    m.train_on_batch(x[:32], y[:32])
    assert all(p.deferred is None for p in m.params)


def test_the_bound_proves_finite_only_what_is_finite():
    def rows(lo, hi, out):
        raise AssertionError("not called")
    limit = float(np.finfo(np.float32).max)
    assert DeferredGrad(rows, 1e30, 1).surely_finite(np.dtype(np.float32))
    assert not DeferredGrad(rows, limit, 1).surely_finite(np.dtype(np.float32))
    assert not DeferredGrad(rows, float("nan"), 1).surely_finite(np.dtype(np.float32))
    assert DeferredGrad(rows, limit, 1).surely_finite(np.dtype(np.float64))


def regression(targets):
    """One Dense(1) under Caffe's Euclidean loss, its first input column 1e36 with a zero
    weight (the output stays small), so its weight gradient's first element is
    ``1e36 * sum(dy)``: the bound, ``4 * max|dy| * 1e36``, cannot prove it finite."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 20)).astype(np.float32)
    x[:, 0] = 1e36
    m = Sequential([Dense(1, init="gaussian", w_std=0.1)], input_shape=(20,), seed=0)
    m.compile(SGD(lr=1e-3, momentum=0.9), "euclideanloss", [])
    m.build()
    weight, bias = m.layers[1].GetParams()
    weight[:, 0] = 0
    return m, x, np.asarray(targets, np.float32).reshape(4, 1)


def test_a_gradient_the_bound_cannot_prove_finite_is_computed_checked_and_applied():
    m, x, t = regression([400, -400, 400, -400])  # dy = +-100: the column's sum is small
    before = m.layers[1].params[0].data.copy()
    m.train_on_batch(x, t)
    weight = m.layers[1].params[0]
    assert weight.deferred is None  # computed whole for the check, then applied from p.grad
    assert np.isfinite(weight.data).all() and not np.array_equal(weight.data, before)
    # The same step unfused: the same values.
    u, x, t = regression([400, -400, 400, -400])
    u.compile(UnfusedSGD(lr=1e-3, momentum=0.9), "euclideanloss", [])
    u.train_on_batch(x, t)
    np.testing.assert_array_equal(weight.data, u.layers[1].params[0].data)


def test_a_gradient_that_overflows_is_refused_before_any_update():
    m, x, t = regression([400, 400, 400, 400])  # dy = -100 each: 1e36 * -400 is -inf in float32
    before = [p.data.copy() for p in m.params]
    with pytest.raises(NonFiniteLossError, match=r"^the gradient of dense\w*/weight is not finite"):
        m.train_on_batch(x, t)
    for p, b in zip(m.params, before):
        np.testing.assert_array_equal(p.data, b)
