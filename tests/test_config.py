"""Job configs: schema <-> Python round trips, the example jobs, validation errors with their
location, overrides, checkpoints that carry the job, and the generated-code staleness check."""
import importlib
import importlib.util
import os
import signal
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

import nnkit
from nnkit import (LRN2D, SGD, Accuracy, Activation, AvgPooling2D, Convolution2D, Dense, Dropout,
                   ImageInput, MaxPooling2D, Normalization, Rescaling, Sequential, initializers,
                   schedules, updaters)
from nnkit.config import ConfigError, job_from_text, load_job, model_from_proto
from nnkit.config.restore import load_tree_model
from nnkit.config.text import _field_lines
from nnkit.datasets import DATASETS, SHAPES, load_cifar10, mean_image, subtract_mean
from nnkit.layers.base import conf_layer_types
from nnkit.layers.activation import ACTIVATIONS
from nnkit.layers.loss import LOSSES
from nnkit.layers.normalization import NORM_REGIONS
from nnkit.proto import (ActivationConf, JobConf, LayerConf, LRNConf, ModelConf, ParamConf, Schedule,
                         UpdaterConf)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no datasets in {DATA}")


def names(enum) -> list[str]:
    return [v.name for v in enum.DESCRIPTOR.values]


# ================================================================================= the schema
def test_enums_list_exactly_the_python_options():
    assert names(ActivationConf.Type) == list(ACTIVATIONS)
    assert names(ModelConf.Loss) == list(LOSSES)
    assert names(LRNConf.NormRegion) == list(NORM_REGIONS)
    assert names(ParamConf.Init) == list(initializers.KINDS)
    assert names(Schedule.Type) == list(schedules.SCHEDULES)
    assert names(UpdaterConf.Type) == [n.lower() for n in updaters.__all__ if n != "Updater"]
    # Every model layer class has a layer type (inputs included; loss/metrics are model fields).
    model_layers = {getattr(nnkit.layers, n) for n in nnkit.layers.__all__
                    if isinstance(getattr(nnkit.layers, n), type)
                    and n not in ("Layer", "Param", "Loss", "Accuracy", "LabelInput")}
    assert model_layers == set(conf_layer_types().values())
    # ... and each names a LayerConf field that exists.
    assert set(conf_layer_types()) <= {f.name for f in LayerConf.DESCRIPTOR.oneofs_by_name["type"].fields}
    assert set(SHAPES) == set(DATASETS)


def _generate_module():
    spec = importlib.util.spec_from_file_location("nnkit_proto_generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_module_is_current_and_the_check_catches_a_stale_one(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (protoc) is not installed: "
                        "pip install grpcio-tools to check nnkit_pb2.py against the schema")
    gen = _generate_module()
    ok, why = gen.is_current()
    assert ok, why
    # A schema edit must change what the check compares.
    edited = tmp_path / "nnkit.proto"
    edited.write_text(gen.PROTO.read_text().replace(
        "optional int64 seed = 2;", "optional int64 seed = 2;\n  optional int32 extra = 99;"))
    assert gen.schema_of(gen.run_protoc(tmp_path, edited)) != gen.schema_of(gen.MODULE)


# ============================================================================ round trips
def every_option_model(seed=3) -> Sequential:
    """A model using every layer type and non-default values of (nearly) every argument."""
    layers = [
        ImageInput(12, 10, 2, name="data", dtype="float64"),
        Rescaling(1 / 255, offset=-0.5),
        Normalization(mean=[0.1, -0.2], std=[2.0, 0.5], name="norm"),
        Convolution2D(4, (3, 2), stride=(1, 2), pad=(1, 0), init="gaussian", bias=True,
                      w_std=0.02, w_mean=0.001, w_lr=0.5, w_wd=2.0, b_value=0.1, b_lr=2.0, b_wd=0.0),
        MaxPooling2D(pool_size=(3, 2), stride=1, pad=(1, 0), ceil_mode=False),
        Activation("relu"),
        LRN2D(3, alpha=2e-4, beta=0.5, k=2.0, norm_region="within_channel"),
        AvgPooling2D(pool_size=2, stride=2),
        Convolution2D(3, 3, pad=1, bias=False, init="he_normal"),
        Dropout(0.25, name="drop"),
        Dense(7, init="glorot_uniform", b_low=-0.1, b_high=0.2),
        Activation("stanh"),
        Dense(5, w_low=-0.3, w_high=0.3, bias=False),
    ]
    model = Sequential(layers, name="every_option", seed=seed)
    model.compile(SGD(lr=0.05, momentum=0.8, decay=1e-4, lr_type="manual", step=(0, 10, 20),
                      step_lr=(0.05, 0.01, 0.001), clip_norm=5.0, clip_value=1.0),
                  "softmaxloss", ["accuracy", Accuracy(topk=3)])
    return model


