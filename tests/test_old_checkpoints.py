"""Checkpoints written before the parameter renaming (format 1, commit 5b55e9f) keep loading.

``tests/fixtures/make_v1_fixtures.py`` made the files with that commit: there Convolution2D
named its parameters ``w``/``b``; today every layer names them ``weight``/``bias``.
"""
from pathlib import Path

import numpy as np

import nnkit

FIXTURES = Path(__file__).parent / "fixtures"


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
    np.testing.assert_array_equal(model.predict(expected["x"]), expected["predict"])


def test_an_old_checkpoint_resumes_exactly():
    model = nnkit.load(FIXTURES / "v1_cnn_checkpoint.h5")
    rng = np.random.default_rng(0)  # the fixture's data, drawn the same way
    x = rng.standard_normal((24, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    expected = _expected("v1_cnn_after_one_more_epoch.npz")
    for name, value in _by_old_name(model).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


def test_old_per_layer_parameters_load_by_name():
    model = nnkit.load(FIXTURES / "v1_cnn_checkpoint.h5")
    expected = _expected("v1_cnn_expected.npz")
    for p in model.params:
        p.data[...] = 0
    step = nnkit.load_model_parameter(FIXTURES / "v1_cnn_params.h5", model.layers)
    assert step == 6
    for name, value in _by_old_name(model).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
