"""nnkit.keras, piece by piece: Keras 2.2.4's defaults, shapes, layouts, return forms, files.

References: Keras 2.2.4's sources (keras/layers/*.py, keras/optimizers.py,
keras/utils/conv_utils.py, keras/engine/training.py) for defaults and formulas; NumPy
channels-last forward passes written here for the weight layouts.
"""
import math

import numpy as np
import pytest

import nnkit.keras as keras
from helpers import DATA
from nnkit import layers as nn_layers, updaters
from nnkit.keras import backend as K
from nnkit.keras.layers import (Activation, AveragePooling2D, BatchNormalization, Conv2D, Dense,
                                Dropout, Flatten, MaxPooling2D)
from nnkit.keras.models import Sequential, load_model


def blobs(n=256, k=3, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 3
    y = rng.integers(0, k, n)
    return (centres[y] + rng.standard_normal((n, d))).astype(np.float32), y


def mlp(k=3, d=6, softmax=True):
    np.random.seed(0)
    model = Sequential([Dense(16, activation="relu", input_shape=(d,)),
                        Dense(k, activation="softmax" if softmax else None)])
    return model


# ----------------------------------------------------------------------------- the package
def test_import_forms_and_backend():
    from nnkit import keras as k2
    import nnkit.keras.layers as layers_module
    assert k2 is keras and layers_module.Dense is Dense
    assert K.image_data_format() == "channels_last" and K.epsilon() == 1e-7
    with pytest.raises(ValueError, match="channels_last"):
        K.set_image_data_format("channels_first")


def test_import_nnkit_does_not_import_keras():
    import subprocess
    import sys
    code = "import sys, nnkit; nnkit.Sequential; print('nnkit.keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- layers
def test_dense_defaults_glorot_uniform_kernel_and_zero_bias():
    model = Sequential([Dense(300, input_shape=(200,))])
    model.build()
    kernel, bias = model.get_weights()
    assert kernel.shape == (200, 300) and bias.shape == (300,)
    limit = math.sqrt(6 / (200 + 300))  # glorot_uniform
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.95 * limit
    assert abs(kernel.std() - limit / math.sqrt(3)) < 0.01 * limit
    assert not bias.any()
    dense = model.layers[1]
    assert isinstance(dense, nn_layers.Dense) and dense.init == "glorot_uniform"


def test_dense_activation_becomes_a_layer_and_initializers_map():
    model = Sequential([Dense(4, activation="tanh", input_dim=3, kernel_initializer="zeros",
                              bias_initializer="ones"), Activation("softmax"), Dropout(0.3)])
    model.build()
    types = [type(l).__name__ for l in model.layers]
    assert types == ["Dummy", "Dense", "Activation", "Activation", "Dropout"]
    assert model.layers[2].activation == "tanh" and model.layers[4].ratio == 0.3
    kernel, bias = model.get_weights()
    assert not kernel.any() and (bias == 1).all()
    with pytest.raises(ValueError, match="initializer 'lecun_normal' is not supported"):
        Dense(3, kernel_initializer="lecun_normal")
    with pytest.raises(ValueError, match="activation 'elu' is not supported"):
        Dense(3, activation="elu")
    with pytest.raises(TypeError, match="unsupported argument.*kernel_regularizer"):
        Dense(3, kernel_regularizer=object())


def test_pooling_stride_defaults_to_pool_size_and_valid_rounds_down():
    model = Sequential([MaxPooling2D(input_shape=(7, 7, 2)), AveragePooling2D((3, 3), strides=1)])
    walk = model.nnkit_model.shapes()
    assert walk[0][1] == (2, 3, 3)      # floor(7 / 2)
    assert walk[1][1] == (2, 1, 1)      # (3 - 3) / 1 + 1
    pool = model.layers[0]
    assert pool.pool_size == (2, 2) and pool.stride == (2, 2) and not pool.ceil_mode


def keras_output_length(size, kernel, padding, stride):
    """keras/utils/conv_utils.py conv_output_length (dilation 1)."""
    length = size if padding == "same" else size - kernel + 1
    return (length + stride - 1) // stride


@pytest.mark.parametrize("size,kernel,stride", [(8, 3, 1), (8, 2, 1), (8, 4, 1), (7, 3, 2),
                                                (8, 3, 2), (9, 4, 3), (5, 5, 1), (6, 1, 2)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv_output_shapes_follow_keras(size, kernel, stride, padding):
    model = Sequential([Conv2D(3, kernel, strides=stride, padding=padding,
                               input_shape=(size, size + 1, 2))])
    model.compile("sgd", "mse")
    x = np.zeros((2, size, size + 1, 2), np.float32)
    out = model.predict(x)
    expected = (keras_output_length(size, kernel, padding, stride),
                keras_output_length(size + 1, kernel, padding, stride))
    assert out.shape == (2, 3, *expected)  # predict gives nnkit's NCHW output


def conv_nhwc(x, kernel, bias, stride, pads):
    """A channels-last convolution: x (N, H, W, C), kernel (kh, kw, C, F), pads ((t, b), (l, r))."""
    x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw = kernel.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    windows = windows[:, ::stride, ::stride]  # (N, OH, OW, C, kh, kw)
    return np.einsum("nijcab,abcf->nijf", windows, kernel) + bias


@pytest.mark.parametrize("kernel,stride", [(2, 1), (3, 2), (4, 2), (3, 1)])
def test_same_padding_values_put_the_odd_pixel_after(kernel, stride):
    """TensorFlow's rule (tf.nn.convolution docs): pad_total = max((out - 1) * s + k - in, 0),
    pad_before = pad_total // 2, the rest after."""
    np.random.seed(1)
    model = Sequential([Conv2D(3, kernel, strides=stride, padding="same", input_shape=(7, 6, 2))])
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).standard_normal((2, 7, 6, 2)).astype(np.float32)
    got = model.predict(x).transpose(0, 2, 3, 1)
    kernel_w, bias = model.get_weights()
    pads = []
    for size in (7, 6):
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads.append((total // 2, total - total // 2))
    np.testing.assert_allclose(got, conv_nhwc(x, kernel_w, bias, stride, pads), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
def test_same_padding_matches_torch_for_even_kernels():
    torch = pytest.importorskip("torch")  # optional reference
    np.random.seed(2)
    model = Sequential([Conv2D(2, (2, 4), padding="same", input_shape=(5, 6, 3))])
    model.compile("sgd", "mse")
    x = np.random.default_rng(1).standard_normal((2, 5, 6, 3)).astype(np.float32)
    kernel, bias = model.get_weights()
    ref = torch.nn.functional.conv2d(torch.tensor(x.transpose(0, 3, 1, 2)),
                                     torch.tensor(kernel.transpose(3, 2, 0, 1)),
                                     torch.tensor(bias), padding="same")
    np.testing.assert_allclose(model.predict(x), ref.numpy(), rtol=1e-4, atol=1e-5)


def test_same_pooling():
    model = Sequential([MaxPooling2D(padding="same", input_shape=(5, 5, 1))])
    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    out = model.predict(x)[0, 0]
    np.testing.assert_array_equal(out, [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    bad = Sequential([MaxPooling2D((4, 4), padding="same", input_shape=(5, 5, 1))])
    with pytest.raises(ValueError, match="padding='same'.*only padding after"):
        bad.build()


def test_dense_on_images_needs_flatten():
    model = Sequential([Conv2D(2, 3, input_shape=(5, 5, 1)), Dense(3)])
    with pytest.raises(ValueError, match="add Flatten"):
        model.build()


# ----------------------------------------------------------------------------- weights
def small_cnn():
    np.random.seed(3)
    model = Sequential()
    model.add(Conv2D(3, (3, 2), activation="relu", input_shape=(6, 5, 2)))
    model.add(MaxPooling2D())
    model.add(Flatten())
    model.add(Dense(4))
    model.add(BatchNormalization())
    model.add(Dense(3, activation="softmax"))
    model.compile("adam", "sparse_categorical_crossentropy", ["acc"])
    return model


def keras_forward(x, weights):
    """small_cnn in Keras's channels-last semantics, from Keras-layout weights (eval mode)."""
    k1, b1, k2, b2, gamma, beta, mean, var, k3, b3 = weights
    h = np.maximum(conv_nhwc(x, k1, b1, 1, ((0, 0), (0, 0))), 0)        # (N, 4, 4, 3)
    n, hh, ww, c = h.shape
    h = h.reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))           # (N, 2, 2, 3)
    h = h.reshape(n, -1) @ k2 + b2                                          # Keras's H, W, C order
    h = gamma * (h - mean) / np.sqrt(var + 1e-3) + beta
    z = h @ k3 + b3
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_weights_are_in_keras_layout_and_give_keras_outputs():
    model = small_cnn()
    x = np.random.default_rng(4).standard_normal((8, 6, 5, 2)).astype(np.float32)
    model.fit(x, np.arange(8) % 3, epochs=2, batch_size=4, verbose=0)  # moving stats move
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(3, 2, 2, 3), (3,), (12, 4), (4,), (4,), (4,), (4,),
                                          (4,), (4, 3), (3,)]
    conv, dense = model.layers[1], model.layers[5]
    np.testing.assert_array_equal(weights[0], conv.params[0].data.transpose(2, 3, 1, 0))
    np.testing.assert_allclose(model.predict(x), keras_forward(x, weights), rtol=1e-4, atol=1e-6)
    # a round trip through set_weights, and Keras-layout weights from elsewhere
    rng = np.random.default_rng(5)
    new = [rng.standard_normal(w.shape).astype(np.float32) for w in weights]
    new[7] = np.abs(new[7]) + 0.5  # a variance
    model.set_weights(new)
    for a, b in zip(model.get_weights(), new):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(model.predict(x), keras_forward(x, new), rtol=1e-4, atol=1e-6)
    assert dense.params[0].data.shape == (4, 12)  # nnkit's own layout underneath
    with pytest.raises(ValueError, match=r"expected \(3, 2, 2, 3\)"):
        model.set_weights([new[0].transpose(3, 2, 0, 1)] + new[1:])  # nnkit's layout: refused
    with pytest.raises(ValueError, match="got 2 arrays"):
        model.set_weights(new[:2])


def test_save_and_load_model(tmp_path):
    model = small_cnn()
    x = np.random.default_rng(6).standard_normal((8, 6, 5, 2)).astype(np.float32)
    y = np.arange(8) % 3
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    path = tmp_path / "model.h5"
    model.save(path)
    again = load_model(path)
    assert isinstance(again, Sequential)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    for a, b in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert again.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)
    again.fit(x, y, epochs=1, batch_size=4, verbose=0)  # the optimizer came back too
    with pytest.raises(FileExistsError):
        model.save(path, overwrite=False)


# ----------------------------------------------------------------------------- compile, fit, evaluate
def test_history_keys_and_evaluate_forms():
    x, y = blobs()
    model = mlp()
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, keras.utils.to_categorical(y), batch_size=32, epochs=10, verbose=0,
                        validation_data=(x[:64], keras.utils.to_categorical(y[:64])))
    assert set(history.history) == {"loss", "acc", "val_loss", "val_acc", "accuracy", "val_accuracy"}
    assert history.epoch == list(range(10)) and len(history.history["val_acc"]) == 10
    assert history.params["epochs"] == 10 and history.params["batch_size"] == 32
    assert history.history["acc"][-1] > 0.9
    score = model.evaluate(x, keras.utils.to_categorical(y), verbose=0)
    assert isinstance(score, list) and len(score) == 2 and score[1] > 0.9
    as_dict = model.evaluate(x, y, return_dict=True)  # class indices work as well
    assert as_dict == {"loss": pytest.approx(score[0]), "acc": pytest.approx(score[1])}
    second = model.fit(x, y, epochs=1, verbose=0)  # a new History for each call
    assert second.epoch == [10] and len(second.history["loss"]) == 1
    probs = model.predict(x[:5])
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    assert (model.predict_classes(x[:5]) == probs.argmax(1)).all()


def test_evaluate_without_metrics_is_the_loss_and_mse_is_keras_mse():
    x, _ = blobs(64)
    np.random.seed(0)
    model = Sequential([Dense(2, input_shape=(6,), kernel_initializer="zeros")])
    model.compile(keras.optimizers.SGD(), "mse")
    target = np.ones((64, 2), np.float32)
    assert model.evaluate(x, target, verbose=0) == pytest.approx(1.0)  # mean((0 - 1)^2)
    with pytest.raises(ValueError, match="needs a cross-entropy loss"):
        model.compile("sgd", "mse", metrics=["accuracy"])


def test_validation_split_takes_the_last_part():
    x, y = blobs(200)
    model = mlp()
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    history = model.fit(x, y, epochs=2, verbose=0, validation_split=0.25, shuffle=True)
    loss, acc = model.evaluate(x[150:], y[150:], verbose=0)
    assert history.history["val_loss"][-1] == pytest.approx(loss)
    assert history.history["val_acc"][-1] == pytest.approx(acc)


def test_channels_last_images_are_converted():
    model = small_cnn()
    x = np.random.default_rng(7).standard_normal((4, 6, 5, 2)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x),
                                  model.nnkit_model.predict(x.transpose(0, 3, 1, 2).copy()))
    assert model.nnkit_model.input_shape == (2, 6, 5)


def test_fit_arguments_keras_refuses_or_renames():
    x, y = blobs(64)
    model = mlp()
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.warns(UserWarning, match="nb_epoch"):
        history = model.fit(x, y, nb_epoch=2, verbose=0)
    assert len(history.history["loss"]) == 2
    with pytest.raises(ValueError, match="class_weight is not supported"):
        model.fit(x, y, class_weight={0: 1.0})
    with pytest.raises(TypeError, match="unsupported argument.*epoch_count"):
        model.fit(x, y, epoch_count=2)
    with pytest.raises(ValueError, match="unsupported loss 'hinge'"):
        model.compile("sgd", "hinge")
    with pytest.raises(ValueError, match="unknown optimizer 'nadam'"):
        model.compile("nadam", "mse")


def test_softmax_output_trains_like_logits():
    """The issue's silent failure: a final softmax with RMSprop at Keras's default rate."""
    x, y = blobs(400, k=4)
    with_softmax, without = mlp(4), mlp(4, softmax=False)
    for model in (with_softmax, without):
        model.compile(keras.optimizers.RMSprop(), "sparse_categorical_crossentropy", ["acc"])
    h1 = with_softmax.fit(x, y, epochs=8, shuffle=False, verbose=0)
    h2 = without.fit(x, y, epochs=8, shuffle=False, verbose=0)
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-3)
    assert h1.history["acc"][-1] > 0.9


