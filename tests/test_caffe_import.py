"""Caffe nets in (``nnkit import-caffe``, ``nnkit.config.from_caffe``).

The nets and solvers are written here (and in ``examples/caffe/``) in Caffe's prototxt
format; the reference formulas for the solvers and layers are Caffe's, as its sources
(BVLC/caffe ``src/caffe/solvers/*.cpp``, ``layers/pooling_layer.cpp``, ``lrn_layer.cpp``,
``include/caffe/filler.hpp``) compute them.
"""
from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import nnkit
from nnkit import cli
from nnkit.config import ConfigError, from_caffe
from nnkit.layers import Dense
from nnkit.proto import caffe_import_pb2 as caffe_pb

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "examples" / "caffe"
DATA = ROOT.parent / "shared" / "data"
LENET, LENET_SOLVER = FIXTURES / "lenet_like.prototxt", FIXTURES / "lenet_like_solver.prototxt"
CIFAR, CIFAR_SOLVER = FIXTURES / "cifar_quick_like.prototxt", FIXTURES / "cifar_quick_like_solver.prototxt"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (real MNIST/CIFAR) is missing")

# A small deploy-style net: an Input layer, no data source.
INPUT = """
name: "small"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 1 dim: 9 dim: 9 } } }
"""
IP = """
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 10 } }
"""
SOLVER = """
base_lr: 0.1
lr_policy: "fixed"
max_iter: 100
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def line_of(path: Path, needle: str, nth: int = 0) -> int:
    """The 1-based line of the nth line of ``path`` containing ``needle``."""
    hits = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if needle in line]
    return hits[nth]


def convert(tmp_path: Path, net: str, solver: str | None = None, **kwargs):
    net_path = write(tmp_path, "net.prototxt", net)
    solver_path = None if solver is None else write(tmp_path, "solver.prototxt", solver)
    return from_caffe(net_path, solver_path, echo=None, **kwargs)


def error_of(tmp_path: Path, net: str, solver: str | None = None, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        convert(tmp_path, net, solver, **kwargs)
    return info.value


# ============================================================================ whole nets
def param_count(model) -> int:
    return sum(p.data.size for p in model.params)


def test_lenet_like_net_has_the_parameters_and_layers_it_implies():
    result = from_caffe(LENET, LENET_SOLVER, dataset="mnist", echo=None)
    model = result.build_model()
    # conv 20x1x5x5+20, conv 50x20x5x5+50, ip 500x(50*4*4)+500, ip 10x500+10
    assert param_count(model) == 520 + 25050 + 400500 + 5010 == 431080
    kinds = [type(layer).__name__ for layer in model.layers[1:]]
    assert kinds == ["Convolution2D", "MaxPooling2D", "Convolution2D", "MaxPooling2D", "Dense",
                     "Activation", "Dense"]
    assert model.shapes()[-1][1] == (10,)
    job = result.job
    assert (job.data.dataset, job.data.scale, job.data.train.batch_size) == ("mnist", 0.00390625, 64)
    assert job.data.test.batch_size == 100 and job.data.test.limit == 100 * 100  # test_iter
    assert (job.run.steps, job.run.test_freq, job.run.display_freq, job.run.checkpoint_freq) == \
        (10000, 500, 100, 5000)
    conv = job.model.layer[0].convolution
    assert (conv.w.lr_mult, conv.b.lr_mult, conv.b.value) == (1, 2, 0)
    a = math.sqrt(3 / 25)  # Caffe's xavier: U(-sqrt(3 / fan_in), +), fan_in = 1 * 5 * 5
    assert (conv.w.low, conv.w.high) == pytest.approx((-a, a))
    weights = model.layers[1].params[0].data
    assert np.abs(weights).max() <= a and np.abs(weights).max() > 0.95 * a
    assert (job.updater.type, job.updater.momentum, job.updater.decay) == (0, 0.9, 0.0005)
    assert list(job.model.metric) == ["accuracy"]


def test_cifar_quick_like_net_has_the_parameters_and_shapes_it_implies():
    result = from_caffe(CIFAR, CIFAR_SOLVER, dataset="cifar10", echo=None)
    model = result.build_model()
    # Caffe's ceil rounding: 32 -> 16 -> 8 -> 4 through the three 3x3/2 poolings, so the
    # first InnerProduct sees 64 * 4 * 4 = 1024 inputs.
    assert [shape for _, shape in model.shapes()][-4:] == [(64, 8, 8), (64, 4, 4), (64,), (10,)]
    assert param_count(model) == 2432 + 25632 + 51264 + 65600 + 650 == 145578
    job = result.job
    assert job.data.mean_image and job.seed == 7
    assert [layer.WhichOneof("type") for layer in job.model.layer][1:4] == ["max_pooling", "activation", "lrn"]
    lrn = job.model.layer[3].lrn
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (3, 5e-05, 0.75, 1.0)
    assert job.model.layer[6].avg_pooling.ceil_mode


def _train(tmp_path: Path, net: Path, solver: Path, dataset: str, steps: int, *extra: str) -> dict:
    import json
    conf = tmp_path / "job.conf"
    assert cli.main(["import-caffe", str(net), str(solver), "-o", str(conf), "--dataset", dataset]) == 0
    run_dir = tmp_path / "run"
    status = cli.main(["train", str(conf), "--data-dir", str(DATA), "--run-dir", str(run_dir),
                       "--set", f"run.steps={steps}", "--set", "run.test_freq=0",
                       "--set", "data.test.limit=500", *extra])
    assert status == 0
    return json.loads((run_dir / "metrics.json").read_text())


@needs_data
def test_the_converted_lenet_job_trains_on_mnist(tmp_path):
    final = _train(tmp_path, LENET, LENET_SOLVER, "mnist", 30)
    assert final["step"] == 30
    assert final["test"]["accuracy"] > 0.5  # chance is 0.1; 30 steps of 64 images learn digits


@needs_data
def test_the_converted_cifar_job_trains_on_cifar10(tmp_path):
    final = _train(tmp_path, CIFAR, CIFAR_SOLVER, "cifar10", 5, "--set", "data.train.limit=2000")
    assert final["step"] == 5 and math.isfinite(final["train"]["loss"])
    assert 0 < final["train"]["loss"] < 10


# ============================================================================ solver
def schedule_of(result):
    job = result.load()
    return job.build_updater().schedule


def caffe_rate(policy: str, it: int, base=0.01, gamma=0.5, power=0.75, stepsize=3,
               stepvalue=(2, 5, 9), max_iter=12) -> float:
    """Caffe's SGDSolver::GetLearningRate at iteration ``it``."""
    if policy == "fixed":
        return base
    if policy == "step":
        return base * gamma ** (it // stepsize)
    if policy == "multistep":
        return base * gamma ** sum(v <= it for v in stepvalue)
    if policy == "exp":
        return base * gamma ** it
    if policy == "inv":
        return base * (1 + gamma * it) ** -power
    if policy == "poly":
        return base * (1 - it / max_iter) ** power
    raise AssertionError(policy)


@pytest.mark.parametrize("policy", ["fixed", "step", "multistep", "exp", "inv", "poly"])
def test_each_lr_policy_gives_caffes_rate_at_every_step(tmp_path, policy):
    solver = f"""
    base_lr: 0.01
    lr_policy: "{policy}"
    gamma: 0.5
    power: 0.75
    stepsize: 3
    stepvalue: 2
    stepvalue: 5
    stepvalue: 9
    max_iter: 12
    """
    schedule = schedule_of(convert(tmp_path, INPUT + IP, solver))
    # nnkit's update at step s (from 1) is Caffe's at iteration s - 1.
    for step in range(1, 13):
        assert schedule(step) == pytest.approx(caffe_rate(policy, step - 1), rel=1e-12), step


def caffe_updates(kind: str, w, grads, rates, wd=0.01, momentum=0.9, delta=1e-8, rms=0.99, mom2=0.999):
    """Caffe's ComputeUpdateValue + Net::Update for each (gradient, rate), in numpy."""
    w = w.copy()
    h, u = np.zeros_like(w), np.zeros_like(w)
    for it, (g, lr) in enumerate(zip(grads, rates)):
        g = g + wd * w  # Regularize (L2)
        if kind == "SGD":
            h = momentum * h + lr * g
            step = h
        elif kind == "Nesterov":
            prev = h.copy()
            h = momentum * h + lr * g
            step = (1 + momentum) * h - momentum * prev
        elif kind == "AdaGrad":
            h = h + g * g
            step = lr * g / (np.sqrt(h) + delta)
        elif kind == "RMSProp":
            h = rms * h + (1 - rms) * g * g
            step = lr * g / (np.sqrt(h) + delta)
        elif kind == "AdaDelta":
            h = momentum * h + (1 - momentum) * g * g
            update = g * np.sqrt((u + delta) / (h + delta))
            u = momentum * u + (1 - momentum) * update * update
            step = lr * update
        else:  # Adam
            t = it + 1
            h = momentum * h + (1 - momentum) * g
            u = mom2 * u + (1 - mom2) * g * g
            step = lr * math.sqrt(1 - mom2 ** t) / (1 - momentum ** t) * h / (np.sqrt(u) + delta)
        w = w - step
    return w


@pytest.mark.parametrize("kind", ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_each_solver_type_updates_as_caffe_does(tmp_path, kind):
    momentum = "" if kind in ("AdaGrad", "RMSProp") else "momentum: 0.9"
    # Adam: Caffe adds delta to sqrt(v) before the bias correction, nnkit after it; with a tiny
    # delta the rules are the same (with delta 1e-8 the steps differ by about delta / sqrt(v)).
    delta = 1e-12 if kind == "Adam" else 1e-8
    solver = f"""
    delta: {delta}
    type: "{kind}"
    base_lr: 0.05
    lr_policy: "step"
    gamma: 0.5
    stepsize: 2
    max_iter: 10
    weight_decay: 0.01
    {momentum}
    """
    result = convert(tmp_path, INPUT + IP, solver)
    updater = result.load().build_updater()
    layer = Dense(3, name="d")
    layer.build((4,), np.float64)
    p = layer.params[0]
    rng = np.random.default_rng(0)
    # Fixed weights, not the initializer's draw: with weight decay in the gradient, a draw that
    # left some gradient near zero would make Adam's delta placement (above) matter.
    p.data[...] = rng.normal(size=p.data.shape)
    start = p.data.copy()
    grads = [rng.normal(size=p.data.shape) for _ in range(5)]
    for step, g in enumerate(grads, start=1):
        p.grad[...] = g
        updater.Update(step, SimpleNamespace(params=[p]))
    rates = [caffe_rate("step", it, base=0.05, stepsize=2) for it in range(5)]
    expected = caffe_updates(kind, start, grads, rates, momentum=0.9 if momentum else 0.0, delta=delta)
    np.testing.assert_allclose(p.data, expected, rtol=1e-8, atol=1e-12)


def test_solver_fields_without_effect_on_the_cpu_are_ignored_with_a_note(tmp_path, capsys):
    net_path = write(tmp_path, "net.prototxt", INPUT + IP)
    solver_path = write(tmp_path, "solver.prototxt", SOLVER + 'solver_mode: GPU\ndevice_id: 3\n')
    result = from_caffe(net_path, solver_path)
    err = capsys.readouterr().err
    assert "solver_mode ignored" in err and "device_id ignored" in err
    assert any("solver_mode" in n for n in result.notes)
    assert "# note: solver device_id ignored" in result.to_text()


# ============================================================================ layers
def test_fillers_map_onto_nnkit_initializers_with_caffes_fans(tmp_path):
    net = INPUT + """
    layer { name: "c" type: "Convolution" bottom: "x" top: "c"
            convolution_param { num_output: 4 kernel_size: 3
              weight_filler { type: "msra" } bias_filler { type: "gaussian" std: 0.5 mean: 1 } } }
    layer { name: "d" type: "InnerProduct" bottom: "c" top: "d"
            inner_product_param { num_output: 6
              weight_filler { type: "xavier" variance_norm: AVERAGE } bias_filler { type: "uniform" min: -1 max: 2 } } }
    layer { name: "e" type: "InnerProduct" bottom: "d" top: "e"
            inner_product_param { num_output: 10 weight_filler { type: "msra" variance_norm: FAN_OUT } } }
    layer { name: "f" type: "InnerProduct" bottom: "e" top: "f"
            inner_product_param { num_output: 10 } }
    """
    layers = convert(tmp_path, net).job.model.layer
    conv, d, e, f = layers[0].convolution, layers[1].dense, layers[2].dense, layers[3].dense
    assert conv.w.init == conv.w.Init.Value("he_normal")  # msra FAN_IN: N(0, 2 / fan_in)
    assert (conv.b.mean, conv.b.std) == (1, 0.5) and not conv.b.HasField("init")
    assert d.w.init == d.w.Init.Value("glorot_uniform")  # xavier AVERAGE: sqrt(6 / (in + out))
    assert (d.b.low, d.b.high) == (-1, 2)
    assert e.w.init == e.w.Init.Value("gaussian") and e.w.std == pytest.approx(math.sqrt(2 / 10))
    assert f.w.init == f.w.Init.Value("constant") and f.w.value == 0  # Caffe's default filler


@pytest.mark.parametrize("size,kernel,stride,pad,mode,out", [
    (32, 3, 2, 0, "CEIL", 16),   # ceil((32 - 3) / 2) + 1
    (32, 3, 2, 0, "FLOOR", 15),
    (5, 2, 2, 1, "CEIL", 3),     # 4 by the formula, the last window starts in the padding: clipped
    (6, 3, 2, 1, "CEIL", 4),
])
def test_pooling_sizes_follow_caffes_rounding(tmp_path, size, kernel, stride, pad, mode, out):
    net = f"""
    layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 1 dim: 2 dim: {size} dim: {size} }} }} }}
    layer {{ name: "p" type: "Pooling" bottom: "x" top: "p"
            pooling_param {{ pool: AVE kernel_size: {kernel} stride: {stride} pad: {pad} round_mode: {mode} }} }}
    """ + IP.replace('"x"', '"p"')
    model = convert(tmp_path, net).build_model()
    assert model.shapes()[1][1] == (2, out, out)


def test_pooling_whose_size_nnkit_would_round_differently_is_refused(tmp_path):
    net = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
    layer { name: "p" type: "Pooling" bottom: "x" top: "p"
            pooling_param { pool: MAX kernel_size: 1 stride: 3 } }
    """ + IP.replace('"x"', '"p"')
    e = error_of(tmp_path, net)
    assert str(e).startswith(f"{tmp_path / 'net.prototxt'}:{line_of(tmp_path / 'net.prototxt', 'pooling_param')}:")
    assert "empty" in str(e)


def test_within_channel_lrn_takes_k_1_as_caffe_and_even_sizes_are_refused(tmp_path):
    lrn = """
    layer { name: "n" type: "LRN" bottom: "x" top: "x"
            lrn_param { local_size: 3 alpha: 0.5 k: 2 norm_region: WITHIN_CHANNEL } }
    """
    result = convert(tmp_path, INPUT + lrn + IP)
    conf = result.job.model.layer[0].lrn
    assert (conf.size, conf.alpha, conf.k, conf.norm_region) == (3, 0.5, 1.0, conf.NormRegion.Value("within_channel"))
    assert any("k 2.0 ignored" in n for n in result.notes)
    e = error_of(tmp_path, INPUT + lrn.replace("local_size: 3", "local_size: 4") + IP)
    assert "odd" in str(e) and f"net.prototxt:{line_of(tmp_path / 'net.prototxt', 'local_size')}:" in str(e)


def test_accuracy_top_k_and_a_final_softmax(tmp_path):
    net = INPUT.replace('top: "x"', 'top: "x" top: "label"').replace(
        "shape { dim: 2 dim: 1 dim: 9 dim: 9 }", "shape { dim: 2 dim: 1 dim: 9 dim: 9 } shape { dim: 2 }") + IP + """
    layer { name: "a5" type: "Accuracy" bottom: "y" bottom: "label" top: "a5" accuracy_param { top_k: 5 } }
    layer { name: "a1" type: "Accuracy" bottom: "y" bottom: "label" top: "a1" }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
    """
    assert list(convert(tmp_path, net).job.model.metric) == ["top5_accuracy", "accuracy"]
    deploy = convert(tmp_path, INPUT + IP + 'layer { name: "prob" type: "Softmax" bottom: "y" top: "prob" }')
    assert len(deploy.job.model.layer) == 1 and any("Softmax" in n for n in deploy.notes)


def test_input_dims_in_every_caffe_spelling_and_the_dataset_they_imply(tmp_path):
    for inputs in ('input: "x" input_shape { dim: 1 dim: 3 dim: 32 dim: 32 }',
                   'input: "x" input_dim: 1 input_dim: 3 input_dim: 32 input_dim: 32',
                   'layer { name: "m" type: "MemoryData" top: "x" top: "label"\n'
                   '  memory_data_param { batch_size: 8 channels: 3 height: 32 width: 32 } }'):
        result = convert(tmp_path, inputs + IP)
        assert tuple(result.job.model.input_shape) == (3, 32, 32)
        assert result.job.data.dataset == "cifar10"  # the one dataset of 3x32x32 images
        assert any("inferred" in n for n in result.notes)
    assert convert(tmp_path, 'input: "x" input_dim: 1 input_dim: 3 input_dim: 32 input_dim: 32' + IP
                   ).build_model().shapes()[-1][1] == (10,)


def test_phase_rules_pick_each_phases_data_layer(tmp_path):
    net = """
    layer { name: "tr" type: "Data" top: "x" top: "y" exclude { phase: TEST }
            data_param { source: "a" batch_size: 16 } }
    layer { name: "te" type: "Data" top: "x" top: "y" include { phase: TEST }
            data_param { source: "b" batch_size: 50 } }
    """ + IP + """
    layer { name: "acc" type: "Accuracy" bottom: "y" bottom: "y_" top: "acc" include { phase: TRAIN } }
    """
    e = error_of(tmp_path, net, dataset="mnist")  # the Accuracy reads a blob that is no label
    assert "not a chain" in str(e) and f":{line_of(tmp_path / 'net.prototxt', 'Accuracy')}:" in str(e)
    job = convert(tmp_path, net.replace('"y_"', '"y"'), dataset="mnist").job
    assert (job.data.train.batch_size, job.data.test.batch_size) == (16, 50)
    mixed = net.replace('data_param { source: "b"', 'transform_param { scale: 0.5 } data_param { source: "b"')
    e = error_of(tmp_path, mixed.replace('"y_"', '"y"'), dataset="mnist")
    te_line = line_of(tmp_path / "net.prototxt", 'name: "te"')
    assert "normalizes differently" in str(e) and f":{te_line}:" in str(e)


def test_solver_without_lr_policy_or_max_iter_is_refused_and_adam_is_noted(tmp_path):
    e = error_of(tmp_path, INPUT + IP, "base_lr: 0.1\nmax_iter: 5\n")
    assert "lr_policy" in str(e) and str(e).startswith(f"{tmp_path / 'solver.prototxt'}:")
    e = error_of(tmp_path, INPUT + IP, 'base_lr: 0.1\nlr_policy: "fixed"\n')
    assert "max_iter" in str(e)
    notes = convert(tmp_path, INPUT + IP, SOLVER + 'type: "Adam"\n').notes
    assert any("Adam" in n and "delta" in n for n in notes)


# ============================================================================ errors at file:line
BAD_NETS = {
    "v1": ("""
    name: "old"
    layers { name: "c" type: CONVOLUTION }
    """, "layers {", "upgrade_net_proto_text"),
    "unknown type": (INPUT + """
    layer { name: "e" type: "Eltwise" bottom: "x" bottom: "x" top: "e" }
    """, '"Eltwise"', "Caffe layer type 'Eltwise' has no nnkit equivalent"),
    "unknown param block": (INPUT + """
    layer { name: "e" type: "Concat" bottom: "x" top: "e"
            concat_param { axis: 1 } }
    """, "concat_param", "belongs to a Caffe layer type nnkit cannot import"),
    "branch": (INPUT + """
    layer { name: "a" type: "ReLU" bottom: "x" top: "a" }
    layer { name: "b" type: "ReLU" bottom: "x" top: "b" }
    """, 'name: "b"', "nnkit models are chains"),
    "two tops": (INPUT + """
    layer { name: "a" type: "ReLU" bottom: "x" top: "a" top: "a2" }
    """, 'name: "a"', "2 tops"),
    "phase-only layer": (INPUT + """
    layer { name: "a" type: "ReLU" bottom: "x" top: "x" include { phase: TEST } }
    """ + IP, 'name: "a"', "TEST net only"),
    "leaky relu": (INPUT + """
    layer { name: "a" type: "ReLU" bottom: "x" top: "x"
            relu_param { negative_slope: 0.1 } }
    """ + IP, "negative_slope", "leaky"),
    "sparse filler": (INPUT + """
    layer { name: "d" type: "InnerProduct" bottom: "x" top: "d"
            inner_product_param { num_output: 3
              weight_filler { type: "gaussian"
                              sparse: 2 } } }
    """, "sparse", "sparse"),
    "unknown filler": (INPUT + """
    layer { name: "d" type: "InnerProduct" bottom: "x" top: "d"
            inner_product_param { num_output: 3
              weight_filler { type: "bilinear" } } }
    """, "bilinear", "'bilinear' has no nnkit equivalent"),
    "grouped conv": (INPUT + """
    layer { name: "c" type: "Convolution" bottom: "x" top: "c"
            convolution_param { num_output: 2 kernel_size: 3
                                group: 2 } }
    """, "group: 2", "group"),
    "no dataset": ("""
    layer { name: "d" type: "Data" top: "x" top: "y" data_param { source: "train_lmdb" batch_size: 4 } }
    """ + IP, 'name: "d"', "--dataset"),
    "ambiguous dims": ("""
    layer { name: "d" type: "MemoryData" top: "x" top: "y"
            memory_data_param { batch_size: 4 channels: 1 height: 28 width: 28 } }
    """ + IP, 'name: "d"', "fashion_mnist and mnist"),
    "crop": ("""
    layer { name: "d" type: "Data" top: "x" top: "y"
            transform_param { crop_size: 24 } data_param { source: "lmdb" batch_size: 4 } }
    """ + IP, "crop_size", "no nnkit equivalent"),
    "syntax": (INPUT + """
    layer { name: "d" type: "ReLU" bottom: "x" top: "x"
            relu_param { negative_slope 0.1 0.2 } }
    """, "negative_slope", ""),
    "solver given as the net": (SOLVER, "base_lr", "is a solver field"),
}


@pytest.mark.parametrize("case", list(BAD_NETS))
def test_bad_nets_are_refused_with_file_and_line(tmp_path, case):
    text, marker, message = BAD_NETS[case]
    kwargs = {"dataset": "mnist"} if case == "crop" else {}
    e = error_of(tmp_path, text, **kwargs)
    path = tmp_path / "net.prototxt"
    assert re.match(rf"{re.escape(str(path))}:{line_of(path, marker)}[:\s]", str(e)), str(e)
    assert message in str(e)


BAD_SOLVERS = {
    "sigmoid policy": ('lr_policy: "sigmoid"', "lr_policy", "no nnkit schedule"),
    "global clipping": ("clip_gradients: 10", "clip_gradients", "each parameter's"),
    "iter_size": ("iter_size: 2", "iter_size", "after every batch"),
    "L1": ('regularization_type: "L1"', "regularization_type", "L2"),
    "unknown type": ('type: "LBFGS"', "LBFGS", "no nnkit updater"),
    "momentum with AdaGrad": ('type: "AdaGrad"\nmomentum: 0.9', "momentum", "no momentum"),
    "unknown field": ("train_state { phase: TRAIN }", "train_state", "not a field"),
    "decreasing stepvalues": ('lr_policy: "multistep"\nstepvalue: 5\nstepvalue: 3', "lr_policy", "increasing"),
}


@pytest.mark.parametrize("case", list(BAD_SOLVERS))
def test_bad_solvers_are_refused_with_file_and_line(tmp_path, case):
    extra, marker, message = BAD_SOLVERS[case]
    solver = SOLVER.replace('lr_policy: "fixed"\n', "") + extra + "\n"
    if "lr_policy" not in extra:
        solver += 'lr_policy: "fixed"\n'
    e = error_of(tmp_path, INPUT + IP, solver)
    path = tmp_path / "solver.prototxt"
    if case == "decreasing stepvalues":
        marker = "stepvalue"
    assert re.match(rf"{re.escape(str(path))}:{line_of(path, marker)}[:\s]", str(e)), str(e)
    assert message in str(e)


def test_what_nnkit_refuses_in_the_converted_job_is_blamed_on_the_caffe_line(tmp_path):
    net = write(tmp_path, "net.prototxt", INPUT + IP.replace("num_output: 10", "num_output: 7"))
    with pytest.raises(ConfigError) as info:
        from_caffe(net, dataset="cifar10", echo=None)  # 1x9x9 inputs: not CIFAR's
    assert str(info.value).startswith(f"{net}:")
    net = write(tmp_path, "net.prototxt", INPUT.replace("dim: 2 dim: 1 dim: 9 dim: 9",
                                                        "dim: 2 dim: 3 dim: 32 dim: 32") + IP.replace("10", "7"))
    with pytest.raises(ConfigError) as info:
        from_caffe(net, dataset="cifar10", echo=None)
    assert str(info.value).startswith(f"{net}:{line_of(net, 'InnerProduct')}: ")
    assert "outputs 7 scores but cifar10 has 10 classes" in str(info.value)
    solver = write(tmp_path, "solver.prototxt", SOLVER + "momentum: 1.5\n")
    with pytest.raises(ConfigError) as info:
        from_caffe(write(tmp_path, "net.prototxt", INPUT + IP), solver, echo=None)
    assert str(info.value).startswith(f"{solver}:{line_of(solver, 'momentum')}: ")


def test_the_cli_exits_2_on_bad_input(tmp_path, capsys):
    v1 = write(tmp_path, "v1.prototxt", BAD_NETS["v1"][0])
    out = tmp_path / "job.conf"
    assert cli.main(["import-caffe", str(v1), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{v1}:3:" in err and "upgrade_net_proto_text" in err and not out.exists()
    assert cli.main(["import-caffe", str(tmp_path / "missing.prototxt"), "-o", str(out)]) == 2
    assert cli.main(["import-caffe", str(v1), "-o", str(tmp_path / "no" / "job.conf")]) == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["import-caffe", str(v1), "-o", str(out), "--dataset", "imagenet"])
    assert info.value.code == 2


def test_rectangular_kernels_strides_and_pads(tmp_path):
    net = INPUT + """
    layer { name: "c" type: "Convolution" bottom: "x" top: "c"
            convolution_param { num_output: 2 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 1 } }
    layer { name: "p" type: "Pooling" bottom: "c" top: "p"
            pooling_param { pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 } }
    """ + IP.replace('"x"', '"p"')
    result = convert(tmp_path, net)
    conv, pool = result.job.model.layer[0].convolution, result.job.model.layer[1].max_pooling
    assert (list(conv.kernel), list(conv.stride), list(conv.pad)) == ([3, 1], [2, 1], [1, 0])
    assert (list(pool.pool_size), list(pool.stride)) == ([2, 3], [1, 2])
    # conv: (9 + 2 - 3) // 2 + 1 = 5 rows, 9 columns; pool: ceil(3 / 1) + 1 = 4, ceil(6 / 2) + 1 = 4
    assert result.build_model().shapes()[2][1] == (2, 4, 4)
    e = error_of(tmp_path, net.replace("kernel_w: 1 ", ""))
    assert "give both kernel_h and kernel_w" in str(e)


# ============================================================================ weights
WEIGHTED = """
name: "weighted"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "pool" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "norm" type: "LRN" bottom: "p" top: "n" lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 k: 2 } }
layer { name: "avg" type: "Pooling" bottom: "n" top: "a" pooling_param { pool: AVE kernel_size: 2 stride: 1 pad: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "a" top: "f" inner_product_param { num_output: 5 transpose: true } }
layer { name: "tanh" type: "TanH" bottom: "f" top: "f" }
layer { name: "out" type: "InnerProduct" bottom: "f" top: "out" inner_product_param { num_output: 10 } }
"""


def caffe_forward(x, blobs):
    """Caffe's forward pass of WEIGHTED in numpy, from its layers' definitions."""
    w, b = blobs["conv"]
    n, c, h, _ = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = (h + 2 - 3) // 2 + 1
    conv = np.zeros((n, 4, out, out))
    for i in range(out):
        for j in range(out):
            patch = padded[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            conv[:, :, i, j] = np.einsum("nchw,fchw->nf", patch, w) + b
    conv = np.maximum(conv, 0)
    # MAX 2/2 without padding: ceil((5 - 2) / 2) + 1 = 3 windows, the last one clipped to the image
    size = conv.shape[2]
    k = -(-(size - 2) // 2) + 1
    pool = np.zeros((n, 4, k, k))
    for i in range(k):
        for j in range(k):
            pool[:, :, i, j] = conv[:, :, 2 * i:min(2 * i + 2, size), 2 * j:min(2 * j + 2, size)].max(axis=(2, 3))
    # LRN across channels: x / (k + alpha / n * sum of squares over n channels) ** beta
    sq = np.pad(pool ** 2, ((0, 0), (1, 1), (0, 0), (0, 0)))
    norm = pool / (2 + 0.3 / 3 * (sq[:, :-2] + sq[:, 1:-1] + sq[:, 2:])) ** 0.75
    # AVE 2/1 pad 1: ceil((3 + 2 - 2) / 1) + 1 = 4 windows; divisor counts padding cells
    padded = np.pad(norm, ((0, 0), (0, 0), (1, 1), (1, 1)))
    avg = np.zeros((n, 4, 4, 4))
    for i in range(4):
        for j in range(4):
            avg[:, :, i, j] = padded[:, :, i:i + 2, j:j + 2].sum(axis=(2, 3)) / 4
    fc_w, fc_b = blobs["fc"]  # transpose: true, the blob is (in, out)
    f = np.tanh(avg.reshape(n, -1) @ fc_w + fc_b)
    out_w, out_b = blobs["out"]
    return f @ out_w.T + out_b


def write_caffemodel(path: Path, blobs: dict, legacy: tuple = ()) -> None:
    """A binary NetParameter holding ``blobs`` (layer name -> arrays), legacy 4-D shapes for
    the layers named in ``legacy``, and a layer the net does not have."""
    net = caffe_pb.NetParameter(name="weighted")
    for name, arrays in {**blobs, "extra": [np.ones(3)]}.items():
        layer = net.layer.add(name=name, type="InnerProduct")
        for array in arrays:
            blob = layer.blobs.add()
            if name in legacy:
                shape = (1,) * (4 - array.ndim) + array.shape
                blob.num, blob.channels, blob.height, blob.width = shape
            else:
                blob.shape.dim.extend(array.shape)
            blob.data.extend(array.astype(np.float32).ravel())
    path.write_bytes(net.SerializeToString())


def test_imported_weights_predict_what_caffes_forward_pass_computes(tmp_path):
    rng = np.random.default_rng(5)
    blobs = {"conv": [rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)],
             "fc": [rng.normal(size=(64, 5)) * 0.3, rng.normal(size=5)],
             "out": [rng.normal(size=(10, 5)), rng.normal(size=10)]}
    blobs = {k: [a.astype(np.float32) for a in v] for k, v in blobs.items()}
    model_file = tmp_path / "net.caffemodel"
    write_caffemodel(model_file, blobs, legacy=("out",))
    net = write(tmp_path, "net.prototxt", WEIGHTED)
    conf = tmp_path / "job.conf"
    assert cli.main(["import-caffe", str(net), "-o", str(conf), "--weights", str(model_file)]) == 0
    model = nnkit.load(tmp_path / "job.h5")
    x = rng.normal(size=(6, 3, 9, 9)).astype(np.float32)
    expected = caffe_forward(x.astype(np.float64), {k: [a.astype(np.float64) for a in v] for k, v in blobs.items()})
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-4, atol=1e-4)
    assert nnkit.load_job(conf).build_model().layers[1].name == "conv"


def test_within_channel_lrn_computes_what_caffes_does(tmp_path):
    """Caffe's WITHIN_CHANNEL LRN: x * (1 + alpha * AVE-pool(x^2, size, pad (size-1)/2))^-beta."""
    net = write(tmp_path, "net.prototxt", """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 2 dim: 5 dim: 5 } } }
    layer { name: "n" type: "LRN" bottom: "x" top: "x"
            lrn_param { local_size: 3 alpha: 0.7 beta: 0.75 k: 4 norm_region: WITHIN_CHANNEL } }
    layer { name: "id" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 50 } }
    """)
    model_file = tmp_path / "id.caffemodel"
    write_caffemodel(model_file, {"id": [np.eye(50, dtype=np.float32), np.zeros(50, np.float32)]})
    model = from_caffe(net, weights=model_file, echo=None).build_model()
    x = np.random.default_rng(1).normal(size=(3, 2, 5, 5)) * 2
    padded = np.pad(x ** 2, ((0, 0), (0, 0), (1, 1), (1, 1)))
    mean = sum(padded[:, :, i:i + 5, j:j + 5] for i in range(3) for j in range(3)) / 9
    expected = x * (1 + 0.7 * mean) ** -0.75  # k: 4 has no effect in Caffe here
    np.testing.assert_allclose(model.predict(x.astype(np.float32)), expected.reshape(3, -1),
                               rtol=1e-5, atol=1e-5)


def test_weights_that_do_not_fit_the_net_are_refused(tmp_path):
    net = write(tmp_path, "net.prototxt", WEIGHTED)
    model_file = tmp_path / "bad.caffemodel"
    write_caffemodel(model_file, {"conv": [np.zeros((4, 3, 5, 5)), np.zeros(4)]})
    with pytest.raises(ConfigError, match=r"blob 0 has shape \(4, 3, 5, 5\).*needs \(4, 3, 3, 3\)"):
        from_caffe(net, weights=model_file, echo=None)
    old = caffe_pb.NetParameter()
    old.layers.add(name="conv")
    model_file.write_bytes(old.SerializeToString())
    with pytest.raises(ConfigError, match="upgrade_net_proto_binary"):
        from_caffe(net, weights=model_file, echo=None)
    model_file.write_bytes(b"\xff\xff\xff not a protobuf")
    with pytest.raises(ConfigError, match="not a binary Caffe NetParameter"):
        from_caffe(net, weights=model_file, echo=None)


def test_layers_missing_from_the_caffemodel_keep_their_init_with_a_note(tmp_path):
    net = write(tmp_path, "net.prototxt", WEIGHTED)
    model_file = tmp_path / "part.caffemodel"
    conv = [np.full((4, 3, 3, 3), 0.5, np.float32), np.zeros(4, np.float32)]
    write_caffemodel(model_file, {"conv": conv})
    result = from_caffe(net, weights=model_file, echo=None)
    assert any("'fc' has no blobs" in n for n in result.notes)
    assert any("'extra' ignored" in n for n in result.notes)
    np.testing.assert_array_equal(result.build_model().layers[1].params[0].data, conv[0])


# ============================================================================ the schema
def test_the_committed_caffe_module_is_current_and_uses_caffes_field_numbers(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (protoc) is not installed")
    import importlib.util
    spec = importlib.util.spec_from_file_location("gen", ROOT / "proto" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    ok, why = gen.is_current()
    assert ok, why
    edited = tmp_path / "caffe_import.proto"
    edited.write_text(gen.CAFFE_PROTO.read_text().replace("repeated LayerParameter layer = 100;",
                                                          "repeated LayerParameter layer = 101;"))
    assert gen.schema_of(gen.run_protoc(tmp_path, edited)) != gen.schema_of(gen.CAFFE_MODULE)
    fields = caffe_pb.LayerParameter.DESCRIPTOR.fields_by_name
    assert (fields["convolution_param"].number, fields["pooling_param"].number,
            caffe_pb.NetParameter.DESCRIPTOR.fields_by_name["layer"].number,
            caffe_pb.SolverParameter.DESCRIPTOR.fields_by_name["base_lr"].number) == (106, 121, 100, 5)
