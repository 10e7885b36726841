"""ONNX export: what onnxruntime computes from an exported model is what ``predict`` computes.

Per layer kind on random weights and inputs (pooling over a grid of sizes, strides, pads and
both rounding modes), refusals for what ONNX cannot express exactly, and the two example nets
(examples/mnist_mlp.conf, examples/cifar10_cnn.conf) trained a few steps on real data through
``nnkit train``, exported by ``nnkit export`` and run on real test images.
"""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx extra is in the test extra")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra")

import nnkit  # noqa: E402
from nnkit import (LRN2D, Activation, AvgPooling2D, BatchNormalization, Convolution2D,  # noqa: E402
                   Dense, Dropout, Layer, MaxPooling2D, Sequential)
from nnkit import onnx_export  # noqa: E402
from nnkit.cli import main  # noqa: E402
from nnkit.training.checkpoints import latest_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
TOLERANCE = 1e-4  # max abs difference between onnxruntime and predict


def onnx_outputs(model: Sequential, x: np.ndarray, path: Path) -> np.ndarray:
    """Exports ``model`` to ``path`` and runs ``x`` through it in onnxruntime."""
    model.to_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {onnx_export.INPUT: x})[0]


def randomize(model: Sequential, seed: int = 0) -> None:
    """Parameters of unit scale (the default inits are small), so every term matters."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.5
                       for w in model.get_weights()])


def check(layers: list[Layer], input_shape: tuple[int, ...], tmp_path: Path,
          batch: int = 5) -> float:
    """Max abs difference between onnxruntime and predict for one small model."""
    model = Sequential(layers, input_shape=input_shape, seed=3)
    model.build()
    randomize(model)
    x = np.random.default_rng(1).standard_normal((batch, *input_shape)).astype(np.float32)
    expected = model.predict(x)
    got = onnx_outputs(model, x, tmp_path / "model.onnx")
    assert got.shape == expected.shape
    diff = float(np.abs(got - expected).max())
    assert diff < TOLERANCE, (layers, diff)
    return diff


# ------------------------------------------------------------------------------ layer kinds
@pytest.mark.parametrize("layers, shape", [
    ([Dense(7)], (12,)),
    ([Dense(7, bias=False)], (12,)),
    ([Dense(6)], (3, 4, 5)),  # images flattened in C order
    ([Convolution2D(4, 3)], (2, 7, 6)),
    ([Convolution2D(4, (3, 2), stride=(2, 1), pad=(1, 2))], (3, 9, 8)),
    ([Convolution2D(3, 5, pad=2, bias=False)], (2, 8, 8)),
], ids=["dense", "dense-no-bias", "dense-images", "conv", "conv-strided-padded", "conv-no-bias"])
def test_dense_and_convolution(layers, shape, tmp_path):
    check(layers, shape, tmp_path)


@pytest.mark.parametrize("kind", ["relu", "sigmoid", "tanh", "stanh", "softmax", "linear"])
@pytest.mark.parametrize("shape", [(10,), (4, 3, 5)], ids=["rows", "images"])
def test_activations(kind, shape, tmp_path):
    check([Activation(kind)], shape, tmp_path)


def test_softmax_over_channels_is_not_over_the_whole_image(tmp_path):
    """nnkit's softmax normalizes axis 1 of images; so must the graph (sums of 1 per pixel)."""
    model = Sequential([Activation("softmax")], input_shape=(3, 2, 2))
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    got = onnx_outputs(model, x, tmp_path / "m.onnx")
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)


def test_dropout_is_the_identity(tmp_path):
    model = Sequential([Dropout(0.5), Dense(3)], input_shape=(8,), seed=0)
    model.build()
    model.layers[1].training = True  # the mode a model is in after fit: export is eval anyway
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_allclose(onnx_outputs(model, x, tmp_path / "m.onnx"), model.predict(x),
                               atol=TOLERANCE)
    ops = [n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node]
    assert ops == ["Identity", "Gemm"]