# ----------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("name,cls,expected", [
    ("sgd", updaters.SGD, {"lr": 0.01, "momentum": 0.0}),
    ("rmsprop", updaters.RMSProp, {"lr": 0.001, "rho": 0.9, "epsilon": 1e-7}),
    ("adagrad", updaters.AdaGrad, {"lr": 0.01, "epsilon": 1e-7}),
    ("adadelta", updaters.AdaDelta, {"lr": 1.0, "rho": 0.95, "epsilon": 1e-7}),
    ("adam", updaters.Adam, {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7}),
])
def test_optimizer_defaults_by_name(name, cls, expected):
    updater = keras.optimizers.get(name)
    assert type(updater) is cls
    assert updater.base_lr == expected.pop("lr") and updater.decay == 0
    for key, value in expected.items():
        assert getattr(updater, key) == value
    assert updater.schedule.lr_type == "fixed"


def test_optimizer_arguments():
    sgd = keras.optimizers.SGD(lr=0.1, momentum=0.9, nesterov=True, decay=1e-2, clipnorm=1.0)
    assert type(sgd) is updaters.Nesterov and sgd.momentum == 0.9 and sgd.clip_norm == 1.0
    assert sgd.schedule.lr_type == "inverse_t" and sgd.schedule(100) == pytest.approx(0.1 / 2)
    assert sgd.decay == 0  # Keras's decay is a rate decay, not weight decay
    with pytest.raises(ValueError, match="amsgrad"):
        keras.optimizers.Adam(amsgrad=True)


