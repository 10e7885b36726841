"""Updaters: each rule against a plain numpy implementation, clipping, lr override, state."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from nnkit.initializers import InitSpec
from nnkit.layers.base import Param
from nnkit.schedules import make_schedule
from nnkit.updaters import SGD, AdaDelta, AdaGrad, Adam, Nesterov, RMSProp, Updater

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-6, atol=1e-7), np.float64: dict(rtol=1e-13, atol=1e-15)}


class Owner:
    """A stand-in for a layer: a name and a list of params."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.params: list[Param] = []


def make_layer(name: str = "dense", dtype=np.float32, seed: int = 0,
               mults=((2.0, 0.5), (1.5, 0.0))) -> Owner:
    """A fake layer with a (3, 4) weight and a (4,) bias with lr/wd multipliers != 1."""
    rng = np.random.default_rng(seed)
    owner = Owner(name)
    for (pname, shape), (lr_mult, wd_mult) in zip((("weight", (3, 4)), ("bias", (4,))), mults):
        p = Param(owner, pname, InitSpec("constant"), lr_mult=lr_mult, wd_mult=wd_mult)
        p.data = rng.standard_normal(shape).astype(dtype)
        p.grad = np.zeros_like(p.data)
        owner.params.append(p)
    return owner


def set_grads(layer: Owner, step: int, scale: float = 1.0) -> None:
    """Deterministic gradients for ``step``, different at every step."""
    rng = np.random.default_rng(1000 + step)
    for p in layer.params:
        p.grad[...] = scale * rng.standard_normal(p.data.shape)


# ----------------------------------------------------------------- numpy references
def reference(kind: str, hp: dict, w, g, slots: dict, lr: float, wd: float, t: int):
    """One step of rule ``kind``, straight from its formula (``slots`` entries are replaced)."""
    g = g + wd * w
    if kind == "sgd":
        return w - lr * g
    if kind == "momentum":
        slots["v"] = hp["momentum"] * slots.get("v", 0 * w) + lr * g
        return w - slots["v"]
    if kind == "nesterov":
        mu, v_prev = hp["momentum"], slots.get("v", 0 * w)
        slots["v"] = mu * v_prev + lr * g
        return w - ((1 + mu) * slots["v"] - mu * v_prev)
    if kind == "adagrad":
        slots["h"] = slots.get("h", 0 * w) + g ** 2
        return w - lr * g / (np.sqrt(slots["h"]) + hp["epsilon"])
    if kind == "rmsprop":
        rho = hp["rho"]
        slots["h"] = rho * slots.get("h", 0 * w) + (1 - rho) * g ** 2
        return w - lr * g / (np.sqrt(slots["h"]) + hp["epsilon"])
    if kind == "adadelta":
        rho, eps = hp["rho"], hp["epsilon"]
        slots["h"] = rho * slots.get("h", 0 * w) + (1 - rho) * g ** 2
        u = slots.get("u", 0 * w)
        d = np.sqrt(u + eps) / np.sqrt(slots["h"] + eps) * g
        slots["u"] = rho * u + (1 - rho) * d ** 2
        return w - lr * d
    if kind == "adam":
        b1, b2, eps = hp["beta1"], hp["beta2"], hp["epsilon"]
        slots["m"] = b1 * slots.get("m", 0 * w) + (1 - b1) * g
        slots["v"] = b2 * slots.get("v", 0 * w) + (1 - b2) * g ** 2
        return w - lr * (slots["m"] / (1 - b1 ** t)) / (np.sqrt(slots["v"] / (1 - b2 ** t)) + eps)
    raise AssertionError(kind)


# (reference kind, updater class, its own hyperparameters); lr 0.1 except AdaDelta's 1.0
RULES = [
    ("sgd", SGD, {}),
    ("momentum", SGD, {"momentum": 0.9}),
    ("nesterov", Nesterov, {"momentum": 0.8}),
    ("adagrad", AdaGrad, {"epsilon": 1e-7}),
    ("rmsprop", RMSProp, {"rho": 0.8, "epsilon": 1e-6}),
    ("adadelta", AdaDelta, {"rho": 0.9, "epsilon": 1e-5}),
    ("adam", Adam, {"beta1": 0.8, "beta2": 0.99, "epsilon": 1e-7}),
]
RULE_IDS = [r[0] for r in RULES]
SCHEDULE = dict(lr_type="step", gamma=0.5, change_freq=2)  # changes at steps 2 and 4