def test_python_to_text_to_python_same_config_and_initial_weights():
    model = every_option_model()
    text = text_format.MessageToString(model.to_proto())
    again = model_from_proto(text)
    assert again.get_config() == model.get_config()  # before building...
    model.build()
    again.build()
    assert again.get_config() == model.get_config()  # ...and after (names, input shape)
    for a, b in zip(model.get_weights(), again.get_weights(), strict=True):
        assert a.dtype == b.dtype == np.float64
        np.testing.assert_array_equal(a, b)
    assert text_format.MessageToString(again.to_proto()) == text_format.MessageToString(model.to_proto())
    # A different seed gives different weights: the comparison above can fail.
    other = model_from_proto(text.replace("seed: 3", "seed: 4"))
    other.build()
    assert not np.array_equal(other.get_weights()[0], model.get_weights()[0])


@pytest.mark.parametrize("updater", [
    SGD(), SGD(lr=0.1, momentum=0.9, lr_type="step", gamma=0.5, change_freq=100),
    updaters.Nesterov(lr=0.02, lr_type="exponential", gamma=0.99),
    updaters.AdaGrad(epsilon=1e-6, lr_type="inverse", gamma=1e-4, power=0.75),
    updaters.RMSProp(rho=0.8, lr_type="inverse_t", change_freq=50.0, clip_value=0.5),
    updaters.AdaDelta(rho=0.9, epsilon=1e-5, lr_type="linear", final_lr=0.1, final_step=1000),
    updaters.Adam(lr=3e-4, beta1=0.8, beta2=0.99, decay=5e-4, lr_type="poly", final_step=500, power=2),
], ids=lambda u: f"{type(u).__name__}-{u.schedule.lr_type}")
def test_every_updater_and_schedule_round_trips(updater):
    model = Sequential([Dense(3)], input_shape=(4,), seed=0)
    model.compile(updater, "euclideanloss", [])
    again = model_from_proto(text_format.MessageToString(model.to_proto()))
    assert type(again.updater) is type(updater)
    assert again.updater.get_config() == updater.get_config()
    assert again.get_config() == model.get_config()


def test_defaults_stay_out_of_the_text_and_uncompiled_models_stay_uncompiled():
    model = Sequential([Dense(3), Activation("relu")], input_shape=(4,))
    text = text_format.MessageToString(model.to_proto())
    assert text == ('model {\n  input_shape: 4\n  layer {\n    dense {\n      output_dim: 3\n    }\n'
                    '  }\n  layer {\n    activation {\n      type: relu\n    }\n  }\n}\n')
    again = model_from_proto(text)
    assert again.loss_layer is None and again.updater is None
    assert again.get_config() == model.get_config()


def test_a_layer_the_schema_cannot_describe_is_refused_and_checkpoints_fall_back(tmp_path):
    class Custom(Dense):
        pass

    model = Sequential([Custom(2)], input_shape=(3,))
    model.compile()
    with pytest.raises(ValueError, match="no layer type for class"):
        model.to_proto()
    assert model.checkpoint_tree()["proto"] is None  # the dict config still describes it


def test_checkpoints_carry_the_job_and_load_without_code(tmp_path):
    model = every_option_model()
    model.build()
    path = tmp_path / "model.h5"
    model.save(path)
    tree = nnkit.checkpoint.load_tree(path)
    assert text_format.Parse(tree["model"]["proto"], JobConf()) == model.to_proto()
    loaded = nnkit.load(path)
    assert loaded.get_config() == model.get_config()
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # The proto alone is enough (the dict config is not consulted when a proto is present).
    del tree["model"]["config"]
    proto_only = load_tree_model(tree, "proto-only")
    assert proto_only.get_config() == model.get_config()