def keras_step(rule, w, g, slots, t, lr, **a):
    """One update by the formulas of keras/optimizers.py (2.2.4); returns the new w."""
    eps = a.get("epsilon", 1e-7)
    if rule == "sgd":
        slots["v"] = a["momentum"] * slots.get("v", 0) - lr * g
        return w + slots["v"]
    if rule == "rmsprop":
        slots["a"] = a["rho"] * slots.get("a", 0) + (1 - a["rho"]) * g ** 2
        return w - lr * g / (np.sqrt(slots["a"]) + eps)
    if rule == "adagrad":
        slots["a"] = slots.get("a", 0) + g ** 2
        return w - lr * g / (np.sqrt(slots["a"]) + eps)
    if rule == "adadelta":
        rho = a["rho"]
        slots["a"] = rho * slots.get("a", 0) + (1 - rho) * g ** 2
        update = g * np.sqrt(slots.get("d", 0) + eps) / np.sqrt(slots["a"] + eps)
        slots["d"] = rho * slots.get("d", 0) + (1 - rho) * update ** 2
        return w - lr * update
    b1, b2 = a["beta_1"], a["beta_2"]
    lr_t = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    slots["m"] = b1 * slots.get("m", 0) + (1 - b1) * g
    slots["v"] = b2 * slots.get("v", 0) + (1 - b2) * g ** 2
    return w - lr_t * slots["m"] / (np.sqrt(slots["v"]) + eps)