def make_updater(cls, hp: dict, **extra) -> Updater:
    lr = 1.0 if cls is AdaDelta else 0.1
    return cls(lr=lr, decay=0.01, **SCHEDULE, **hp, **extra)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind, cls, hp", RULES, ids=RULE_IDS)
def test_rule_matches_numpy(kind, cls, hp, dtype) -> None:
    layer = make_layer(dtype=dtype)
    upd = make_updater(cls, hp)
    sched = make_schedule(upd.base_lr, **SCHEDULE)
    ref_w = [p.data.copy() for p in layer.params]
    ref_slots = [{} for _ in layer.params]
    for step in range(5):
        set_grads(layer, step)
        grads_before = [p.grad.copy() for p in layer.params]
        upd.Update(step, layer)
        for i, p in enumerate(layer.params):
            ref_w[i] = reference(kind, hp, ref_w[i], p.grad, ref_slots[i],
                                 sched(step) * p.lr_mult, 0.01 * p.wd_mult, step + 1)
            assert p.data.dtype == dtype
            np.testing.assert_allclose(p.data, ref_w[i], **TOL[dtype], err_msg=f"step {step}")
            np.testing.assert_array_equal(p.grad, grads_before[i])  # grads are not modified
    assert upd.lr == sched(4)


def test_plain_sgd_keeps_no_slot() -> None:
    layer = make_layer()
    upd = SGD(lr=0.1)
    set_grads(layer, 0)
    upd.Update(0, layer)
    assert upd.state_dict()["slots"] == {"dense/weight": {}, "dense/bias": {}}


def test_adam_counts_updates_per_param() -> None:
    # A layer updated less often has its own t in the bias correction.
    a, b = make_layer("a", np.float64), make_layer("b", np.float64, seed=1)
    upd = Adam(lr=0.01)
    hp = {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}
    ref_b = [p.data.copy() for p in b.params]
    for step in range(3):
        set_grads(a, step)
        upd.Update(step, a)
    set_grads(b, 7)
    upd.Update(3, b)
    for i, p in enumerate(b.params):
        expected = reference("adam", hp, ref_b[i], p.grad, {}, 0.01 * p.lr_mult, 0.0, t=1)
        np.testing.assert_allclose(p.data, expected, rtol=1e-13)
    assert upd.state_dict()["counts"] == {"a/weight": 3, "a/bias": 3, "b/weight": 1, "b/bias": 1}


def test_layers_with_the_same_name_keep_separate_slots() -> None:
    # Slots are keyed by the Param object, so a hand-built list with clashing names still works.
    l1, l2 = make_layer("dense", np.float64, seed=0), make_layer("dense", np.float64, seed=1)
    ref = make_layer("dense", np.float64, seed=1)
    upd, upd_ref = SGD(lr=0.1, momentum=0.9), SGD(lr=0.1, momentum=0.9)
    for step in range(3):
        set_grads(l1, step, scale=10.0)
        set_grads(l2, step)
        set_grads(ref, step)
        upd.Update(step, l1)
        upd.Update(step, l2)
        upd_ref.Update(step, ref)
    for p, q in zip(l2.params, ref.params):
        np.testing.assert_array_equal(p.data, q.data)
    with pytest.raises(ValueError, match="two updated params are named 'dense/weight'"):
        upd.state_dict()


# ----------------------------------------------------------------- clipping
def _sgd_reference(layer: Owner, before: list, lr: float, clip) -> list:
    return [w - lr * p.lr_mult * clip(p.grad.astype(np.float64))
            for w, p in zip(before, layer.params)]