@pytest.mark.parametrize("shape", [(6,), (3, 5, 4)], ids=["rows", "images"])
def test_batch_normalization_uses_the_running_statistics(shape, tmp_path):
    model = Sequential([BatchNormalization(momentum=0.5, epsilon=1e-2)], input_shape=shape, seed=0)
    model.build()
    randomize(model)
    rng = np.random.default_rng(5)
    bn = model.layers[1]
    bn.training = True
    for _ in range(3):  # move the running statistics well away from 0 and 1
        bn.forward((rng.standard_normal((8, *shape)) * 3 + 2).astype(np.float32))
    assert np.abs(bn.state["moving_mean"]).min() > 0.1
    x = rng.standard_normal((5, *shape)).astype(np.float32)
    expected = model.predict(x)  # evaluation mode: the running statistics
    got = onnx_outputs(model, x, tmp_path / "m.onnx")
    assert np.abs(got - expected).max() < TOLERANCE
    bn.training = True  # a batch-statistics result differs: the test can tell them apart
    assert np.abs(bn.forward(x) - got).max() > 1e-2


@pytest.mark.parametrize("layer, shape", [
    (lambda: nnkit.Rescaling(1 / 255), (3, 4, 4)),
    (lambda: nnkit.Rescaling(1 / 127.5, offset=-1), (12,)),
    (lambda: nnkit.Normalization(mean=[120.0, 110.0, 100.0], std=[60.0, 55.0, 50.0]), (3, 4, 4)),
    (lambda: nnkit.Normalization(mean=np.arange(48.0).reshape(3, 4, 4), std=64.0), (3, 4, 4)),
    (lambda: nnkit.Normalization(mean=33.0, std=np.linspace(1, 2, 12)), (12,)),
], ids=["rescaling", "rescaling-offset", "normalization-per-channel",
        "normalization-mean-image", "normalization-per-feature"])
def test_preprocessing_layers_take_the_raw_values(layer, shape, tmp_path):
    model = Sequential([layer(), Dense(5)], input_shape=shape, seed=0)
    x = np.random.default_rng(0).integers(0, 256, (4, *shape)).astype(np.float32)  # raw pixels
    expected = model.predict(x)
    got = onnx_outputs(model, x, tmp_path / "m.onnx")
    assert np.abs(got - expected).max() < TOLERANCE
    assert np.abs(expected).max() > 0.05  # the Dense layer sees the transformed values


@pytest.mark.parametrize("size, alpha, beta, k", [(1, 0.5, 0.75, 1.0), (3, 2.0, 0.75, 1.0),
                                                  (5, 1.0, 0.5, 2.0), (7, 3.0, 1.5, 0.5)])
def test_lrn_across_channels(size, alpha, beta, k, tmp_path):
    # Large alpha: the normalization changes the output far beyond the tolerance.
    check([LRN2D(size, alpha, beta, k)], (9, 3, 4), tmp_path)
    x = np.random.default_rng(1).standard_normal((5, 9, 3, 4)).astype(np.float32)
    assert size == 1 or np.abs(Sequential([LRN2D(size, alpha, beta, k)],
                                          input_shape=(9, 3, 4)).predict(x) - x).max() > 0.1


def test_pooling_over_a_grid_of_shapes(tmp_path):
    """Max and average pooling, ceil and floor, every pad < kernel: sizes and values agree.

    Covers average pooling's three translations: no padding (count_include_pad=0), padding
    with every window inside it (count_include_pad=1), and a ceil-mode window reaching past
    the padding (explicit Pad, AveragePool and Slice).
    """
    routes = set()
    for size, k, s, ceil in itertools.product((3, 5, 8), (1, 2, 3, 4), (1, 2, 3, 5), (True, False)):
        for p in range(k):
            for cls in (MaxPooling2D, AvgPooling2D):
                layer = cls((k, k - (k > 1)), (s, max(1, s - 1)), (p, max(0, p - 1)), ceil_mode=ceil)
                try:
                    layer.output_shape((2, size, size + 1))
                except ValueError:
                    continue  # too small an input for this window
                check([layer], (2, size, size + 1), tmp_path, batch=2)
                routes.add(tuple(n.op_type for n in onnx.load(tmp_path / "model.onnx").graph.node))
    assert {("MaxPool",), ("AveragePool",), ("Pad", "AveragePool", "Slice")} <= routes


def test_the_exported_graph_is_named_after_the_layers(tmp_path):
    model = Sequential([Convolution2D(2, 3, name="conv1"), MaxPooling2D(2, name="pool1"),
                        Dense(3, name="fc")], input_shape=(1, 6, 6), name="tiny")
    model.to_onnx(tmp_path / "m.onnx")
    m = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version == onnx_export.OPSET == 22
    assert [n.name for n in m.graph.node] == ["conv1", "pool1", "fc/flatten", "fc"]
    assert {t.name for t in m.graph.initializer} == {"conv1/weight", "conv1/bias", "fc/weight",
                                                     "fc/bias"}
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (m.graph.input[0], m.graph.output[0])]
    assert dims == [["batch", 1, 6, 6], ["batch", 3]]
    assert m.graph.name == "tiny" and m.producer_name == "nnkit"


