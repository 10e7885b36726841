"""A final softmax before the softmax loss is folded in: computed once, from the logits.

Also: one-hot labels (N, K) next to class indices (N,) and (N, 1).
"""
import io
from contextlib import redirect_stdout

import numpy as np
import pytest

from gradcheck import Source, numerical_gradient
from nnkit import Activation, Dense, Sequential, updaters
from nnkit.layers import Accuracy, LabelInput, Loss

class NoGradSource(Source):
    accepts_grad = False


def _folded(logits, labels, lossname="softmaxloss"):
    src = Source(np.array(logits, np.float64))
    softmax = Activation("softmax")
    softmax.ComputeFeature(src)
    loss = Loss(lossname)
    loss.ComputeFeature(softmax, NoGradSource(labels))
    return src, softmax, loss


def _cross_entropy(logits, labels):
    """The reference: mean of logsumexp(x) - x[label], in float64."""
    m = logits.max(1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(1)) + m[:, 0]
    return float(np.mean(lse - logits[np.arange(len(labels)), labels]))


def test_folded_loss_matches_torch_cross_entropy_on_the_logits():
    torch = pytest.importorskip("torch")  # optional reference
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 5)) * 30  # large: a softmax of probabilities would saturate
    labels = np.array([0, 4, 2, 2, 1, 3])
    src, softmax, loss = _folded(logits, labels)
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels))
    assert loss.loss == pytest.approx(float(expected), rel=1e-10)
    loss.ComputeGradient()
    t = torch.tensor(logits, requires_grad=True)
    torch.nn.functional.cross_entropy(t, torch.tensor(labels)).backward()
    np.testing.assert_allclose(src.grad, t.grad.numpy(), rtol=1e-9, atol=1e-12)
    assert softmax.grad is None and softmax.folded_into is loss
    softmax.ComputeGradient()  # passes: the loss already gave the gradient to the logits
    np.testing.assert_allclose(src.grad, t.grad.numpy(), rtol=1e-9, atol=1e-12)
    # the softmax still holds the probabilities
    np.testing.assert_allclose(softmax.data, torch.softmax(torch.tensor(logits), 1).numpy(), rtol=1e-9)


def test_folded_loss_numerical_gradient_with_respect_to_the_logits():
    rng = np.random.default_rng(1)
    src, softmax, loss = _folded(rng.standard_normal((4, 3)), np.array([2, 0, 1, 1]))
    loss.ComputeGradient()
    analytic = src.grad.copy()
    labels = NoGradSource(np.array([2, 0, 1, 1]))

    def value():
        softmax.ComputeFeature(src)
        loss.ComputeFeature(softmax, labels)
        return loss.loss

    np.testing.assert_allclose(analytic, numerical_gradient(value, src.data), rtol=1e-6, atol=1e-9)


def test_euclidean_loss_and_image_softmax_are_not_folded():
    src, softmax, loss = _folded(np.full((2, 3), 0.5), np.zeros((2, 3)), "euclideanloss")
    assert softmax.folded_into is None
    assert loss.loss == pytest.approx(0.5 * np.sum((1 / 3) ** 2 * 6) / 2)
    image = Activation("softmax")
    image.ComputeFeature(Source(np.zeros((2, 3, 2, 2))))
    assert not Loss().folds(image)


@pytest.mark.parametrize("form", ["index", "column", "onehot"])
def test_labels_as_indices_column_or_one_hot(form):
    rng = np.random.default_rng(2)
    logits, labels = rng.standard_normal((5, 4)), np.array([3, 0, 1, 1, 2])
    fed = {"index": labels, "column": labels[:, None], "onehot": np.eye(4)[labels]}[form]
    label_layer = LabelInput()
    label_layer.Feed(fed)
    loss = Loss()
    loss.ComputeFeature(Source(logits), label_layer)
    assert loss.loss == pytest.approx(_cross_entropy(logits, labels), rel=1e-10)
    acc = Accuracy()
    acc.ComputeFeature(Source(logits), label_layer)
    assert acc.accuracy == pytest.approx(np.mean(np.argmax(logits, 1) == labels))
    # one-hot rows straight from a plain layer (the per-layer API) work too
    plain = Loss()
    plain.ComputeFeature(Source(logits), NoGradSource(np.eye(4)[labels]))
    assert plain.loss == pytest.approx(loss.loss)