@pytest.mark.parametrize("rule,make,args,atol", [
    ("sgd", lambda: keras.optimizers.SGD(lr=0.1, momentum=0.8), {"momentum": 0.8}, 1e-12),
    ("rmsprop", lambda: keras.optimizers.RMSprop(lr=0.01), {"rho": 0.9}, 1e-12),
    ("adagrad", lambda: keras.optimizers.Adagrad(), {}, 1e-12),
    ("adadelta", lambda: keras.optimizers.Adadelta(), {"rho": 0.95}, 1e-12),
    ("adam", lambda: keras.optimizers.Adam(lr=0.01), {"beta_1": 0.9, "beta_2": 0.999}, 1e-6),
])
def test_updates_follow_keras_formulas(rule, make, args, atol):
    rng = np.random.default_rng(8)
    layer = nn_layers.Dense(3, bias=False)
    layer.build((4,), np.float64)
    w = layer.params[0].data.copy()
    updater, slots = make(), {}
    for t in range(1, 6):
        g = rng.standard_normal(w.shape)
        layer.params[0].grad[...] = g
        updater.Update(t, layer)
        w = keras_step(rule, w, g, slots, t, updater.base_lr, **args)
        # Adam: Keras adds epsilon before the bias correction (see nnkit.keras.optimizers);
        # with steps of about lr = 0.01 that moves them by less than 1e-6
        np.testing.assert_allclose(layer.params[0].data, w, rtol=1e-10, atol=atol)