# ------------------------------------------------------------------------------------ refusals
class Doubler(Layer):
    """A user's own layer: nothing in ONNX says what it computes."""

    def forward(self, x):
        return x * 2


@pytest.mark.parametrize("layer, words", [
    (LRN2D(4, name="lrn_even"), ["LRN2D 'lrn_even'", "even size (4)", "2 channels before",
                                 "1 before and 2 after"]),
    (LRN2D(3, norm_region="within_channel", name="lrn_w"), ["LRN2D 'lrn_w'", "within_channel",
                                                            "across channels only"]),
    (Doubler(name="twice"), ["Doubler 'twice'", "cannot be exported", "Dense"]),
], ids=["lrn-even", "lrn-within", "own-layer"])
def test_what_cannot_be_exported_exactly_is_refused(layer, words, tmp_path):
    model = Sequential([Convolution2D(4, 1), layer], input_shape=(2, 5, 5))
    with pytest.raises(onnx_export.ExportError) as info:
        model.to_onnx(tmp_path / "m.onnx")
    for word in words:
        assert word in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


def test_even_lrn_windows_really_differ():
    """Why even sizes are refused: nnkit's window is one channel earlier than ONNX's (run in
    ONNX's reference evaluator: onnxruntime does not even load an even-sized LRN)."""
    from onnx import helper, TensorProto
    from onnx.reference import ReferenceEvaluator
    # Batch = channels: onnx 1.23's reference LRN loops its channels over range(batch size).
    x = np.random.default_rng(0).standard_normal((6, 6, 2, 2)).astype(np.float32)

    def reference(size: int) -> np.ndarray:
        node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=4.0)
        graph = helper.make_graph([node], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)], ir_version=10)
        return ReferenceEvaluator(m).run(None, {"x": x})[0]

    def ours(size: int) -> np.ndarray:
        return Sequential([LRN2D(size, alpha=4.0)], input_shape=(6, 2, 2)).predict(x)

    assert np.abs(reference(4) - ours(4)).max() > 1e-2
    np.testing.assert_allclose(reference(3), ours(3), atol=1e-5)  # odd sizes agree


def test_float64_models_are_refused(tmp_path):
    model = Sequential([nnkit.Dummy(dtype=np.float64), Dense(2)], input_shape=(3,))
    with pytest.raises(onnx_export.ExportError, match="only float32 models.*float64"):
        model.to_onnx(tmp_path / "m.onnx")