def test_clip_value() -> None:
    layer = make_layer(dtype=np.float64)
    before = [p.data.copy() for p in layer.params]
    set_grads(layer, 0, scale=3.0)
    grads = [p.grad.copy() for p in layer.params]
    SGD(lr=0.1, clip_value=0.5).Update(0, layer)
    expected = _sgd_reference(layer, before, 0.1, lambda g: np.clip(g, -0.5, 0.5))
    for p, e, g in zip(layer.params, expected, grads):
        np.testing.assert_allclose(p.data, e, rtol=1e-14)
        np.testing.assert_array_equal(p.grad, g)
    assert any(np.abs(g).max() > 0.5 for g in grads)  # the clip did something


def test_clip_norm_rescales_only_large_gradients() -> None:
    layer = make_layer(dtype=np.float64)
    set_grads(layer, 0)
    layer.params[0].grad *= 10.0  # norm ~ 35 > 2
    layer.params[1].grad[...] = [0.5, -0.5, 0.5, 0.5]  # norm 1 < 2: untouched
    before = [p.data.copy() for p in layer.params]

    def clip(g):
        n = np.linalg.norm(g)
        return g * (2.0 / n) if n > 2.0 else g

    SGD(lr=0.1, clip_norm=2.0).Update(0, layer)
    for p, e in zip(layer.params, _sgd_reference(layer, before, 0.1, clip)):
        np.testing.assert_allclose(p.data, e, rtol=1e-14)
    assert np.linalg.norm(layer.params[0].grad) > 2.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_norm_then_value_before_weight_decay(dtype) -> None:
    layer = make_layer(dtype=dtype)
    set_grads(layer, 0, scale=5.0)
    before = [p.data.copy() for p in layer.params]

    def clip(g):
        n = np.linalg.norm(g)
        g = g * (4.0 / n) if n > 4.0 else g
        return np.clip(g, -0.7, 0.7)

    SGD(lr=0.1, decay=0.1, clip_norm=4.0, clip_value=0.7).Update(0, layer)
    for p, w in zip(layer.params, before):
        # Weight decay is added after clipping: it is not clipped away.
        expected = w - 0.1 * p.lr_mult * (clip(p.grad.astype(np.float64)) + 0.1 * p.wd_mult * w)
        np.testing.assert_allclose(p.data, expected, **TOL[dtype])


# ----------------------------------------------------------------- learning rate
def test_lr_override_and_clearing() -> None:
    layer = make_layer(dtype=np.float64)
    upd = SGD(lr=0.1, lr_type="step", gamma=0.5, change_freq=2)
    assert upd.lr == 0.1 and upd.base_lr == 0.1 and upd.lr_override is None
    set_grads(layer, 0)
    upd.Update(5, layer)
    assert upd.lr == 0.1 * 0.5 ** 2

    upd.lr = 0.3
    assert upd.lr == 0.3 and upd.lr_override == 0.3 and upd.base_lr == 0.1
    before = [p.data.copy() for p in layer.params]
    upd.Update(6, layer)
    for p, w in zip(layer.params, before):
        np.testing.assert_allclose(p.data, w - 0.3 * p.lr_mult * p.grad, rtol=1e-14)
    assert upd.lr == 0.3  # still overriding at a later step

    upd.lr = None
    assert upd.lr == 0.1 * 0.5 ** 3 and upd.lr_override is None
    before = [p.data.copy() for p in layer.params]
    upd.Update(6, layer)
    for p, w in zip(layer.params, before):
        np.testing.assert_allclose(p.data, w - 0.1 * 0.5 ** 3 * p.lr_mult * p.grad, rtol=1e-14)

    with pytest.raises(ValueError, match="lr must satisfy 0.0 <= lr"):
        upd.lr = -1.0
    with pytest.raises(TypeError, match="lr must be a number"):
        upd.lr = "fast"


def test_manual_schedule_example() -> None:
    upd = SGD(decay=0.004, momentum=0.9, lr_type="manual", step=(0, 60000, 65000),
              step_lr=(0.001, 0.0001, 0.00001))
    layer = make_layer()
    set_grads(layer, 0)
    assert upd.lr == 0.001
    upd.Update(60000, layer)
    assert upd.lr == 0.0001
    upd.Update(70000, layer)
    assert upd.lr == 0.00001


