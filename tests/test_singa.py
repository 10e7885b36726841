"""nnkit.singa: SINGA 0.3's Python API on nnkit, with SINGA's own rules.

The scripts below are written here in the style of SINGA 0.3's four examples
(tool/python/examples/train_mnist.py and train_cifar10.py for the per-layer API, mnist_mlp.py
and cifar10_cnn.py for the model API), with the same calls on smaller nets and few steps, on
real MNIST and CIFAR-10; each asserts that it learns.
"""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from helpers import DATA, ROOT
from nnkit import layers as nnkit_layers
from nnkit.datasets import load_mnist, read_cifar_bin
from nnkit.layers import set_seed
from nnkit.layers.base import LAYER_CLASSES
from nnkit.singa.driver import Driver
from nnkit.singa.initializations import get_init_values
from nnkit.singa.layer import *  # noqa: F401,F403  (as the SINGA scripts import it)
from nnkit.singa.model import *  # noqa: F401,F403
from nnkit.singa.parameter import Parameter

MNIST = DATA / "mnist"
CIFAR = DATA / "cifar10"
needs_mnist = pytest.mark.skipif(not MNIST.is_dir(), reason="needs ../shared/data/mnist")
needs_cifar = pytest.mark.skipif(not CIFAR.is_dir(), reason="needs ../shared/data/cifar10")


def cifar_net(filters=(32, 32, 64), first_std=0.0001):
    """SINGA's CIFAR-10 CNN (train_cifar10.py / cifar10_cnn.py), per-layer, without its input;
    the tests that train it narrow it and start its first layer larger, to learn in few steps."""
    a, b, c = filters
    return [Convolution2D(a, 5, 1, 2, w_std=first_std, b_lr=2),
            MaxPooling2D(pool_size=(3, 3), stride=2),
            Activation('relu'),
            LRN2D(3, alpha=0.00005, beta=0.75),
            Convolution2D(b, 5, 1, 2, b_lr=2),
            Activation('relu'),
            AvgPooling2D(pool_size=(3, 3), stride=2),
            LRN2D(3, alpha=0.00005, beta=0.75),
            Convolution2D(c, 5, 1, 2),
            Activation('relu'),
            AvgPooling2D(pool_size=(3, 3), stride=2),
            Dense(10, w_wd=250, b_lr=2, b_wd=0)]


def forward(nn, xb):
    nn[0].Feed(xb)
    for h in range(1, len(nn)):
        nn[h].ComputeFeature(nn[h - 1])
    return nn[-1].data


def train_steps(nn, loss, label, sgd, x, y, batchsize, steps, first_step=0):
    """The examples' loop: Feed, ComputeFeature, loss, ComputeGradient, sgd.Update(i+1, layer)."""
    for i in range(first_step, first_step + steps):
        xb, yb = x[i * batchsize:(i + 1) * batchsize, :], y[i * batchsize:(i + 1) * batchsize, :]
        nn[0].Feed(xb)
        label.Feed(yb)
        for h in range(1, len(nn)):
            nn[h].ComputeFeature(nn[h - 1])
        loss.ComputeFeature(nn[-1], label)
        loss.ComputeGradient()
        for h in range(len(nn) - 1, 0, -1):
            nn[h].ComputeGradient()
            sgd.Update(i + 1, nn[h])


def held_out_loss(nn, x, y):
    label, loss = LabelInput(), Loss('softmaxloss')
    forward(nn, x)
    label.Feed(y)
    loss.ComputeFeature(nn[-1], label)
    return loss.loss


def accuracy(nn, x, y):
    return float(np.mean(np.argmax(forward(nn, x), axis=1) == y.ravel()))


# ------------------------------------------------------------------------ SINGA's rules

