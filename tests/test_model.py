"""Sequential: building, naming, compile/fit/evaluate/predict, weights, config round trips."""
import io
import re

import numpy as np
import pytest

from nnkit import (SGD, Accuracy, Activation, Convolution2D, Dense, Dropout, ImageInput, LabelInput,
                   Loss, MaxPooling2D, Sequential)
from nnkit.model import LayerShapeError


def toy_data(n=256, d=20, classes=4, seed=0):
    """Linearly separable-ish blobs."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, d)) * 3
    y = rng.integers(0, classes, n)
    x = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    return x, y


def mlp(seed=0, dropout=0.0):
    layers = [Dense(16, init="gaussian", w_std=0.1), Activation("tanh")]
    if dropout:
        layers.append(Dropout(dropout))
    model = Sequential(layers + [Dense(4, init="gaussian", w_std=0.1)], input_shape=(20,), seed=seed)
    model.compile(SGD(lr=0.05, momentum=0.9), "softmaxloss", ["accuracy"])
    return model


def test_input_layer_explicit_inferred_or_from_first_batch():
    explicit = Sequential([ImageInput(8, 8, 2), Convolution2D(3, 3), MaxPooling2D(2, 2), Dense(5)])
    explicit.build()
    assert explicit.layers[0].input_shape == (2, 8, 8)
    image = Sequential([Convolution2D(3, 3), Dense(5)], input_shape=(2, 8, 8))
    image.build()
    assert isinstance(image.layers[0], ImageInput)
    lazy = Sequential([Dense(5)])
    lazy.compile()
    lazy.predict(np.zeros((3, 7), np.float32))
    assert lazy.layers[0].input_shape == (7,) and lazy.layers[1].GetParams()[0].shape == (5, 7)
    with pytest.raises(ValueError, match="input shape is unknown"):
        Sequential([Dense(5)]).build()


def test_names_are_unique_per_model_without_global_counters():
    first, second = mlp(), mlp()
    for model in (first, second):
        model.build()
    names = [l.name for l in first.layers]
    assert names == ["dummy_1", "dense_1", "activation_1", "dense_2"]
    assert [l.name for l in second.layers] == names
    assert [p.full_name for p in first.params] == ["dense_1/weight", "dense_1/bias",
                                                   "dense_2/weight", "dense_2/bias"]
    with pytest.raises(ValueError, match="two layers are named 'fc'"):
        Sequential([Dense(3, name="fc"), Dense(3, name="fc")], input_shape=(4,)).build()
    named = Sequential([Dense(3, name="dense_1"), Dense(3)], input_shape=(4,))
    named.build()
    assert [l.name for l in named.layers[1:]] == ["dense_1", "dense_2"]


@pytest.mark.parametrize("layers, input_shape, index, layer, shape, reason", [
    ([Dense(3), Convolution2D(2, 3, name="conv")], (4,), 2, "Convolution2D 'conv'", (3,),
     r"expects 4-D input \(batch, channels, height, width\), got 2-D input"),
    ([ImageInput(4, 4, 1), MaxPooling2D(5, 1, name="pool")], None, 1, "MaxPooling2D 'pool'",
     (1, 4, 4), "too small"),
])
def test_a_layer_that_does_not_fit_its_input_raises_layer_shape_error_naming_it_and_the_shape(
        layers, input_shape, index, layer, shape, reason):
    model = Sequential(layers, name="net", input_shape=input_shape)
    with pytest.raises(LayerShapeError) as info:
        model.build()
    e = info.value
    assert isinstance(e, ValueError)  # what the layer raised: callers catching it keep working
    text = f"(batch, {', '.join(map(str, shape))})"
    assert (e.layer_index, e.layer, e.input_shape, e.batch_shape) == (index, layer, shape, text)
    assert e.layer_name == model.layers[index].name
    assert str(e).startswith(f"net: layer {index}, {layer}, does not fit its input of shape {text}: ")
    assert re.search(reason, e.reason) and not e.reason.startswith(layer)  # the layer named once
    assert isinstance(e.__cause__, ValueError) and str(e.__cause__).startswith(layer)
    assert not model.built


def test_summary_lists_layers_shapes_and_params():
    model = Sequential([ImageInput(8, 8, 2), Convolution2D(3, 3, name="conv"), MaxPooling2D(2, 2),
                        Dense(5)])
    out = io.StringIO()
    model.summary(print_fn=lambda line: out.write(line + "\n"))
    text = out.getvalue()
    assert "conv (Convolution2D)" in text and "(None, 3, 6, 6)" in text and "(None, 3, 3, 3)" in text
    assert "57" in text and "140" in text and "Total params: 197" in text


def test_fit_matches_the_hand_written_per_layer_loop_bit_for_bit():
    x, y = toy_data()
    model = mlp(seed=3)
    model.fit(x, y, batch_size=32, steps=6, shuffle=False, verbose=0)

    hand = mlp(seed=3)
    hand.build()
    nn, sgd = hand.layers, hand.updater
    label, loss = LabelInput(), Loss("softmaxloss")
    for i in range(6):
        nn[0].Feed((32, 20), x[i * 32:(i + 1) * 32])
        label.Feed(y[i * 32:(i + 1) * 32])
        for h in range(1, len(nn)):
            nn[h].ComputeFeature(nn[h - 1])
        loss.ComputeFeature(nn[-1], label)
        loss.ComputeGradient()
        for h in range(len(nn) - 1, 0, -1):
            nn[h].ComputeGradient()
            sgd.Update(i + 1, nn[h])
    for a, b in zip(model.get_weights(), hand.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_fit_then_step_by_hand_then_fit_again():
    x, y = toy_data()
    model = mlp()
    model.fit(x, y, batch_size=32, steps=3, verbose=0)
    nn = model.layers
    nn[0].Feed((32, 20), x[:32])
    for h in range(1, len(nn)):
        nn[h].ComputeFeature(nn[h - 1])
    model.loss_layer.ComputeFeature(nn[-1], model.label_layer)
    model.loss_layer.ComputeGradient()
    for h in range(len(nn) - 1, 0, -1):
        nn[h].ComputeGradient()
        model.updater.Update(4, nn[h])
    model.fit(x, y, batch_size=32, steps=3, verbose=0)
    assert model.trainer.global_step == 6 and model.updater.last_step == 6


def test_learning_evaluate_and_predict():
    x, y = toy_data(512)
    model = mlp(dropout=0.2)
    history = model.fit(x, y, batch_size=32, epochs=3, validation_data=(x[:100], y[:100]), verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert set(history.history) >= {"loss", "accuracy", "lr", "val_loss", "val_accuracy"}
    result = model.evaluate(x, y, batch_size=100)
    assert result["accuracy"] > 0.9
    scores = model.predict(x, batch_size=100)
    assert scores.shape == (512, 4)
    np.testing.assert_allclose(model.predict(x[:7]), scores[:7], rtol=1e-5)  # eval: no dropout
    hits = (scores.argmax(1) == y).mean()
    assert hits == pytest.approx(result["accuracy"], abs=1e-9)
    manual_loss = -np.mean(scores[np.arange(512), y] - np.log(np.exp(scores).sum(1)))
    assert result["loss"] == pytest.approx(manual_loss, rel=1e-4)


def test_top_k_metric_and_euclidean_loss():
    x, y = toy_data()
    model = mlp()
    model.compile(SGD(lr=0.05), "softmaxloss", ["accuracy", Accuracy(topk=2)])
    logs = model.test_on_batch(x[:64], y[:64])
    assert set(logs) == {"size", "loss", "accuracy", "top2_accuracy"}
    assert logs["top2_accuracy"] >= logs["accuracy"]

    rng = np.random.default_rng(0)
    xr = rng.standard_normal((200, 3)).astype(np.float32)
    target = (xr @ np.array([[1.0], [-2.0], [0.5]])).astype(np.float32)
    reg = Sequential([Dense(1)], input_shape=(3,), seed=0)
    reg.compile(SGD(lr=0.1), "euclideanloss", metrics=[])
    first = reg.evaluate(xr, target)["loss"]
    reg.fit(xr, target, batch_size=20, epochs=20, verbose=0)
    assert reg.evaluate(xr, target)["loss"] < 0.01 * first


def test_weights_round_trip_and_errors():
    model = mlp()
    model.build()
    weights = [w + 1 for w in model.get_weights()]
    model.set_weights(weights)
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="set_weights got 1 arrays, the model has 4"):
        model.set_weights(weights[:1])
    assert model["dense_2"] is model.layers[3] and model.get_layer("dense_1") is model[1]
    with pytest.raises(KeyError, match="no layer 'nope'"):
        model.get_layer("nope")


def test_errors_before_compile_and_for_bad_metrics():
    x, y = toy_data()
    with pytest.raises(RuntimeError, match="compile"):
        Sequential([Dense(3)]).fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        Sequential([Dense(3)]).compile(metrics=["f1"])
    with pytest.raises(ValueError, match="must come first"):
        Sequential([Dense(3), ImageInput(2, 2)])
    with pytest.raises(ValueError, match="x has 256 examples but y has 10"):
        mlp().fit(x, y[:10], verbose=0)


def test_config_round_trip_gives_same_config_and_initial_weights():
    model = Sequential([ImageInput(8, 8, 1), Convolution2D(4, 3, pad=1, w_std=0.05, b_lr=2),
                        Activation("relu"), MaxPooling2D(2, 2, ceil_mode=False), Dropout(0.3),
                        Dense(10, w_wd=250, b_wd=0)], seed=7)
    model.compile(SGD(lr=0.01, momentum=0.9, decay=0.004, lr_type="manual", step=(0, 100),
                      step_lr=(0.01, 0.001)), "softmaxloss", ["accuracy", Accuracy(topk=3)])
    model.build()
    config = model.get_config()
    clone = Sequential.from_config(config)
    clone.build()
    assert clone.get_config() == config
    for a, b in zip(model.get_weights(), clone.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unknown layer 'Evil'"):
        Sequential.from_config({**config, "layers": [{"class_name": "Evil", "config": {}}]})


def _record_calls(model, monkeypatch):
    """Logs every ComputeFeature, ComputeGradient and Update of the model's layers, in order."""
    calls = []
    for layer in [*model.layers[1:], model.loss_layer]:
        for method in ("ComputeFeature", "ComputeGradient"):
            def spy(*args, _layer=layer, _method=method, _real=getattr(layer, method)):
                calls.append((_method, _layer.name))
                return _real(*args)
            monkeypatch.setattr(layer, method, spy)
    real_update = model.updater.Update

    def update(step, layer):
        calls.append(("Update", layer.name))
        return real_update(step, layer)
    monkeypatch.setattr(model.updater, "Update", update)
    return calls