# ----------------------------------------------------------------- state
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind, cls, hp", RULES, ids=RULE_IDS)
def test_state_round_trip_is_bitwise(kind, cls, hp, dtype) -> None:
    straight, resumed = make_layer(dtype=dtype), make_layer(dtype=dtype)
    upd = make_updater(cls, hp, clip_value=1.5)
    first = make_updater(cls, hp, clip_value=1.5)
    for step in range(5):
        set_grads(straight, step, scale=2.0)
        upd.Update(step, straight)
    for step in range(3):
        set_grads(resumed, step, scale=2.0)
        first.Update(step, resumed)
    first.lr = 0.05  # an override is state too
    state = copy.deepcopy(first.state_dict())

    # A fresh updater, and fresh Param objects (as after loading a model): slots attach by name.
    fresh_layer = make_layer(dtype=dtype)
    for p, q in zip(fresh_layer.params, resumed.params):
        p.data[...] = q.data
    second = make_updater(cls, hp, clip_value=1.5)
    second.load_state_dict(state)
    assert second.lr_override == 0.05 and second.last_step == 2
    second.lr = None  # the straight run had no override
    for step in range(3, 5):
        set_grads(fresh_layer, step, scale=2.0)
        second.Update(step, fresh_layer)
    for p, q in zip(straight.params, fresh_layer.params):
        assert np.array_equal(p.data, q.data), p.full_name
    a, b = upd.state_dict(), second.state_dict()
    assert a["counts"] == b["counts"] == {"dense/weight": 5, "dense/bias": 5}
    for name in a["slots"]:
        for slot in a["slots"][name]:
            assert np.array_equal(a["slots"][name][slot], b["slots"][name][slot])


def test_state_dict_contents() -> None:
    layer = make_layer()
    upd = Adam(lr=0.01, lr_type="exponential", gamma=0.9)
    set_grads(layer, 0)
    upd.Update(4, layer)
    upd.lr = 0.02
    state = upd.state_dict()
    assert state["type"] == "Adam" and state["last_step"] == 4 and state["lr_override"] == 0.02
    assert state["schedule"] == {"lr_type": "exponential", "base_lr": 0.01, "gamma": 0.9,
                                 "change_freq": 1.0}
    assert state["counts"] == {"dense/weight": 1, "dense/bias": 1}
    m = state["slots"]["dense/weight"]["m"]
    assert m.shape == (3, 4) and m.dtype == np.float32
    m[...] = 123.0  # a copy: the live slot is untouched
    assert not np.any(upd.state_dict()["slots"]["dense/weight"]["m"] == 123.0)


def test_load_before_first_update_and_save_again() -> None:
    layer = make_layer()
    upd = SGD(lr=0.1, momentum=0.9)
    set_grads(layer, 0)
    upd.Update(0, layer)
    state = upd.state_dict()
    other = SGD(lr=0.1, momentum=0.9)
    other.load_state_dict(state)
    # Pending slots survive a save before any update.
    resaved = other.state_dict()
    np.testing.assert_array_equal(resaved["slots"]["dense/weight"]["momentum"],
                                  state["slots"]["dense/weight"]["momentum"])


def test_load_state_errors() -> None:
    layer = make_layer()
    upd = SGD(lr=0.1, momentum=0.9)
    set_grads(layer, 0)
    upd.Update(0, layer)
    state = upd.state_dict()
    with pytest.raises(ValueError, match="Adam: cannot load the state of a SGD updater"):
        Adam().load_state_dict(state)
    with pytest.raises(ValueError, match=r"has slots \['momentum'\], this updater uses \[\]"):
        SGD(lr=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="SGD: cannot load a schedule state of lr_type 'fixed'"):
        SGD(lr=0.1, momentum=0.9, lr_type="step").load_state_dict(state)

    # A slot whose shape does not fit the param is reported when it attaches.
    other = SGD(lr=0.1, momentum=0.9)
    before = [p.data.copy() for p in layer.params]
    bad = copy.deepcopy(state)
    bad["slots"]["dense/bias"]["momentum"] = np.zeros((3,), np.float32)
    other.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"slot 'momentum' of param 'dense/bias' has shape "
                                         r"\(3,\), but the param has shape \(4,\)"):
        other.Update(1, layer)
    # Nothing was updated, and the rejected slot is still there to be saved or fixed.
    np.testing.assert_array_equal(layer.params[0].data, before[0])
    assert other.state_dict()["slots"]["dense/bias"]["momentum"].shape == (3,)