def test_cifar_net_last_dense_gets_576_inputs_while_nnkit_pooling_still_rounds_up():
    nn = [ImageInput(32, 32, 3)] + cifar_net()
    forward(nn, np.zeros((2, 3 * 32 * 32), np.float32))
    assert [layer.data.shape[2] for layer in nn[1:12] if layer.data.ndim == 4] == \
        [32, 15, 15, 15, 15, 15, 7, 7, 7, 7, 3]  # floor((H - 3) / 2) + 1 after each pooling
    w, b = nn[-1].GetParams()
    assert w.shape == (10, 576) and b.shape == (10, 1)
    # nnkit's own pooling keeps Caffe's ceil: the same net would give its Dense 64 * 4 * 4 inputs.
    assert nnkit_layers.MaxPooling2D((3, 3), 2).output_shape((32, 32, 32)) == (32, 16, 16)
    assert nnkit_layers.AvgPooling2D((3, 3), 2).output_shape((64, 8, 8)) == (64, 4, 4)  # 32->16->8->4


def test_pooling_matches_singa_formula():
    """Floor-mode max and average over 3x3 windows, stride 2 (common.cc Forward*Pooling)."""
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    src = Dummy()
    src.Feed(x.shape, x)
    for cls, reduce in ((MaxPooling2D, np.max), (AvgPooling2D, np.mean)):
        pool = cls(pool_size=3, stride=2)
        pool.ComputeFeature(src)
        expected = np.array([[[[reduce(x[n, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3]) for j in range(3)]
                               for i in range(3)] for c in range(3)] for n in range(2)])
        # A float32 mean of nine O(1) values, summed in another order than numpy's: a mean
        # near zero differs by rounding far beyond rtol alone.
        np.testing.assert_allclose(pool.data, expected, rtol=1e-6, atol=1e-6)
    assert MaxPooling2D(pool_size=2).output_shape((1, 5, 5)) == (1, 4, 4)  # SINGA's stride 1
    assert MaxPooling2D(pool_size=3, stride=2, ignore_border=False).pad == (1, 1)
    with pytest.raises(ValueError, match="square"):
        MaxPooling2D(pool_size=(2, 3))


def test_initializer_defaults_are_singas():
    assert get_init_values("uniform") == {"low": -0.05, "high": 0.05}
    assert get_init_values("uniform", scale=0.3) == {"low": -0.3, "high": 0.3}
    assert get_init_values("lrn2d", alpha=2) == {"alpha": 2, "beta": 0.75, "knorm": 1.0}
    src = Dummy()
    src.Feed((4, 1000), np.zeros((4, 1000)))
    plain, uniform = Dense(2000), Dense(2000, init='uniform')
    for layer in (plain, uniform):
        layer.ComputeFeature(src)
    w, b = plain.GetParams()
    assert abs(w.std() - 0.01) < 0.0005 and abs(w.mean()) < 0.0005 and not b.any()  # gaussian, 0
    w, b = uniform.GetParams()   # init= applies to the bias too (U(-0.05, 0.05))
    assert -0.05 <= w.min() < -0.049 and 0.049 < w.max() <= 0.05
    assert -0.05 <= b.min() < -0.04 and 0.04 < b.max() <= 0.05
    conv, dense = cifar_net()[0], cifar_net()[-1]
    assert conv._w_spec[0].value("std") == 0.0001 and conv._b_spec[1] == 2  # w_std, b_lr
    assert [(p.lr_mult, p.wd_mult) for p in dense.params] == [(1, 250), (2, 0)]
    # nnkit's own Dense keeps its uniform default.
    assert nnkit_layers.Dense(3).params[0].spec.kind == "uniform"
    # Parameter objects: SINGA's ParamGen default (uniform on [-1, 1]) and w_ values on top.
    layer = Dense(3, w_param=Parameter(lr=3), b_param=Parameter(init='constant', value=0.5))
    layer.ComputeFeature(src)
    w, b = layer.GetParams()
    assert 0.5 < np.abs(w).max() <= 1 and np.all(b == 0.5) and layer.params[0].lr_mult == 3
    # One Parameter shared by layers, as SINGA's cifar10_cnn_parameter.py: the layer's b_lr is
    # written into it (set_param_field), and update() changes what later layers get.
    parw, parb = Parameter(init='gaussian', std=0.0001), Parameter(init='constant')
    first = Convolution2D(4, 3, w_param=parw, b_param=parb, b_lr=2)
    parw.update(std=0.01)
    second = Convolution2D(4, 3, w_param=parw, b_param=parb)
    assert first._w_spec[0].value("std") == 0.0001 and second._w_spec[0].value("std") == 0.01
    assert first._b_spec[1] == second._b_spec[1] == 2
    with pytest.raises(ValueError, match="Dense: w_param: .*uniform.*std"):
        Dense(3, init='uniform', w_std=0.1)