# ----------------------------------------------------------------------------- callbacks
def test_callbacks_see_keras_names_and_can_stop():
    x, y = blobs()
    model = mlp()
    model.compile("rmsprop", "sparse_categorical_crossentropy", ["accuracy"])
    seen = []

    class Stopper(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, logs["acc"], logs["val_acc"], self.params["epochs"]))
            if epoch == 1:
                self.model.stop_training = True
            assert self.model is model

    lam = keras.callbacks.LambdaCallback(on_train_begin=lambda logs: seen.append("begin"))
    history = model.fit(x, y, epochs=10, verbose=0, validation_data=(x, y), callbacks=[lam, Stopper()])
    assert seen[0] == "begin" and [s[0] for s in seen[1:]] == [0, 1] and seen[1][3] == 10
    assert len(history.history["loss"]) == 2


def test_early_stopping_on_val_acc_and_model_checkpoint(tmp_path):
    x, y = blobs()
    model = mlp()
    model.compile("sgd", "sparse_categorical_crossentropy", ["accuracy"])
    path = tmp_path / "best-{epoch:02d}.h5"
    early = keras.callbacks.EarlyStopping(monitor="val_acc", patience=0, min_delta=1.0)
    check = keras.callbacks.ModelCheckpoint(str(path), monitor="val_acc", save_best_only=True)
    history = model.fit(x, y, epochs=10, verbose=0, validation_data=(x, y), callbacks=[early, check])
    assert len(history.history["loss"]) == 2  # no gain of 1.0 in accuracy after the first epoch
    saved = tmp_path / "best-01.h5"
    assert saved.exists()
    assert load_model(saved).predict(x[:3]).shape == (3, 3)
    with pytest.raises(ValueError, match="baseline"):
        keras.callbacks.EarlyStopping(baseline=0.5)