def test_profile_step_is_the_training_step_timed_layer_by_layer(monkeypatch):
    x, y = toy_data(32)
    trained, profiled = mlp(dropout=0.2), mlp(dropout=0.2)
    trained.compile(SGD(lr=0.05, momentum=0.9), "softmaxloss", ["accuracy", Accuracy(topk=2)])
    profiled.compile(SGD(lr=0.05, momentum=0.9), "softmaxloss", ["accuracy", Accuracy(topk=2)])
    for model in (trained, profiled):
        model.build()
    trained_calls, profiled_calls = _record_calls(trained, monkeypatch), _record_calls(profiled, monkeypatch)
    trained.train_on_batch(x, y, step=1)
    times = profiled.profile_step(x, y, step=1)
    assert profiled_calls == trained_calls  # the same walk: every gradient, then every update
    assert trained_calls.index(("Update", "dense_2")) > trained_calls.index(("ComputeGradient", "dense_1"))
    for a, b in zip(trained.get_weights(), profiled.get_weights()):
        np.testing.assert_array_equal(a, b)
    names = ["dense_1", "activation_1", "dropout_1", "dense_2", "loss", "accuracy"]
    assert {phase: list(t) for phase, t in times.items()} == dict.fromkeys(
        ("forward", "backward", "update"), names)
    assert all(times["forward"][n] > 0 for n in names) and times["update"]["dense_1"] > 0


def test_profile_step_refuses_a_non_finite_gradient_before_any_update_as_training_does(monkeypatch):
    from nnkit.training import NonFiniteLossError
    x, y = toy_data(32)
    model = mlp()
    model.profile_step(x, y, step=1)
    before = model.get_weights()
    first = model.layers[1]
    backward = type(first).ComputeGradient

    def poisoned(self):
        backward(self)
        self.params[0].grad[0, 0] = np.nan
    monkeypatch.setattr(first, "ComputeGradient", poisoned.__get__(first))
    with pytest.raises(NonFiniteLossError, match=rf"the gradient of {first.name}/weight is not finite"):
        model.profile_step(x, y, step=2)
    for a, b in zip(model.get_weights(), before):  # dense_2, updated first, is untouched too
        np.testing.assert_array_equal(a, b)
    assert model.updater.last_step == 1