def test_getparams_and_setparams_take_singas_shapes():
    src = Dummy()
    src.Feed((2, 3, 6, 6), np.ones((2, 3, 6, 6)))
    conv = Convolution2D(4, 3)
    conv.ComputeFeature(src)
    w, b = conv.GetParams()
    assert w.shape == (4, 27) and b.shape == (4, 1)
    w[...] = 0  # copies, as SINGA's
    assert conv.params[0].data.any()
    w = np.arange(4 * 27, dtype=np.float32).reshape(4, 27)
    conv.SetParams(w, np.full((4, 1), 2.0))
    assert conv.params[0].data.shape == (4, 3, 3, 3)
    np.testing.assert_array_equal(conv.params[0].data.reshape(4, 27), w)  # (C, kh, kw) order
    conv.SetParams(conv.params[0].data.copy(), np.zeros(4))  # nnkit's shapes too
    with pytest.raises(ValueError, match=r"weight has shape \(4, 27\) \(SINGA\) or \(4, 3, 3, 3\)"):
        conv.SetParams(np.zeros((27, 4)), np.zeros(4))
    assert Convolution2D(2, (3, 5)).kernel == (5, 3)  # SINGA's (x, y): width first


def test_lrn2d_defaults_and_formula():
    x = np.random.default_rng(1).normal(size=(2, 5, 3, 3))
    src = Dummy(dtype=np.float64)
    src.Feed(x.shape, x)
    lrn = LRN2D(3)
    lrn.ComputeFeature(src)
    padded = np.pad(x ** 2, ((0, 0), (1, 1), (0, 0), (0, 0)))
    window = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    np.testing.assert_allclose(lrn.data, x / (1 + 1 / 3 * window) ** 0.75, rtol=1e-12)
    lrn = LRN2D(3, alpha=0.00005, beta=0.5, knorm=2)
    assert (lrn.alpha, lrn.beta, lrn.k) == (0.00005, 0.5, 2)
    with pytest.raises(ValueError, match="odd"):
        LRN2D(4)


def test_sgd_schedules_and_rule():
    sgd = SGD(lr=0.001, lr_type='step')
    assert sgd.schedule(59) == 0.001 and sgd.schedule(120) == pytest.approx(0.001 * 0.997 ** 2)
    sgd = SGD(decay=0.004, momentum=0.9, lr_type='manual', step=(0, 60000, 65000),
              step_lr=(0.001, 0.0001, 0.00001))
    assert [sgd.schedule(s) for s in (0, 59999, 60000, 70000)] == [0.001, 0.001, 0.0001, 0.00001]
    assert SGD().schedule(10 ** 6) == 0.01  # SINGA's defaults: lr 0.01, fixed
    # SINGA's SGDUpdater: g += wd*w; h = mu*h - lr*g; w += h, with the params' multipliers.
    layer = Dense(2, w_wd=2, b_lr=3)
    src = Dummy(dtype=np.float64)
    src.Feed((1, 2), np.ones((1, 2)))
    layer.ComputeFeature(src)
    w0 = layer.params[0].data.copy()
    for p in layer.params:
        p.grad[...] = 1.0
    sgd = SGD(lr=0.1, decay=0.5, momentum=0.9)
    sgd.Update(1, layer)
    np.testing.assert_allclose(layer.params[0].data, w0 - 0.1 * (1 + 0.5 * 2 * w0))
    np.testing.assert_allclose(layer.params[1].data, -0.3 * 1.0)  # bias 0: decay adds nothing
    with pytest.raises(ValueError, match="lr_type 'poly'"):
        SGD(lr_type='poly')
    assert SGD(clip_low=-1, clip_high=1).clip_value == 1