# ----------------------------------------------------------------------------- utils, datasets
def test_to_categorical():
    out = keras.utils.to_categorical([[1], [0], [3]])
    assert out.shape == (3, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out.argmax(1), [1, 0, 3])
    assert keras.utils.to_categorical(np.array([[0, 1], [2, 1]]), 5).shape == (2, 2, 5)
    assert keras.utils.np_utils.to_categorical([2], 3).tolist() == [[0, 0, 1]]
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        keras.utils.to_categorical([3], 3)


@pytest.mark.parametrize("name,shape,label_shape", [
    ("mnist", (28, 28), ()), ("fashion_mnist", (28, 28), ()), ("cifar10", (32, 32, 3), (1,))])
def test_datasets_have_keras_shapes_and_dtypes(name, shape, label_shape, monkeypatch):
    folder = {"mnist": "mnist", "fashion_mnist": "fashion-mnist", "cifar10": "cifar10"}[name]
    if not (DATA / folder).is_dir():
        pytest.skip(f"needs ../shared/data/{folder}")
    monkeypatch.setenv("NNKIT_DATA", str(DATA))
    (x, y), (xt, yt) = getattr(keras.datasets, name).load_data()
    train = 50000 if name == "cifar10" else 60000
    assert x.shape == (train, *shape) and xt.shape == (10000, *shape)
    assert y.shape == (train, *label_shape) and yt.shape == (10000, *label_shape)
    assert x.dtype == y.dtype == np.uint8 and x.flags.c_contiguous
    assert set(np.unique(yt)) == set(range(10))
    if name == "cifar10":  # channels last: the three planes of a pixel sit together
        from nnkit.datasets import load_cifar10
        nchw, _ = load_cifar10(DATA, "test")
        np.testing.assert_array_equal(xt[:5], nchw[:5].transpose(0, 2, 3, 1))


def test_batch_normalization_axis_and_batch_input_shape():
    model = Sequential([Dense(4, batch_input_shape=(None, 3)), BatchNormalization(axis=1)])
    model.build()
    assert model.nnkit_model.input_shape == (3,)
    images = Sequential([Conv2D(2, 3, input_shape=(5, 5, 1)), BatchNormalization(axis=3)])
    images.build()
    bad = Sequential([Conv2D(2, 3, input_shape=(5, 5, 1)), BatchNormalization(axis=1)])
    with pytest.raises(ValueError, match="axis=1 .*only the channel axis"):
        bad.build()