def test_without_the_onnx_package_the_error_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    model = Sequential([Dense(2)], input_shape=(3,))
    with pytest.raises(ImportError, match=r"pip install 'nnkit\[onnx\]'"):
        model.to_onnx(tmp_path / "m.onnx")
    model.save(tmp_path / "m.h5")
    assert main(["export", str(tmp_path / "m.h5"), str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'nnkit[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_import_nnkit_does_not_load_the_exporter():
    code = ("import sys, nnkit; nnkit.Sequential; nnkit.layers; "
            "print(sorted(m for m in ('onnx', 'nnkit.onnx_export') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=120).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------------------- CLI
def test_cli_export_writes_what_predict_computes(tmp_path, capsys):
    model = Sequential([Convolution2D(3, 3, pad=1), BatchNormalization(), Activation("relu"),
                        AvgPooling2D(3, 2, pad=1), Dense(4)], input_shape=(2, 9, 9), seed=0)
    model.build()
    randomize(model)
    model.save(tmp_path / "small.h5")
    out = tmp_path / "small.onnx"
    assert main(["export", str(tmp_path / "small.h5"), str(out)]) == 0
    assert "ONNX opset 22, input 'input' (batch, 2, 9, 9), output 'output' (batch, 4)" in \
        capsys.readouterr().out
    x = np.random.default_rng(2).standard_normal((3, 2, 9, 9)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(got - nnkit.load(tmp_path / "small.h5").predict(x)).max() < TOLERANCE


def test_cli_export_errors_exit_2(tmp_path, capsys):
    not_h5 = tmp_path / "job.conf"
    not_h5.write_text("name: 'x'\n")
    assert main(["export", str(tmp_path / "missing.h5"), str(tmp_path / "m.onnx")]) == 2
    assert main(["export", str(not_h5), str(tmp_path / "m.onnx")]) == 2
    model = Sequential([Convolution2D(2, 1), LRN2D(2, name="norm")], input_shape=(3, 4, 4))
    model.save(tmp_path / "lrn.h5")
    assert main(["export", str(tmp_path / "lrn.h5"), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "LRN2D 'norm': an even size (2) cannot be exported exactly" in err
    assert main(["export", str(tmp_path / "lrn.h5"), str(tmp_path / "nowhere" / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.onnx"))


# ------------------------------------------------------------------- the example nets, trained
def _train_export_compare(conf: str, steps: int, tmp_path: Path,
                          x_test: np.ndarray) -> tuple[float, float]:
    """``nnkit train`` a few steps, ``nnkit export`` the checkpoint; (max abs diff, max |y|)."""
    run_dir = tmp_path / "run"
    assert main(["train", str(ROOT / "examples" / conf), "--data-dir", str(DATA), "--run-dir",
                 str(run_dir), "--set", f"run.steps={steps}", "--set", "data.test.limit=500"]) == 0
    out = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), str(out)]) == 0
    model = nnkit.load(latest_checkpoint(run_dir))
    assert model.trainer.global_step == steps  # the weights are the trained ones
    expected = model.predict(x_test, batch_size=100)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x_test})[0]
    assert got.shape == expected.shape
    diff, scale = float(np.abs(got - expected).max()), float(np.abs(expected).max())
    print(f"{conf}: {steps} steps, {len(x_test)} test images, max abs diff {diff:.3g} "
          f"(outputs up to {scale:.3g})")
    assert diff < TOLERANCE
    assert diff <= 1e-4 * scale  # relative too: the CIFAR net's logits are small after a few steps
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.99
    return diff, scale


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no MNIST in {DATA}")
def test_every_layer_kind_in_one_net_trained_on_mnist_exports_exactly(tmp_path):
    """Trained weights and running statistics (not a fresh init) of every exported kind."""
    from nnkit.datasets import load_mnist
    images, labels = (a[:1280] for a in load_mnist(str(DATA), "train"))
    x = images[:, None].astype(np.float32) / 255
    init = "glorot_uniform"  # the default U(-0.05, 0.05) learns too slowly for 20 steps
    model = Sequential([Convolution2D(8, 5, pad=2, init=init), BatchNormalization(),
                        Activation("relu"), MaxPooling2D(3, 2), LRN2D(5, alpha=1e-3),
                        Convolution2D(8, 3, stride=2, init=init), Activation("tanh"),
                        AvgPooling2D(3, 2, pad=1), Dropout(0.3), Dense(32, init=init),
                        Activation("stanh"), Dense(10, init=init)],
                       input_shape=(1, 28, 28), seed=0)
    model.compile(nnkit.SGD(lr=0.05, momentum=0.9))
    model.fit(x, labels, batch_size=64, epochs=1, verbose=0)
    assert np.abs(model.layers[2].state["moving_mean"]).max() > 1e-3  # the statistics moved
    expected = model.predict(x[:300])
    got = onnx_outputs(model, x[:300], tmp_path / "all.onnx")
    diff = float(np.abs(got - expected).max())
    print(f"every kind, 20 steps on MNIST: max abs diff {diff:.3g} (outputs up to "
          f"{np.abs(expected).max():.3g})")
    assert diff < TOLERANCE
    assert (got.argmax(axis=1) == labels[:300]).mean() > 0.5  # it learned: real weights


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no MNIST in {DATA}")
def test_the_mnist_mlp_example_trained_exports_exactly(tmp_path):
    from nnkit.config import load_job
    job = load_job(str(ROOT / "examples" / "mnist_mlp.conf"),
                   [f"data.dir={DATA}", "data.test.limit=500"])
    x, _ = job.load_data("test", (1, 28, 28))
    _train_export_compare("mnist_mlp.conf", 20, tmp_path, x)


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "cifar10").is_dir(), reason=f"no CIFAR-10 in {DATA}")
def test_the_cifar10_cnn_example_trained_exports_exactly(tmp_path):
    from nnkit.config import load_job
    job = load_job(str(ROOT / "examples" / "cifar10_cnn.conf"),
                   [f"data.dir={DATA}", "data.test.limit=500"])
    x, _ = job.load_data("test", (3, 32, 32))  # with the training set's mean image subtracted
    _train_export_compare("cifar10_cnn.conf", 20, tmp_path, x)