# ------------------------------------------------------------------------ per-layer scripts

@needs_mnist
def test_train_mnist_style_script_learns_and_parameters_round_trip(tmp_path):
    x, y = load_mnist(DATA, "train")
    x = x.reshape(len(x), -1)[:9600]
    y = y.reshape(len(y), 1)[:9600]
    d = Driver()
    d.Init(sys.argv)
    input = ImageInput(28, 28)
    label = LabelInput()
    nn = [input, Dense(300, init='uniform'), Activation('stanh'), Dense(100, init='uniform'),
          Activation('stanh'), Dense(10, init='uniform')]
    loss = Loss('softmaxloss')
    sgd = SGD(lr=0.05, momentum=0.9, lr_type='step')  # the example: SGD(lr=0.001, lr_type='step')
    xs = x / 255.0
    train_steps(nn, loss, label, sgd, xs, y, 64, 140)
    loss_now, acc_now = loss.display()
    held_out = accuracy(nn, xs[-600:], y[-600:])
    print(f"per-layer MNIST: 140 steps, batch loss {loss_now:.3f}, held-out accuracy {held_out:.3f}")
    assert held_out > 0.75

    path = save_model_parameter(140, tmp_path, nn)
    assert path == tmp_path / "step140-worker0"
    # A fresh hand-built list: unique names come by position, nothing is built beforehand.
    twin = [ImageInput(28, 28), Dense(300), Activation('stanh'), Dense(100), Activation('stanh'),
            Dense(10)]
    assert load_model_parameter(path, twin, batchsize=64) == 140
    assert load_model_parameter(tmp_path, twin) == 140  # a folder: its latest step file
    np.testing.assert_array_equal(forward(twin, xs[:50]), forward(nn, xs[:50]))
    built_elsewhere = [ImageInput(28, 28), Dense(300), Activation('stanh'), Dense(100),
                       Activation('stanh'), Dense(10)]
    src = Dummy()  # its second Dense built for 7 inputs
    src.Feed((1, 7), np.zeros((1, 7)))
    built_elsewhere[3].ComputeFeature(src)
    with pytest.raises(ValueError, match=r"built for input \(7,\), but the layer before it gives \(300,\)"):
        load_model_parameter(path, built_elsewhere)
    wrong = [Dummy(), Dense(300), Dense(10)]
    with pytest.raises(ValueError, match="data_shape"):
        load_model_parameter(path, wrong)
    with pytest.raises(ValueError, match="in the file but in no layer: dense_3/weight"):
        load_model_parameter(path, wrong, data_shape=(64, 784))  # names go by type and position


