"""BatchNormalization end to end: job config, Python config, checkpoints, per-layer files, process runs."""
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

import nnkit
from nnkit import SGD, Activation, BatchNormalization, Convolution2D, Dense, Sequential
from test_model import toy_data

JOB = """
name: "bn"
seed: 3
model {
  input_shape: [20]
  layer { dense { output_dim: 16 } }
  layer { name: "norm" batch_norm { momentum: 0.9 epsilon: 0.01 } }
  layer { activation { type: relu } }
  layer { dense { output_dim: 4 } }
}
updater { type: sgd lr: 0.1 momentum: 0.9 }
"""


def trained(steps: int = 6) -> Sequential:
    x, y = toy_data(96)
    model = nnkit.model_from_proto(JOB)
    model.fit(x, y, batch_size=16, steps=steps, verbose=0)
    return model


def test_a_job_config_names_it_and_round_trips():
    model = nnkit.model_from_proto(JOB)
    norm = model.get_layer("norm")
    assert isinstance(norm, BatchNormalization)
    assert (norm.momentum, norm.epsilon) == (0.9, 0.01)
    again = nnkit.model_from_proto(text_format.MessageToString(model.to_proto()))
    assert again.to_proto() == model.to_proto()
    defaults = Sequential([Dense(3), BatchNormalization()], input_shape=(5,))
    assert "batch_norm {\n    }" in text_format.MessageToString(defaults.to_proto())  # defaults stay unset


def test_the_python_config_round_trips_and_the_layer_trains_its_state():
    model = trained()
    norm = model.get_layer("norm")
    assert not np.allclose(norm.state["moving_mean"], 0)  # training moved the statistics
    rebuilt = Sequential.from_config(model.get_config())
    assert isinstance(rebuilt.layers[2], BatchNormalization)


def test_checkpoints_keep_the_running_statistics_and_predict_the_same(tmp_path: Path):
    model = trained()
    x, _ = toy_data(10)
    model.save(tmp_path / "bn.h5")
    loaded = nnkit.load(tmp_path / "bn.h5")
    for name, value in model.state_arrays().items():
        np.testing.assert_array_equal(loaded.state_arrays()[name], value, err_msg=name)
    assert set(model.state_arrays()) == {"norm/moving_mean", "norm/moving_variance"}
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))  # eval mode: the moving stats


def test_per_layer_parameter_files_carry_the_state(tmp_path: Path):
    model = trained()
    nnkit.save_model_parameter(6, tmp_path / "p.h5", model.layers)
    fresh = nnkit.model_from_proto(JOB)
    fresh.build()
    assert nnkit.load_model_parameter(tmp_path / "p.h5", fresh.layers) == 6
    for name, value in model.state_arrays().items():
        np.testing.assert_array_equal(fresh.state_arrays()[name], value, err_msg=name)


def test_a_file_without_the_state_is_refused_naming_it(tmp_path: Path):
    model = trained()
    params_only = {"step": 1, "params": {p.full_name: p.data for p in model.params}}
    nnkit.checkpoint.save_tree(tmp_path / "p.h5", params_only, kind=nnkit.checkpoint.PARAMETERS_KIND)
    with pytest.raises(nnkit.checkpoint.CheckpointError, match="missing from the file: norm/moving_mean"):
        nnkit.load_model_parameter(tmp_path / "p.h5", model.layers)


def test_updaters_never_touch_the_state():
    model = trained()
    norm = model.get_layer("norm")
    before = {k: v.copy() for k, v in norm.state.items()}
    model.updater.Update(100, norm)  # a plain update step on the layer's params
    for k, v in norm.state.items():
        np.testing.assert_array_equal(v, before[k])


def test_a_process_run_starts_from_the_parents_state(tmp_path: Path):
    x, y = toy_data(96)
    model = trained()
    parent = model.get_layer("norm").state["moving_mean"].copy()
    run = model.fit(x, y, batch_size=16, steps=1, background="process", run_dir=tmp_path / "run")
    try:
        assert run.wait(timeout=120) == "finished", run.exception
    finally:
        run.shutdown()
        run.join(30)
    child = nnkit.load(tmp_path / "run" / "checkpoint.h5").get_layer("norm").state["moving_mean"]
    # One batch at momentum 0.9 moves the statistics a tenth of the way from where they were:
    # from the parent's they stay close; from fresh zeros they would be a tenth of a batch mean.
    assert np.linalg.norm(child - parent) < 0.5 * np.linalg.norm(parent)


def test_images_train_through_a_conv_net_with_batch_norm():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    model = Sequential([Convolution2D(4, 3), BatchNormalization(), Activation("relu"), Dense(3)],
                       input_shape=(1, 6, 6), seed=0)
    model.compile(SGD(lr=0.1, momentum=0.9), "softmaxloss")
    first = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history["loss"][0]
    last = model.fit(x, y, batch_size=8, epochs=20, verbose=0).history["loss"][-1]
    assert last < first