# ============================================================================ example jobs
def _example(name):
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


def _same_model(job_model: Sequential, layers: list, updater) -> None:
    reference = Sequential(layers, name=job_model.name, seed=0)
    reference.compile(updater, "softmaxloss", ["accuracy"])
    reference.build()
    assert job_model.get_config() == reference.get_config()
    for a, b in zip(job_model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@needs_data
def test_mnist_conf_is_exactly_the_mnist_example():
    example = _example("train_mnist")
    job = load_job(EXAMPLES / "mnist_mlp.conf", data_dir=str(DATA))
    updater = example.make_updater(Namespace(lr=0.01, momentum=0.9, lr_type="fixed"))  # its defaults
    _same_model(job.build_model(), example.build_mlp(0), updater)
    assert (job.batch_size("train"), job.batch_size("test")) == (64, 500)
    x, y = job.load_data("test")
    ref_x, ref_y = example.load(str(DATA), "test")
    np.testing.assert_array_equal(x.reshape(len(x), -1), ref_x)
    np.testing.assert_array_equal(y, ref_y.ravel())


@needs_data
def test_cifar_conf_is_exactly_the_cifar_example():
    example = _example("train_cifar10")
    job = load_job(EXAMPLES / "cifar10_cnn.conf", data_dir=str(DATA),
                   overrides=["data.train.limit=300", "data.test.limit=50"])
    _same_model(job.build_model(), example.build_cnn(0), example.make_updater(None))
    assert (job.batch_size("train"), job.batch_size("test")) == (100, 500)
    x, _ = job.load_data("test")
    train, test = load_cifar10(DATA, "train")[0][:300], load_cifar10(DATA, "test")[0][:50]
    np.testing.assert_array_equal(x, subtract_mean(test, mean_image(train)))  # the example's recipe


# ============================================================================ validation
BASE = """name: "t"
model {
  input_shape: [1, 28, 28]
  layer { convolution { nb_filter: 2 kernel: 5 } }
  layer { activation { type: relu } }
  layer { dense { output_dim: 10 } }
}
updater {
  lr_type: manual
  step: [0, 10]
  step_lr: [0.1, 0.01]
}
"""
DATA_BLOCK = f'data {{\n  dataset: "mnist"\n  dir: "{DATA}"\n  train {{ batch_size: 8 }}\n}}\n'


def test_the_base_config_is_valid():
    job_from_text(BASE + DATA_BLOCK, "t.conf")


@pytest.mark.parametrize("old, new, line, field, problem", [
    ("activation { type: relu }", "relu {}", "5:11", "", "unknown layer type or field 'relu'"),
    ("output_dim: 10", "output_dims: 10", "6:19", "", "unknown field 'output_dims' in DenseConf"),
    ("type: relu", "type: relux", "5:30", "", "unknown value 'relux'; valid: relu, sigmoid"),
    ("nb_filter: 2", "nb_filter 2", "4:35", "", 'Expected ":"'),
    ("output_dim: 10", "bias: false", "6", "model.layer[2].dense.output_dim", "missing value"),
    ("layer { activation { type: relu } }", "layer { name: 'a' }", "5", "model.layer[1]",
     "the layer has no type"),
    ("kernel: 5", "kernel: 31", "4", "model.layer[0]",
     r"Convolution2D 'convolution2d' does not fit its input of shape \(batch, 1, 28, 28\): kernel \(31, 31\)"),
    ("output_dim: 10", "output_dim: 12", "6", "model.layer[2]", "outputs 12 scores but mnist has 10"),
    ("step_lr: [0.1, 0.01]", "step_lr: [0.1, 0.01, 0.001]", "11", "updater.step_lr",
     "step has 2 entries but step_lr has 3"),
    ("lr_type: manual\n  step: [0, 10]\n  step_lr: [0.1, 0.01]", "lr_type: step\n  power: 2", "10",
     "updater.power", "does not use power"),
    ("layer { activation { type: relu } }",
     "layer { name: 'a' activation { type: relu } }\n  layer { name: 'a' dropout {} }",
     "6", "model.layer[2].name", "two layers are named 'a'"),
    ("layer { activation { type: relu } }", "layer { dropout {\n    ratio: 1.5 } }", "6",
     "model.layer[1].dropout.ratio", r"ratio must be in \[0, 1\)"),
    ("output_dim: 10", "output_dim: 10 b { init: gaussian }", "6", "model.layer[2].dense.b.init",
     "the bias takes no init"),
    (f'dir: "{DATA}"', 'dir: "/no/such/folder"', "15", "data.dir", "/no/such/folder does not exist"),
    ("train { batch_size: 8 }", 'train {\n    file: "/no/such/file" }', "17", "data.train.file[0]",
     "no such file: /no/such/file"),
    ('dataset: "mnist"', 'dataset: "mnits"', "14", "data.dataset", "unknown dataset 'mnits'"),
    ('dataset: "mnist"', 'dataset: "cifar10"', "3", "model.input_shape",
     r"takes inputs of shape \(1, 28, 28\) but cifar10 examples have shape \(3, 32, 32\)"),
])
def test_every_validation_error_names_file_line_and_field(old, new, line, field, problem):
    text = BASE + DATA_BLOCK
    assert old in text
    with pytest.raises(ConfigError, match=problem) as info:
        job_from_text(text.replace(old, new, 1), "t.conf", check_data=True)
    assert info.value.location == f"t.conf:{line}"
    assert info.value.field == field
    assert str(info.value).startswith(f"t.conf:{line}: {field + ': ' if field else ''}")


def test_a_missing_model_or_file_is_reported():
    with pytest.raises(ConfigError, match="the model has no layers") as info:
        job_from_text('name: "x"\n', "empty.conf")
    assert (info.value.location, info.value.field) == ("empty.conf", "model.layer")
    with pytest.raises(ConfigError, match="cannot read the job config"):
        load_job("/no/such/job.conf")


# =============================================================================== overrides
def test_overrides_set_fields_by_path_index_and_layer_name():
    text = BASE.replace("layer { dense {", "layer { name: 'fc' dense {")
    job = job_from_text(text, "t.conf", overrides=[
        "run.steps=5", "name=renamed", "updater.step=[0, 20]", "updater.step_lr=[0.5, 0.05]",
        "model.layer[fc].dense.w.std=0.5", "model.layer[0].convolution.kernel=[3, 5]",
        "model.layer[1].activation.type=tanh"], check_data=False)
    p = job.proto
    assert (p.run.steps, p.name, list(p.updater.step), list(p.updater.step_lr)) == (5, "renamed", [0, 20], [0.5, 0.05])
    assert p.model.layer[2].dense.w.std == 0.5 and list(p.model.layer[0].convolution.kernel) == [3, 5]
    assert ActivationConf.Type.Name(p.model.layer[1].activation.type) == "tanh"


@pytest.mark.parametrize("item, problem", [
    ("run.stepz=5", "RunConf has no field 'stepz'"),
    ("run.steps", "expected key=value"),
    ("run.steps=many", "Couldn't parse integer"),
    ("model.layer[7].dense.output_dim=3", r"layer\[7\] does not exist"),
    ("model.layer[0].dense.output_dim=3", "is a convolution layer, not dense"),
    ("model.layer[nope].dense.output_dim=3", "no layer is named 'nope'"),
    ("model.layer.dense.output_dim=3", "layer is repeated"),
    ("updater=3", "updater is a block"),
])
def test_bad_overrides_name_the_item(item, problem):
    with pytest.raises(ConfigError, match=problem) as info:
        job_from_text(BASE, "t.conf", overrides=[item], check_data=False)
    assert info.value.location == f"--set {item}"


def test_errors_in_overridden_values_point_at_the_override():
    with pytest.raises(ConfigError, match="output_dim must be positive") as info:
        job_from_text(BASE, "t.conf", overrides=["model.layer[2].dense.output_dim=-1"], check_data=False)
    assert info.value.location == "--set model.layer[2].dense.output_dim=-1"
    assert info.value.field == "model.layer[2].dense.output_dim"


def test_field_lines_follow_nesting_lists_and_comments():
    text = ('# comment with { braces\nmodel {\n  layer { dense { output_dim: 3 } }\n'
            '  layer {\n    name: "x # y"\n  }\n}\nupdater { step: [0,\n 5] }\n')
    lines = _field_lines(text)
    assert lines[(("model", 0), ("layer", 1), ("name", 0))] == 5
    assert lines[(("model", 0), ("layer", 0), ("dense", 0), ("output_dim", 0))] == 3
    assert lines[(("updater", 0), ("step", 1))] == 9


def test_job_text_round_trips_through_load_job(tmp_path):
    job = load_job(EXAMPLES / "cifar10_cnn.conf", check_data=False)
    path = tmp_path / "copy.conf"
    path.write_text(job.to_text())
    assert load_job(path, check_data=False).proto == job.proto


# ========================================================== values that make no sense
SANE = """name: "sane"
seed: 1
model {
  input_shape: [3, 32, 32]
  layer { convolution { nb_filter: 2 kernel: 3 w { std: 0.1 } b { lr_mult: 2 } } }
  layer { lrn { size: 3 alpha: 0.0001 beta: 0.75 k: 1 } }
  layer { dropout { ratio: 0.5 } }
  layer { dense { output_dim: 10 w { wd_mult: 1 } } }
}
updater {
  lr: 0.1
  momentum: 0.9
  decay: 0.001
  lr_type: manual
  step: [0, 100]
  step_lr: [0.1, 0.01]
}
data { dataset: "cifar10" mean_value: [1, 2, 3] scale: 0.5 }
"""


def test_the_sane_config_is_valid():
    job_from_text(SANE, "s.conf", check_data=False)


@pytest.mark.parametrize("old, new, line, field, problem", [
    ("alpha: 0.0001", "alpha: inf", 6, "model.layer[1].lrn.alpha", "must be a finite number, got inf"),
    ("alpha: 0.0001", "alpha: nan", 6, "model.layer[1].lrn.alpha", "must be a finite number, got nan"),
    ("alpha: 0.0001", "alpha: -1", 6, "model.layer[1].lrn.alpha", "alpha must be a finite number >= 0"),
    ("beta: 0.75", "beta: nan", 6, "model.layer[1].lrn.beta", "must be a finite number, got nan"),
    ("k: 1", "k: 0", 6, "model.layer[1].lrn.k", "k must be a finite number > 0, got 0.0"),
    ("k: 1", "k: -2", 6, "model.layer[1].lrn.k", "k must be a finite number > 0"),
    ("lr_mult: 2", "lr_mult: -2", 5, "model.layer[0].convolution.b.lr_mult", "b_lr must be a finite number >= 0"),
    ("wd_mult: 1", "wd_mult: -1", 8, "model.layer[3].dense.w.wd_mult", "w_wd must be a finite number >= 0"),
    ("std: 0.1", "std: -0.1", 5, "model.layer[0].convolution.w.std", "w_std must be >= 0"),
    ("std: 0.1", "std: nan", 5, "model.layer[0].convolution.w.std", "must be a finite number, got nan"),
    ("w { std: 0.1 }", "w { low: 1 high: 0 }", 5, "model.layer[0].convolution.w.high", "w_low = 1.0 must be <= w_high"),
    ("seed: 1", "seed: -1", 2, "seed", "must be >= 0, got -1"),
    ("lr: 0.1", "lr: nan", 11, "updater.lr", "must be a finite number, got nan"),
    ("lr: 0.1", "lr: -inf", 11, "updater.lr", "must be a finite number, got -inf"),
    ("momentum: 0.9", "momentum: 1", 12, "updater.momentum", r"momentum must satisfy 0.0 <= momentum < 1.0"),
    ("momentum: 0.9", "momentum: -0.5", 12, "updater.momentum", r"momentum must satisfy 0.0 <= momentum < 1.0"),
    ("decay: 0.001", "decay: -0.001", 13, "updater.decay", "decay must satisfy 0.0 <= decay"),
    ("step_lr: [0.1, 0.01]", "step_lr: [0.1,\n    -0.01]", 16, "updater.step_lr", r"step_lr\[1\] must be >= 0"),
    ("step_lr: [0.1, 0.01]", "step_lr: [0.1,\n    nan]", 17, "updater.step_lr[1]", "must be a finite number"),
    ("momentum: 0.9", "momentum: 0.9\n  rho: 0.5", 13, "updater.rho", "updater type sgd does not use rho"),
    ("ratio: 0.5", "ratio: 1", 7, "model.layer[2].dropout.ratio", r"ratio must be in \[0, 1\)"),
    ("ratio: 0.5", "ratio: -0.5", 7, "model.layer[2].dropout.ratio", r"ratio must be in \[0, 1\)"),
    ("scale: 0.5", "scale: inf", 18, "data.scale", "must be a finite number, got inf"),
    ("mean_value: [1, 2, 3]", "mean_value: [1, nan, 3]", 18, "data.mean_value[1]", "must be a finite number"),
    ("input_shape: [3, 32, 32]", "input_shape: [3, 0, 32]", 4, "model.input_shape", "must be >= 1"),
    ("kernel: 3", "kernel: 3 stride: [1, 2147483647]", 5, "model.layer[0].convolution.stride",
     r"stride \(1, 2147483647\) is larger than the padded input \(32, 32\)"),
    ("  layer { conv", '  layer { image_input { height: 32 width: 32 nb_channel: 3 dtype: "int32" } }\n'
     "  layer { conv", 5, "model.layer[0].image_input.dtype", "must be float32 or float64, got int32"),
])
def test_values_that_make_no_sense_fail_at_their_line_and_field(old, new, line, field, problem):
    assert old in SANE
    with pytest.raises(ConfigError, match=problem) as info:
        job_from_text(SANE.replace(old, new, 1), "s.conf", check_data=False)
    assert (info.value.location, info.value.field) == (f"s.conf:{line}", field)


def test_param_shapes_are_what_build_allocates():
    model = every_option_model()
    walk = model.shapes((2, 12, 10))
    expected = [layer.param_shapes(shape_in) for layer, (shape_in, _) in zip(model.layers, walk)]
    model.build()
    assert expected == [{p.name: p.data.shape for p in layer.params} for layer in model.layers]
    bn = nnkit.BatchNormalization()
    bn.build((4, 3, 3))
    assert bn.param_shapes((4, 3, 3)) == {p.name: p.data.shape for p in bn.params} == {
        "weight": (4,), "bias": (4,)}


def test_a_model_needing_more_memory_than_the_limit_is_refused_unallocated(monkeypatch):
    text = SANE.replace("nb_filter: 2", "nb_filter: 20000000")  # the dense weight: 1.8e11 values
    with pytest.raises(ConfigError, match=r"would need at least 2,.* GiB .*NNKIT_MAX_MODEL_BYTES") as info:
        job_from_text(text, "s.conf", check_data=False)
    assert (info.value.location, info.value.field) == ("s.conf:8", "model.layer[3]")  # the largest
    # Validation allocates nothing (2 TB here): with a limit above the need it passes.
    job_from_text(text, "s.conf", check_data=False, max_model_bytes=10**13)
    # The parameter count in the message is exact: what the built model has.
    monkeypatch.setenv("NNKIT_MAX_MODEL_BYTES", "1000")
    with pytest.raises(ConfigError, match="would need") as info:
        load_job(EXAMPLES / "cifar10_cnn.conf", check_data=False)
    monkeypatch.delenv("NNKIT_MAX_MODEL_BYTES")
    model = load_job(EXAMPLES / "cifar10_cnn.conf", check_data=False).build_model()
    assert f"({sum(p.data.size for p in model.params):,} parameters" in str(info.value)
    for bad in ("lots", "-5", "0", "1e999"):
        monkeypatch.setenv("NNKIT_MAX_MODEL_BYTES", bad)
        with pytest.raises(ConfigError, match="must be a number of bytes") as info:
            job_from_text(SANE, "s.conf", check_data=False)
        assert info.value.location == "$NNKIT_MAX_MODEL_BYTES"


def test_validate_returns_the_checked_model_and_build_model_makes_a_new_one_each_time():
    job = load_job(EXAMPLES / "mnist_mlp.conf", check_data=False)
    checked = job.validate(check_data=False)
    assert checked.loss_layer is not None and checked.updater is not None  # compiled
    assert not checked.built and all(p.data is None for p in checked.params)  # nothing allocated
    first, second = job.build_model(), job.build_model()
    assert first is not second and first.built and second.built
    assert all(np.array_equal(a, b) for a, b in zip(first.get_weights(), second.get_weights()))
    first.layers[1].params[0].data[...] = 0  # nothing is shared, nothing is kept by the job
    assert job.build_model().get_weights()[0].any()


def test_build_model_validates_with_the_jobs_memory_limit():
    text = SANE.replace("nb_filter: 2", "nb_filter: 20000000")  # 2 TB, never allocated here
    job = job_from_text(text, "s.conf", check_data=False, max_model_bytes=10**13)
    assert not job.build_model(build=False).built  # the limit given to job_from_text holds
    job.max_model_bytes = None
    with pytest.raises(ConfigError, match="would need"):
        job.build_model(build=False)


def test_a_stored_job_too_large_is_refused_before_its_model_is_built(monkeypatch):
    model = Sequential([Dense(3), Dense(2)], input_shape=(4,))
    text = text_format.MessageToString(model.to_proto())
    monkeypatch.setenv("NNKIT_MAX_MODEL_BYTES", "100")  # the model: 23 parameters, 2 copies
    with pytest.raises(ConfigError, match=r"\(23 parameters") as info:
        model_from_proto(text, "ckpt.h5 (stored job)")
    assert info.value.location.startswith("ckpt.h5 (stored job):")
    assert model_from_proto(text, max_model_bytes=10**6).layers[0].output_dim == 3


# ================================================================= files that are not configs
@pytest.fixture
def time_bound():
    """Fails the test instead of hanging it (reading a FIFO blocked forever before)."""
    def expire(signum, frame):
        raise TimeoutError("blocked for 10 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_files_that_are_not_regular_or_too_large_or_not_utf8_are_refused(tmp_path, time_bound):
    fifo = tmp_path / "job.conf"
    os.mkfifo(fifo)
    cases = [(fifo, "it is a FIFO \\(named pipe\\), not a regular file"),
             ("/dev/zero", "it is a character device, not a regular file"),
             (tmp_path, "it is a directory, not a regular file"),
             (tmp_path / "missing.conf", "cannot read the job config: No such file or directory")]
    big = tmp_path / "big.conf"
    with open(big, "wb") as f:
        f.truncate(16 * 2**20 + 1)  # sparse: no time or disk spent
    cases.append((big, "larger than 16777216 bytes"))
    for path, problem in cases:
        with pytest.raises(ConfigError, match=problem) as info:
            load_job(path, check_data=False)
        assert info.value.location == str(path)
    latin1 = tmp_path / "latin1.conf"
    latin1.write_bytes(b'# ok\nname: "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"not UTF-8 text: byte 0xe9 at byte offset 15") as info:
        load_job(latin1, check_data=False)
    assert info.value.location == f"{latin1}:2"
    with pytest.raises(ConfigError, match=r"<proto>:1: not UTF-8 text: byte 0xff at byte offset 6"):
        model_from_proto(b'name: \xff"\n')
    bom = tmp_path / "bom.conf"
    bom.write_bytes(b"\xef\xbb\xbf" + (EXAMPLES / "mnist_mlp.conf").read_bytes())
    assert load_job(bom, check_data=False).name == "mnist_mlp"  # an editor's byte-order mark
    bom.write_bytes(b"\xef\xbb\xbf# x\n\xff")  # offsets count the mark: they are the file's
    with pytest.raises(ConfigError, match=r"bom\.conf:2: not UTF-8 text: byte 0xff at byte offset 7"):
        load_job(bom, check_data=False)