@needs_cifar
@pytest.mark.slow  # about a minute on a loaded 2-core machine
def test_train_cifar10_style_script_learns():
    x, y = read_cifar_bin(CIFAR / "data_batch_1.bin.gz")
    x = x.reshape(len(x), -1)
    mean_image = np.average(x, axis=0)
    x = x[:6400] - mean_image
    y = np.asarray(y[:6400], dtype=np.uint8).reshape(-1, 1)
    Driver().Init(sys.argv)
    input = ImageInput(32, 32, 3)
    label = LabelInput()
    nn = [input] + cifar_net(filters=(16, 16, 32), first_std=0.01)
    # Seeded: 120 steps at lr 0.001 is where this net leaves its initial plateau, and some
    # draws leave it later (seeds 0-5: held-out loss margins +0.165, -0.019, +0.189, +0.075,
    # +0.187, +0.100), so an unseeded run failed about one time in six.
    set_seed(nn, 0)
    loss = Loss('softmaxloss')
    sgd = SGD(decay=0.004, momentum=0.9, lr_type='manual', step=(0, 60000, 65000),
              step_lr=(0.001, 0.0001, 0.00001))
    held_out = (x[-400:], y[-400:])
    before = held_out_loss(nn, *held_out), accuracy(nn, *held_out)
    train_steps(nn, loss, label, sgd, x, y, 50, 120)
    after = held_out_loss(nn, *held_out), accuracy(nn, *held_out)
    print(f"per-layer CIFAR-10, 120 steps: held-out loss {before[0]:.3f} -> {after[0]:.3f}, "
          f"accuracy {before[1]:.3f} -> {after[1]:.3f}")
    assert after[0] < before[0] - 0.05 and after[1] > before[1] + 0.05
    assert nn[-1].GetParams()[0].shape == (10, 32 * 3 * 3)


def test_dense_activation_is_for_the_model_api_only():
    src = Dummy()
    src.Feed((2, 3), -np.ones((2, 3)))
    layer = Dense(4, activation='relu', init='constant')
    with pytest.warns(UserWarning, match="activation='relu' is applied by the model API only"):
        layer.ComputeFeature(src)
    assert layer.mask.activation == 'relu' and np.all(layer.data == 0)  # constant 0: 0 either way


# ------------------------------------------------------------------------ model-API scripts

def mnist_data(**pvalues):
    """``examples/datasets/mnist.py``'s load_data, pointed at the IDX files."""
    store = Store(path=str(MNIST / "train-images-idx3-ubyte.gz"), backend='kvfile', **pvalues)
    data_train = Data(load='recordinput', phase='train', conf=store)
    store = Store(path=str(MNIST / "t10k-images-idx3-ubyte.gz"), backend='kvfile', **pvalues)
    data_test = Data(load='recordinput', phase='test', conf=store)
    return data_train, data_test


@needs_mnist
def test_mnist_mlp_style_script_learns_and_checkpoints(tmp_path, capsys):
    pvalues = {'batchsize': 64, 'shape': 784, 'random_skip': 5000,
               'std_value': 127.5, 'mean_value': 127.5}
    X_train, X_test = mnist_data(**pvalues)
    workspace = tmp_path / "mnist"
    m = Sequential('mlp', argv=sys.argv, seed=0)
    m.add(Dense(256, init='uniform', activation='tanh'))
    m.add(Dense(64, init='uniform', activation='tanh'))
    m.add(Dense(10, init='uniform', activation='softmax'))
    sgd = SGD(lr=0.05, momentum=0.9, lr_type='step')  # the example: SGD(lr=0.001, lr_type='step')
    with pytest.warns(UserWarning, match="Cluster is accepted but has no effect"):
        topo = Cluster(workspace)
    m.compile(loss='categorical_crossentropy', optimizer=sgd, cluster=topo)
    assert m.fit(X_train, nb_epoch=150, with_test=True) is None  # trains in evaluate
    result = m.evaluate(X_test, batch_size=100, test_steps=10, test_freq=75)
    out = capsys.readouterr().out
    assert "Test @ step 0  loss = " in out and "Train @ step 0  loss = " in out
    assert sorted(step for step, r in result.items() if "test_acc" in r) == [0, 75]
    assert sorted(step for step, r in result.items() if "acc" in r) == list(range(0, 150, 15))
    print(f"model-API MNIST MLP: test accuracy {result[0]['test_acc']:.3f} -> "
          f"{result[75]['test_acc']:.3f} (step 75), train {result[135]['acc']:.3f} (step 135)")
    assert result[0]['test_acc'] < 0.3 and result[75]['test_acc'] > 0.75
    assert result[135]['acc'] > 0.75 and result[135]['loss'] < result[0]['loss'] / 2
    # SINGA's compile turned the final softmax into the loss: the net ends in scores.
    assert type(m.net.layers[-1]).__name__ == "Dense" and m.net.loss_layer.lossname == "softmaxloss"
    assert type(m.net.layers[1]).__name__ == "Normalization"
    ckpts = sorted(p.name for p in (workspace / "checkpoint").iterdir())
    assert ckpts == ["step0-worker0", "step150-worker0"]  # CheckpointNow(0) and the end
    assert m.last_checkpoint_path == workspace / "checkpoint" / "step150-worker0"

    # A model that never trained tests the parameters of a checkpoint (SINGA's test mode).
    again = Sequential('mlp', argv=sys.argv)
    for n, act in ((256, 'tanh'), (64, 'tanh'), (10, 'softmax')):
        again.add(Dense(n, init='uniform', activation=act))
    again.compile(loss='categorical_crossentropy', optimizer=SGD())
    np.save(tmp_path / "mean.npy", np.full(784, 127.5))  # mean_file as an array: the same mean
    fresh_pvalues = {**pvalues, 'random_skip': 0, 'mean_file': str(tmp_path / "mean.npy")}
    del fresh_pvalues['mean_value']
    _, fresh_test = mnist_data(**fresh_pvalues)
    tested = again.evaluate(fresh_test, batch_size=100, test_steps=10,
                            checkpoint_path=m.last_checkpoint_path)
    assert tested[0]['test_acc'] > 0.75


