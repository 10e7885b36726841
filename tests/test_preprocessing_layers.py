"""Rescaling and Normalization: gradient checks, a numpy reference, the dataset helpers and the
job data section they mirror, configs, checkpoints, ``nnkit show`` and ``nnkit eval`` of a
model trained from Python on raw MNIST pixels."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format
from gradcheck import Source, check_layer, run
from helpers import DATA, ROOT

import nnkit
from nnkit import datasets
from nnkit.cli import main
from nnkit.config import ConfigError, model_from_proto
from nnkit.config.restore import load_tree_model
from nnkit.layers import Normalization, Rescaling

IMAGES = (3, 2, 4, 5)
ROWS = (4, 6)
needs_mnist = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no MNIST in {DATA}")


def randn(shape, dtype=np.float64, seed=0, scale=1.0, shift=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(dtype)


# (mean, std) of each layout, for a per-example shape
def layouts(shape):
    rng = np.random.default_rng(5)
    per_feature = (rng.standard_normal(shape), rng.random(shape) + 0.5)
    out = {"scalar": (0.7, 2.5), "per feature": per_feature,
           "per feature, flat": (per_feature[0].reshape(-1), per_feature[1].reshape(-1)),
           "scalar mean, per-feature std": (-1.5, per_feature[1])}
    if len(shape) == 3:
        out["per channel"] = (rng.standard_normal(shape[0]), rng.random(shape[0]) + 0.5)
    return out


CASES = [(shape, name) for shape in (IMAGES, ROWS) for name in layouts(shape[1:])]


def broadcast(values, shape):
    """The documented layout of ``values`` against one example of ``shape``, in float64."""
    a = np.asarray(values, np.float64).reshape(-1)
    if a.size == 1:
        return a[0]
    if a.size == np.prod(shape):
        return a.reshape(shape)
    return a.reshape((-1,) + (1,) * (len(shape) - 1))  # per channel


# ----------------------------------------------------------------- gradient checks (float64)
@pytest.mark.parametrize("shape,layout", CASES)
def test_normalization_gradient(shape, layout):
    mean, std = layouts(shape[1:])[layout]
    check_layer(Normalization(mean, std), randn(shape, seed=1, scale=3.0, shift=1.0))


@pytest.mark.parametrize("scale,offset", [(1 / 255, 0.0), (-2.5, 1.0), (1 / 127.5, -1.0)])
@pytest.mark.parametrize("shape", [IMAGES, ROWS], ids=["images", "rows"])
def test_rescaling_gradient(shape, scale, offset):
    check_layer(Rescaling(scale, offset), randn(shape, seed=2, scale=100.0))


# ----------------------------------------------------------------- forward and backward vs numpy
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,layout", CASES)
def test_normalization_matches_the_formula(shape, layout, dtype):
    mean, std = layouts(shape[1:])[layout]
    x = randn(shape, dtype, seed=3, scale=50.0, shift=100.0)
    dy = randn(shape, dtype, seed=4)
    layer = Normalization(mean, std)
    y, dx = run(layer, x, dy)
    m, s = broadcast(mean, shape[1:]), broadcast(std, shape[1:])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert y.dtype == dx.dtype == dtype and y.shape == dx.shape == shape
    np.testing.assert_allclose(y, (x.astype(np.float64) - m) / s, **tol)
    np.testing.assert_allclose(dx, dy.astype(np.float64) / s, **tol)
    assert not np.shares_memory(y, x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rescaling_matches_the_keras_formula(dtype):
    x = np.arange(256, dtype=dtype).reshape(4, 1, 8, 8)
    y, dx = run(Rescaling(1 / 127.5, offset=-1.0), x, np.ones_like(x))
    assert y.dtype == dtype and (y.min(), y.max()) == (-1.0, 1.0)  # Keras: pixels to [-1, 1]
    np.testing.assert_allclose(y, x.astype(np.float64) / 127.5 - 1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, np.full(x.shape, 1 / 127.5), rtol=1e-6)
    y, _ = run(Rescaling(1 / 255), x)
    np.testing.assert_array_equal(y, datasets.scale(x, 1 / 255, dtype))  # the dataset helper's values


def test_normalization_is_the_dataset_helpers_and_the_job_data_section():
    x = np.random.default_rng(0).integers(0, 256, (20, 3, 6, 5)).astype(np.float32)
    mean, std = datasets.channel_stats(x)  # per channel
    np.testing.assert_allclose(run(Normalization(mean, std), x)[0], datasets.standardize(x, mean, std),
                               rtol=1e-6, atol=1e-6)
    image = datasets.mean_image(x)  # a job's data { mean_image: true scale: s }
    s = 0.00390625
    np.testing.assert_allclose(run(Normalization(image, 1 / s), x)[0], datasets.normalize(x, image, s),
                               rtol=1e-6, atol=1e-6)
    rows = x.reshape(len(x), -1)  # a (3, 6, 5) mean image fits rows of 90 features: counted, not shaped
    np.testing.assert_allclose(run(Normalization(image, 2.0), rows)[0],
                               (rows - image.reshape(-1)) / 2, rtol=1e-6, atol=1e-6)


def test_nothing_is_trained_and_the_buffers_are_reused():
    src = Source(randn(IMAGES, np.float32))
    for layer in (Normalization([1.0, 2.0], [3.0, 4.0]), Rescaling(0.5, 1.0)):
        first = layer.ComputeFeature(src)
        values = first.copy()
        again = layer.ComputeFeature(src)
        assert again is first and np.array_equal(again, values)  # one buffer per shape
        assert layer.params == [] and layer.state == {} and layer.param_count() == 0


# ----------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("make,problem", [
    (lambda: Rescaling(0), "scale must not be 0"),
    (lambda: Rescaling(float("nan")), "scale must be finite"),
    (lambda: Rescaling(1.0, offset=float("inf")), "offset must be finite"),
    (lambda: Rescaling("x"), "scale must be a number"),
    (lambda: Normalization([0.0, 1.0], [1.0, 0.0]), r"std must be > 0 everywhere, got 0.0 at index 1"),
    (lambda: Normalization(0.0, -1.0), "std must be > 0"),
    (lambda: Normalization([0.0, np.nan], 1.0), "mean must be finite, got nan at index 1"),
    (lambda: Normalization([], 1.0), "mean is empty"),
    (lambda: Normalization({"a": 1}, 1.0), "mean must be a number or an array"),
])
def test_bad_arguments_name_the_layer(make, problem):
    with pytest.raises((TypeError, ValueError), match=problem) as info:
        make()
    assert str(info.value).startswith(("Rescaling 'rescaling': ", "Normalization 'normalization': "))


def test_values_that_fit_no_layout_are_refused_at_build_naming_the_shapes():
    model = nnkit.Sequential([Normalization([1.0, 2.0, 3.0], 1.0), nnkit.Dense(2)], input_shape=(2, 4, 4))
    # A LayerShapeError (a ValueError): the model names the layer and its input, then the reason.
    with pytest.raises(ValueError, match=r"layer 1, Normalization 'normalization_1', does not fit its "
                       r"input of shape \(batch, 2, 4, 4\): mean has 3 values, which fit no layout of the input \(batch, 2, 4, 4\): expected 1, one per channel "
                       r"\(2\) or one per feature \(32\)"):
        model.build()


# ----------------------------------------------------------------- configs
CONF = """
model {
  input_shape: [2, 3, 3]
  layer { rescaling { scale: 0.5 offset: -1 } }
  layer { name: "norm" normalization { mean: [0.25, -0.5] std: 2 } }
  layer { dense { output_dim: 3 } }
}
"""


def test_a_config_names_them_and_converts_both_ways():
    model = model_from_proto(CONF)
    rescale, norm = model.layers[:2]
    assert isinstance(rescale, Rescaling) and (rescale.scale, rescale.offset) == (0.5, -1.0)
    assert isinstance(norm, Normalization) and norm.get_config() == {"mean": [0.25, -0.5], "std": 2.0,
                                                                     "name": "norm"}
    text = text_format.MessageToString(model.to_proto())
    assert "rescaling {\n      scale: 0.5\n      offset: -1.0\n    }" in text
    assert "normalization {\n      mean: 0.25\n      mean: -0.5\n      std: 2.0\n    }" in text
    again = model_from_proto(text)
    assert again.get_config() == model.get_config()
    # Values of a real mean image survive the text format exactly (float32 -> double -> text).
    image = np.random.default_rng(1).random((2, 3, 3)).astype(np.float32) * 255
    exact = nnkit.Sequential([Normalization(image, image + 1), nnkit.Dense(3)], input_shape=(2, 3, 3))
    back = model_from_proto(text_format.MessageToString(exact.to_proto())).layers[0]
    np.testing.assert_array_equal(back.mean, image.reshape(-1))
    np.testing.assert_array_equal(back.std, image.reshape(-1) + 1)


@pytest.mark.parametrize("old,new,line,field,problem", [
    ("scale: 0.5 offset: -1", "offset: -1", 4, "model.layer[0].rescaling.scale", "missing value (required)"),
    ("scale: 0.5", "scale: 0", 4, "model.layer[0].rescaling.scale", "scale must not be 0"),
    ("std: 2", "", 5, "model.layer[1].normalization.std", "missing value (required)"),
    ("std: 2", "std: [2, -1]", 5, "model.layer[1].normalization.std", "std must be > 0 everywhere"),
    ("mean: [0.25, -0.5]", "mean: [1, 2, 3]", 5, "model.layer[1]", "mean has 3 values"),
    ("std: 2", "std: inf", 5, "model.layer[1].normalization.std[0]", "must be a finite number"),
])
def test_config_errors_name_line_and_field(old, new, line, field, problem):
    assert old in CONF
    with pytest.raises(ConfigError) as info:
        model_from_proto(CONF.replace(old, new), "job.conf")
    message = str(info.value)
    assert message.startswith(f"job.conf:{line}: {field}") and problem in message, message


# ----------------------------------------------------------------- checkpoints and show
def raw_model(seed=0):
    """An MLP on raw 0..255 values of (2, 3, 3) images: rescaled, then normalized per channel."""
    model = nnkit.Sequential([Rescaling(1 / 255), Normalization([0.4, 0.6], [0.25, 0.3], name="norm"),
                              nnkit.Dense(8), nnkit.Activation("relu"), nnkit.Dense(3)],
                             input_shape=(2, 3, 3), seed=seed)
    model.compile(nnkit.SGD(lr=0.1, momentum=0.9), "softmaxloss", ["accuracy"])
    return model


def raw_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = np.clip(rng.normal(80 * y[:, None, None, None], 30, (n, 2, 3, 3)), 0, 255).astype(np.float32)
    return x, y


def test_a_checkpoint_carries_the_preprocessing_and_evaluates_the_raw_data(tmp_path):
    x, y = raw_data()
    model = raw_model()
    model.fit(x, y, batch_size=16, epochs=10, verbose=0, run_dir=tmp_path / "run")
    trained = model.evaluate(x, y)
    path = tmp_path / "run" / "checkpoint.h5"
    loaded = nnkit.load(path)
    assert loaded.get_config() == model.get_config()
    assert loaded.evaluate(x, y) == trained
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    tree = nnkit.checkpoint.load_tree(path)  # the dict config alone rebuilds them too
    tree["model"]["proto"] = None
    np.testing.assert_array_equal(load_tree_model(tree, "dict-only").predict(x), model.predict(x))
    assert trained["accuracy"] > 0.9  # it learned from the raw values


def test_show_lists_the_preprocessing(tmp_path, capsys):
    path = tmp_path / "model.h5"
    raw_model().save(path)
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rescaling_1 (Rescaling)" in out and "norm (Normalization)" in out
    assert ("Preprocessing in the model (it takes the raw data): rescaling_1: x * 0.00392157; "
            "norm: (x - mean) / std, mean 2 values (0.4 .. 0.6), std 2 values (0.25 .. 0.3)") in out
    conf = tmp_path / "job.conf"  # a job config too
    conf.write_text(CONF)
    assert main(["show", str(conf)]) == 0
    assert ("Preprocessing in the model (it takes the raw data): rescaling_1: x * 0.5 - 1; "
            "norm: (x - mean) / std, mean 2 values (-0.5 .. 0.25), std 2") in capsys.readouterr().out


@needs_mnist
def test_nnkit_eval_of_a_python_model_trained_on_raw_mnist_gives_the_training_accuracy(tmp_path):
    images, labels = datasets.load_mnist(DATA, "train")
    x = images[:2000].reshape(2000, 1, 28, 28).astype(np.float32)  # raw pixels 0..255
    mean, std = datasets.channel_stats(x / 255)
    model = nnkit.Sequential([Rescaling(1 / 255), Normalization(mean, std), nnkit.Dense(32),
                              nnkit.Activation("relu"), nnkit.Dense(10)], input_shape=(1, 28, 28), seed=0)
    model.compile(nnkit.SGD(lr=0.05, momentum=0.9), "softmaxloss", ["accuracy"])
    model.fit(x, labels[:2000], batch_size=32, epochs=1, verbose=0, run_dir=tmp_path / "run")
    test_images, test_labels = datasets.load_mnist(DATA, "test")
    expected = model.evaluate(test_images.reshape(-1, 1, 28, 28).astype(np.float32), test_labels,
                              batch_size=500)
    assert expected["accuracy"] > 0.8
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "nnkit.cli", "eval", str(tmp_path / "run"),
                           "--dataset", "mnist", "--data-dir", str(DATA), "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["examples"] == 10000
    assert result["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert "the model does its own preprocessing (rescaling_1: x * 0.00392157; " in done.stderr
    assert "stores no preprocessing" not in done.stderr