def test_bad_one_hot_labels_are_refused_by_name():
    label_layer = LabelInput(name="label")
    with pytest.raises(ValueError, match="label row 1 .*not one-hot"):
        label_layer.Feed(np.array([[0, 1], [0.5, 0.5]]))
    label_layer.Feed(np.eye(3)[[0, 2]])
    with pytest.raises(ValueError, match="3 columns"):
        Loss().ComputeFeature(Source(np.zeros((2, 4))), label_layer)


def _blobs(seed=0, n=400):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, 8)) * 2
    y = rng.integers(0, 4, n)
    return (centres[y] + rng.standard_normal((n, 8))).astype(np.float32), y


def _model(with_softmax):
    layers = [Dense(16), Activation("relu"), Dense(4)]
    if with_softmax:
        layers.append(Activation("softmax"))
    model = Sequential(layers, input_shape=(8,), seed=3)
    model.compile(updaters.RMSProp(lr=0.01), "softmaxloss")
    return model


def test_a_model_with_a_final_softmax_trains_like_one_without():
    x, y = _blobs()
    plain, folded = _model(False), _model(True)
    h1 = plain.fit(x, y, batch_size=32, epochs=3, verbose=0, shuffle=False)
    h2 = folded.fit(x, np.eye(4)[y], batch_size=32, epochs=3, verbose=0, shuffle=False)
    np.testing.assert_allclose(h2.history["loss"], h1.history["loss"], rtol=1e-4)
    assert h2.history["accuracy"][-1] > 0.9
    for a, b in zip(plain.get_weights(), folded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    probs = folded.predict(x[:5])
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    logits = plain.predict(x[:5])
    np.testing.assert_allclose(probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), rtol=1e-4)
    out = io.StringIO()
    with redirect_stdout(out):
        folded.summary()
    assert "folded into the loss" in out.getvalue()
    assert folded.softmax_folded() and not plain.softmax_folded()


def test_job_config_with_a_final_softmax_round_trips_and_folds():
    from google.protobuf import text_format
    from nnkit.config import model_from_proto

    model = _model(True)
    text = text_format.MessageToString(model.to_proto())
    assert "type: softmax" in text  # what the user wrote stays in the config
    again = model_from_proto(text)
    assert isinstance(again.layers[-1], Activation) and again.layers[-1].activation == "softmax"
    assert again.softmax_folded()
    x, y = _blobs(1, 64)
    again.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert again.layers[-1].folded_into is again.loss_layer


def test_mse_is_keras_mean_squared_error_with_its_gradient():
    rng = np.random.default_rng(4)
    p, t = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    loss, pred = Loss("mse"), Source(p.copy())
    loss.ComputeFeature(pred, NoGradSource(t))
    assert loss.loss == pytest.approx(np.mean((p - t) ** 2), rel=1e-12)
    assert loss.accuracy is None
    loss.ComputeGradient()
    np.testing.assert_allclose(pred.grad, 2 * (p - t) / p.size, rtol=1e-12)
    labels = NoGradSource(t)

    def value():
        loss.ComputeFeature(pred, labels)
        return loss.loss

    np.testing.assert_allclose(pred.grad, numerical_gradient(value, pred.data), rtol=1e-6, atol=1e-9)


def test_nnkit_show_says_the_softmax_is_folded(tmp_path, capsys):
    from nnkit.cli import main

    _model(True).save(tmp_path / "folded.h5")
    assert main(["show", str(tmp_path / "folded.h5")]) == 0
    assert "activation_2: folded into the loss" in capsys.readouterr().out
    _model(False).save(tmp_path / "plain.h5")
    assert main(["show", str(tmp_path / "plain.h5")]) == 0
    assert "folded" not in capsys.readouterr().out