def test_loading_without_schedule_keeps_the_current_one() -> None:
    upd = SGD(lr=0.1, momentum=0.9)
    state = upd.state_dict()
    del state["schedule"]
    other = SGD(lr=0.5, momentum=0.9, lr_type="inverse_t", change_freq=10)
    other.load_state_dict(state)
    assert other.base_lr == 0.5 and other.schedule.lr_type == "inverse_t"


# ----------------------------------------------------------------- config and errors
@pytest.mark.parametrize("kind, cls, hp", RULES, ids=RULE_IDS)
def test_get_config_rebuilds(kind, cls, hp) -> None:
    upd = make_updater(cls, hp, clip_norm=3.0)
    cfg = upd.get_config()
    assert cfg["lr_type"] == "step" and cfg["gamma"] == 0.5 and cfg["clip_norm"] == 3.0
    for key, value in hp.items():
        assert cfg[key] == value
    assert cls(**cfg).get_config() == cfg


def test_defaults_and_examples() -> None:
    assert SGD(lr=0.001, lr_type="step").get_config()["gamma"] == 0.997
    assert AdaDelta().base_lr == 1.0
    assert Adam().get_config()["beta2"] == 0.999
    assert SGD().get_config() == {
        "lr": 0.01, "lr_type": "fixed", "decay": 0.0, "momentum": 0.0, "step": (),
        "step_lr": (), "gamma": None, "change_freq": None, "power": None, "final_lr": None,
        "final_step": None, "clip_norm": None, "clip_value": None}


@pytest.mark.parametrize("make, error, message", [
    (lambda: SGD(momentum=1.0), ValueError, "SGD: momentum must satisfy 0.0 <= momentum < 1.0"),
    (lambda: Nesterov(momentum=-0.1), ValueError, "Nesterov: momentum must satisfy"),
    (lambda: SGD(decay=-1), ValueError, "SGD: decay must satisfy 0.0 <= decay"),
    (lambda: AdaGrad(epsilon=0), ValueError, "AdaGrad: epsilon must satisfy 0.0 < epsilon"),
    (lambda: RMSProp(rho=1.5), ValueError, "RMSProp: rho must satisfy"),
    (lambda: Adam(beta2=1.0), ValueError, "Adam: beta2 must satisfy"),
    (lambda: SGD(clip_norm=0), ValueError, "SGD: clip_norm must satisfy 0.0 < clip_norm"),
    (lambda: SGD(clip_value="big"), TypeError, "SGD: clip_value must be a number"),
    (lambda: SGD(lr=-0.1), ValueError, "SGD: lr must satisfy"),
    (lambda: SGD(lr_type="cosine"), ValueError, "SGD: unknown lr_type 'cosine'; valid ones: fixed"),
    (lambda: SGD(gamma=0.1), ValueError, "SGD: lr_type 'fixed' does not use gamma"),
    (lambda: SGD(lr_type="manual", step=(0, 5), step_lr=(0.1,)), ValueError, "step has 2 entries"),
])
def test_constructor_errors(make, error, message) -> None:
    with pytest.raises(error) as info:
        make()
    assert message in str(info.value)


def test_update_errors_name_the_param() -> None:
    upd = SGD(lr=0.1)
    layer = make_layer()
    layer.params[0].grad = None
    with pytest.raises(RuntimeError, match="SGD: param 'dense/weight' has no gradient"):
        upd.Update(0, layer)
    layer = make_layer()
    layer.params[1].grad = np.zeros(4, np.float64)
    with pytest.raises(ValueError, match=r"'dense/bias': gradient of shape \(4,\) and dtype "
                                         r"float64 does not match data of shape \(4,\) and "
                                         r"dtype float32"):
        upd.Update(0, layer)
    layer = make_layer()
    layer.params[0].data = np.asfortranarray(layer.params[0].data)
    with pytest.raises(ValueError, match="'dense/weight': data of shape .* is not C-contiguous"):
        upd.Update(0, layer)
    layer = make_layer()
    layer.params[0].data = None
    with pytest.raises(RuntimeError, match="'dense/weight' has no data"):
        upd.Update(0, layer)


