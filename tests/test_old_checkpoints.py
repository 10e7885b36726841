"""Checkpoints written before the parameter renaming (format 1, commit 5b55e9f) keep loading.

``tests/fixtures/make_v1_fixtures.py`` made the files with that commit: there Convolution2D
named its parameters ``w``/``b``; today every layer names them ``weight``/``bias``.

Loading is exact: the weights come back bitwise. What the model computes from them is compared
within a float32 rounding tolerance, because the fixtures' predictions and resumed weights were
computed by that commit's matrix products: a product in another layout (``Dense`` computes
``y.T = W @ x.T`` since issue #14) sums in another order and moves the last bits (measured:
at most 1.5e-8 absolute). The resume check is shown to fail without the updater's state, and
exact resume is checked bitwise within today's code.
"""
from pathlib import Path

import numpy as np
import pytest

import nnkit

FIXTURES = Path(__file__).parent / "fixtures"
ROUNDING = {"rtol": 1e-5, "atol": 1e-6}  # another summation order; a lost momentum moves weights by >= 4.6e-3


def _expected(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name) as f:
        return {k: f[k] for k in f.files}


def _by_old_name(model: nnkit.Sequential) -> dict[str, np.ndarray]:
    old = {"weight": "w", "bias": "b", "w": "w", "b": "b"}  # conv names, before and after
    return {f"{p.owner.name}__{old[p.name] if 'convolution' in p.owner.name else p.name}": p.data
            for p in model.params}


def test_an_old_checkpoint_loads_with_the_same_weights_and_predictions():
    expected = _expected("v1_cnn_expected.npz")
    model = nnkit.load(FIXTURES / "v1_cnn_checkpoint.h5")
    for name, value in _by_old_name(model).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    np.testing.assert_allclose(model.predict(expected["x"]), expected["predict"], **ROUNDING)


def _one_more_epoch(model: nnkit.Sequential) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)  # the fixture's data, drawn the same way
    x = rng.standard_normal((24, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return _by_old_name(model)


def test_an_old_checkpoint_resumes_where_it_stopped():
    resumed = _one_more_epoch(nnkit.load(FIXTURES / "v1_cnn_checkpoint.h5"))
    expected = _expected("v1_cnn_after_one_more_epoch.npz")
    for name, value in resumed.items():
        np.testing.assert_allclose(value, expected[name], err_msg=name, **ROUNDING)


def test_the_resume_check_fails_without_the_updater_state():
    model = nnkit.load(FIXTURES / "v1_cnn_checkpoint.h5")
    model.updater.load_state_dict({"type": model.updater.state_dict()["type"]})  # momentum lost
    restarted = _one_more_epoch(model)
    expected = _expected("v1_cnn_after_one_more_epoch.npz")
    for name, value in restarted.items():
        with pytest.raises(AssertionError):
            np.testing.assert_allclose(value, expected[name], err_msg=name, **ROUNDING)


def test_an_old_checkpoint_resaved_today_resumes_bitwise_the_same(tmp_path):
    old = nnkit.load(FIXTURES / "v1_cnn_checkpoint.h5")
    old.save(tmp_path / "today.h5")
    from_old = _one_more_epoch(old)
    from_today = _one_more_epoch(nnkit.load(tmp_path / "today.h5"))
    for name, value in from_old.items():
        np.testing.assert_array_equal(from_today[name], value, err_msg=name)


def test_old_per_layer_parameters_load_by_name():
    model = nnkit.load(FIXTURES / "v1_cnn_checkpoint.h5")
    expected = _expected("v1_cnn_expected.npz")
    for p in model.params:
        p.data[...] = 0
    step = nnkit.load_model_parameter(FIXTURES / "v1_cnn_params.h5", model.layers)
    assert step == 6
    for name, value in _by_old_name(model).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