@needs_cifar
@pytest.mark.slow  # about a minute on a loaded 2-core machine
def test_cifar10_cnn_style_script_learns(tmp_path):
    train_files = [str(CIFAR / f"data_batch_{i}.bin.gz") for i in (1, 2)]
    store = Store(path=train_files, mean_file=train_files, backend='kvfile', random_skip=5000,
                  batchsize=50, shape=(3, 32, 32))
    X_train = Data(load='recordinput', phase='train', conf=store)
    store = Store(path=str(CIFAR / "test_batch.bin.gz"), mean_file=train_files, backend='kvfile',
                  batchsize=50, shape=(3, 32, 32))
    X_test = Data(load='recordinput', phase='test', conf=store)

    m = Sequential('cifar10-cnn', sys.argv, seed=1)
    for layer in cifar_net(filters=(16, 16, 32), first_std=0.01)[:-1]:
        m.add(layer)
    m.add(Dense(10, w_wd=250, b_lr=2, b_wd=0, activation='softmax'))
    sgd = SGD(decay=0.004, momentum=0.9, lr_type='manual', step=(0, 60000, 65000),
              step_lr=(0.001, 0.0001, 0.00001))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        topo = Cluster(tmp_path / "cifar10")
    m.compile(loss='categorical_crossentropy', optimizer=sgd, cluster=topo)
    m.fit(X_train, nb_epoch=120, with_test=True, disp_freq=30)
    result = m.evaluate(X_test, test_steps=8, test_freq=119)
    first, last = result[0], result[119]
    print(f"model-API CIFAR-10 CNN, 119 steps: test loss {first['test_loss']:.3f} -> "
          f"{last['test_loss']:.3f}, accuracy {first['test_acc']:.3f} -> {last['test_acc']:.3f}")
    assert last['test_loss'] < first['test_loss'] - 0.05
    assert last['test_acc'] > first['test_acc'] + 0.05
    assert m.net.layers[-1].params[0].data.shape == (10, 32 * 3 * 3)
    mean = m.net.layers[1].mean
    assert mean.shape == (3 * 32 * 32,) and 100 < mean.mean() < 140  # CIFAR's mean image


def test_compile_folds_a_trailing_softmax_activation_too():
    m = Sequential('m', [])
    m.add(Dense(4))
    m.add(Activation('softmax'))
    m.compile(loss='categorical_crossentropy', optimizer=SGD())
    assert len(m.layers) == 1
    with pytest.raises(ValueError, match="'mean_squared_error' is not supported"):
        m.compile(loss='mean_squared_error', optimizer=SGD())