def test_non_contiguous_gradient_is_read_correctly() -> None:
    layer = make_layer(dtype=np.float64)
    p = layer.params[0]
    g = np.arange(12.0).reshape(4, 3).T  # a transposed, non-contiguous view
    p.grad = g
    before = p.data.copy()
    layer.params = [p]
    SGD(lr=0.1).Update(0, layer)
    np.testing.assert_allclose(p.data, before - 0.2 * g, rtol=1e-14)


# ----------------------------------------------------------------- torch parity (float64)
# (updater, torch optimizer name, torch kwargs): fixed lr, where the two forms agree
# (torch's momentum form equals Caffe's only while lr is constant; its Nesterov differs).
TORCH_RULES = [
    (lambda: SGD(lr=0.1, decay=0.01, momentum=0.9), "SGD",
     dict(lr=0.1, weight_decay=0.01, momentum=0.9)),
    (lambda: AdaGrad(lr=0.1, decay=0.01, epsilon=1e-10), "Adagrad",
     dict(lr=0.1, weight_decay=0.01, eps=1e-10)),
    (lambda: RMSProp(lr=0.01, decay=0.01, rho=0.9), "RMSprop",
     dict(lr=0.01, weight_decay=0.01, alpha=0.9, eps=1e-8)),
    (lambda: AdaDelta(decay=0.01), "Adadelta", dict(lr=1.0, weight_decay=0.01, rho=0.95, eps=1e-6)),
    (lambda: Adam(lr=0.01, decay=0.01), "Adam",
     dict(lr=0.01, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)),
]


@pytest.mark.parametrize("make, name, kwargs", TORCH_RULES, ids=[r[1] for r in TORCH_RULES])
def test_torch_parity(make, name, kwargs) -> None:
    torch = pytest.importorskip("torch")
    layer = make_layer(dtype=np.float64, mults=((1.0, 1.0), (1.0, 1.0)))
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in layer.params]
    opt = getattr(torch.optim, name)(tparams, **kwargs)
    upd = make()
    for step in range(4):
        set_grads(layer, step)
        for p, t in zip(layer.params, tparams):
            t.grad = torch.from_numpy(p.grad.copy())
        upd.Update(step, layer)
        opt.step()
    for p, t in zip(layer.params, tparams):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------- the finiteness checks
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_finite_matches_numpy(dtype) -> None:
    from nnkit._kernels.update import all_finite
    rng = np.random.default_rng(7)
    big = np.finfo(dtype).max
    assert all_finite(np.empty(0, dtype))
    for n in (1, 2, 7, 8, 15, 16, 17, 63, 64, 65, 1001):  # around any vector width
        a = rng.standard_normal(n).astype(dtype)
        a[rng.integers(0, n)] = big  # finite: a dot product of this overflows, the check must not
        a[rng.integers(0, n)] = np.finfo(dtype).smallest_subnormal
        assert all_finite(a) is True
        for bad in (np.nan, np.inf, -np.inf):
            for where in {0, n // 2, n - 1}:
                b = a.copy()
                b[where] = bad
                assert all_finite(b) is bool(np.isfinite(b).all()) is False, (n, bad, where)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind, cls, hp", RULES, ids=RULE_IDS)
def test_update_says_whether_every_value_it_wrote_is_finite(kind, cls, hp, dtype) -> None:
    layer = make_layer(dtype=dtype)
    upd = make_updater(cls, hp)
    set_grads(layer, 0)
    assert upd.Update(1, layer) is True
    for where in ((0, 0), (2, 3)):  # a NaN gradient reaches the value written, wherever it is
        layer.params[0].grad[where] = np.nan
        assert upd.Update(2, layer) is False
        assert not np.isfinite(layer.params[0].data).all()
        assert np.isfinite(layer.params[1].data).all()  # the other param is still updated
        layer = make_layer(dtype=dtype)
        set_grads(layer, 0)
    huge = make_layer(dtype=dtype)
    for p in huge.params:
        p.data[...] = np.finfo(dtype).max
        p.grad[...] = -np.finfo(dtype).max
    assert make_updater(cls, hp).Update(1, huge) is bool(np.isfinite(huge.params[0].data).all()
                                                          and np.isfinite(huge.params[1].data).all())


def test_a_rule_that_does_not_say_is_read_after_its_update() -> None:
    class Halving(Updater):  # a user's rule: its _apply returns nothing
        def _apply(self, w, g, lr, wd, state):
            w *= 0.5
            w[-1] = np.inf if lr > 1 else w[-1]
    layer = make_layer()
    set_grads(layer, 0)
    assert Halving(lr=0.1).Update(1, layer) is True
    assert Halving(lr=2.0).Update(2, layer) is False


@pytest.mark.parametrize("kind, cls, hp", RULES, ids=RULE_IDS)
def test_a_large_param_updated_in_parts_matches_one_pass(kind, cls, hp) -> None:
    """A param of several parts' worth of values (``nnkit.parallel``) updates in parallel parts:
    bitwise what the kernel gives in one pass, slots and finiteness flag included."""
    from nnkit import parallel
    from nnkit._kernels import update as kernel
    size = 3 * parallel.MIN_PART_VALUES + 7
    layer = make_layer(mults=((1.0, 1.0), (1.0, 1.0)))
    rng = np.random.default_rng(4)
    for p in layer.params:
        p.data = rng.standard_normal(size).astype(np.float32)
        p.grad = rng.standard_normal(size).astype(np.float32)
    upd = make_updater(cls, hp)
    whole = copy.deepcopy(layer)
    slots = {p.name: {k: np.zeros(size, np.float32) for k in upd.slot_names} for p in whole.params}
    calls = []
    original = upd._apply

    def spy(w, g, lr, wd, state):
        calls.append(w.size)
        return original(w, g, lr, wd, state)

    upd._apply = spy  # an instance attribute: the class's rule still decides the split
    for step in range(3):
        assert upd.Update(step, layer) is True
        lr = upd.lr
        for p in whole.params:  # the same rule, one kernel call over the whole param
            args = [p.data, p.grad, *slots[p.name].values(), lr, 0.01]
            if kind == "sgd":
                kernel.sgd(*args)
            elif kind == "momentum":
                kernel.sgd_momentum(*args, hp["momentum"])
            elif kind == "nesterov":
                kernel.nesterov(*args, hp["momentum"])
            elif kind == "adagrad":
                kernel.adagrad(*args, hp["epsilon"])
            elif kind in ("rmsprop", "adadelta"):
                getattr(kernel, kind)(*args, hp["rho"], hp["epsilon"])
            else:
                kernel.adam(*args, hp["beta1"], hp["beta2"], hp["epsilon"],
                            1 - hp["beta1"] ** (step + 1), 1 - hp["beta2"] ** (step + 1))
    for p, q in zip(layer.params, whole.params):
        np.testing.assert_array_equal(p.data, q.data)
    if parallel.thread_count() > 1:
        assert max(calls) < size  # it did run in parts
    assert sum(calls) == 3 * 2 * size


def test_a_subclass_rule_sees_the_whole_param() -> None:
    class Normalized(SGD):  # a rule that needs the whole array: it must not be split
        def _apply(self, w, g, lr, wd, state):
            w -= lr * g / np.linalg.norm(g)
            return True
    from nnkit import parallel
    layer = make_layer(mults=((1.0, 1.0), (1.0, 1.0)))
    size = 3 * parallel.MIN_PART_VALUES
    for p in layer.params:
        p.data = np.zeros(size, np.float32)
        p.grad = np.ones(size, np.float32)
    Normalized(lr=1.0).Update(1, layer)
    np.testing.assert_allclose(layer.params[0].data, -1 / np.sqrt(size), rtol=1e-5)