@needs_mnist
def test_model_api_errors_name_the_problem(tmp_path):
    with pytest.raises(TypeError, match="Store: unknown field.*bacthsize"):
        Store(path="x", bacthsize=3)
    lone = tmp_path / "some-images-idx3-ubyte"
    lone.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no label file .*some-labels-idx1-ubyte"):
        Store(path=str(lone), shape=784).examples()
    with pytest.raises(ValueError, match=r"shape \(100,\) does not fit examples of shape \(28, 28\)"):
        Store(path=str(MNIST / "t10k-images-idx3-ubyte.gz"), shape=100).examples()
    kvfile = tmp_path / "train_data.bin"
    kvfile.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not SINGA's kvfile"):
        Store(path=str(kvfile)).examples()
    with pytest.raises(ValueError, match="checkpoint= .* not supported"):
        Data(load='recordinput', checkpoint=["a"])
    m = Sequential('m', [])
    m.add(Dense(10))
    data, _ = mnist_data(batchsize=8, shape=784)
    with pytest.raises(RuntimeError, match="compile"):
        m.fit(data, nb_epoch=2)
    m.compile(loss='categorical_crossentropy', optimizer=SGD())
    with pytest.raises(TypeError, match="fit: unknown field.*nb_steps"):
        m.fit(data, nb_epoch=2, nb_steps=3)
    with pytest.raises(ValueError, match="'cd' is not supported"):
        m.fit(data, alg='cd', nb_epoch=2)


# ------------------------------------------------------------------------ the package

def test_singa_layers_do_not_replace_nnkits_in_the_registry():
    assert LAYER_CLASSES["Dense"] is nnkit_layers.Dense
    assert LAYER_CLASSES["MaxPooling2D"] is nnkit_layers.MaxPooling2D
    # A model of SINGA layers rebuilds from its config with nnkit's layers, same init.
    from nnkit import Sequential as NnkitSequential
    model = NnkitSequential([Dense(5, init="uniform"), Activation()],
                            input_shape=(3,))
    model.build()
    rebuilt = NnkitSequential.from_config(model.get_config())
    rebuilt.build()
    assert rebuilt.layers[1].params[1].spec == model.layers[1].params[1].spec
    assert rebuilt.layers[2].activation == 'stanh'


def test_a_model_of_singa_layers_saves_and_loads_as_nnkit_layers(tmp_path):
    """The job schema describes a SINGA layer as the nnkit layer it extends, SINGA's
    settings written out (floor pooling, its init), so nnkit.save/nnkit.load need no code."""
    import nnkit
    model = nnkit.Sequential([Convolution2D(4, 3), MaxPooling2D(3, 2), LRN2D(3), Activation(),
                              Dense(10, init='uniform')], input_shape=(3, 9, 9), seed=0)
    model.compile(SGD(lr=0.1, lr_type='step'), loss='softmaxloss')
    model.build()
    model.save(tmp_path / "m.h5")
    loaded = nnkit.load(tmp_path / "m.h5")
    assert [type(layer) for layer in loaded.layers[1:]] == [
        nnkit_layers.Convolution2D, nnkit_layers.MaxPooling2D, nnkit_layers.LRN2D,
        nnkit_layers.Activation, nnkit_layers.Dense]
    assert loaded.layers[2].ceil_mode is False and loaded.layers[2].stride == (2, 2)
    assert loaded.layers[3].alpha == 1 and loaded.layers[4].activation == 'stanh'
    assert loaded.layers[5].params[1].spec == model.layers[5].params[1].spec  # uniform bias
    x = np.random.default_rng(0).normal(size=(2, 3, 9, 9)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_import_nnkit_does_not_import_singa():
    code = ("import sys, nnkit; nnkit.Sequential; from nnkit import *; "
            "assert not any(m.startswith('nnkit.singa') for m in sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
