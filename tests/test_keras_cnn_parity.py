"""The Keras MNIST convnet's training step on nnkit.keras is Keras 2.2.4's, checked against torch.

examples/keras_mnist_cnn.py's model (Conv2D 32, Conv2D 64, MaxPooling2D, Dropout 0.25,
Flatten, Dense 128, Dropout 0.5, Dense 10 softmax; Adadelta(); categorical_crossentropy) is
built with nnkit.keras and trained by ``fit`` for two small epochs with a partial last batch.
The same network is written in torch (optional: skipped without it) with Keras 2.2.4's rules
taken from its sources, channels last as Keras computes:

* the loss is keras/backend/tensorflow_backend.py's ``categorical_crossentropy`` on the
  softmax's probabilities: ``p /= sum(p)``, ``clip(p, eps, 1 - eps)``, ``-sum(y * log p)``,
  averaged over the batch (keras/engine/training_utils.py's ``weighted_masked_objective``);
* the update is keras/optimizers.py's ``Adadelta`` (lr=1, rho=0.95, epsilon=K.epsilon()=1e-7,
  zero accumulators): ``a = rho*a + (1-rho)*g^2; u = g*sqrt(d+eps)/sqrt(a+eps); w -= lr*u;
  d = rho*d + (1-rho)*u^2``;
* dropout is ``tf.nn.dropout(x, keep_prob=1-rate)``: kept units scaled by ``1/(1-rate)``. The
  torch side uses the units nnkit kept (random draws cannot be shared), rescaled by its own
  Keras factor, and the test checks the masks have only Keras's two values.

The torch side starts from ``model.get_weights()`` (Keras's layouts: conv kernels
``(kh, kw, in, out)``, dense kernels ``(in, out)`` with rows in (H, W, C) order after the
Flatten) and is fed the batches nnkit's ``fit`` trained on, recorded as it ran; the test
checks they are one permutation of the data per epoch, full batches with the partial one
last. After every step the parameters must agree to float32 rounding; a torch run with the
epsilon changed to nnkit's own AdaDelta default (1e-6) must not, so the tolerance can tell a
different rule apart.
"""
import numpy as np
import pytest

from nnkit import layers as nn_layers
from nnkit.keras import optimizers
from nnkit.keras.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from nnkit.keras.models import Sequential

torch = pytest.importorskip("torch")  # the reference implementation; optional

EPS = 1e-7  # Keras's K.epsilon()
BATCH, N, EPOCHS = 16, 40, 2  # 16 + 16 + a partial batch of 8 per epoch


def keras_convnet(size: int) -> Sequential:
    """examples/keras_mnist_cnn.py's model and compile, on ``size`` x ``size`` images."""
    np.random.seed(3)
    model = Sequential()
    model.add(Conv2D(32, kernel_size=(3, 3), activation="relu", input_shape=(size, size, 1)))
    model.add(Conv2D(64, (3, 3), activation="relu"))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Dropout(0.25))
    model.add(Flatten())
    model.add(Dense(128, activation="relu"))
    model.add(Dropout(0.5))
    model.add(Dense(10, activation="softmax"))
    model.compile(loss="categorical_crossentropy", optimizer=optimizers.Adadelta(),
                  metrics=["accuracy"])
    return model


def torch_forward(params, x, masks):
    """Keras's forward pass, channels last, with the given dropout keep masks (NHWC / (N, D))."""
    k1, b1, k2, b2, k3, b3, k4, b4 = params

    def conv(h, k, b):  # a channels-last 'valid' convolution with a (kh, kw, in, out) kernel
        out = torch.nn.functional.conv2d(h.permute(0, 3, 1, 2), k.permute(3, 2, 0, 1))
        return out.permute(0, 2, 3, 1) + b

    h = torch.relu(conv(x, k1, b1))
    h = torch.relu(conv(h, k2, b2))
    h = torch.nn.functional.max_pool2d(h.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    h = h * masks[0] / (1 - 0.25)
    h = h.reshape(h.shape[0], -1)  # Keras's Flatten: (H, W, C) order
    h = torch.relu(h @ k3 + b3)
    h = h * masks[1] / (1 - 0.5)
    return torch.softmax(h @ k4 + b4, dim=-1)


def keras_loss(y, p):
    """Keras 2.2.4's categorical_crossentropy on probabilities, mean over the batch."""
    p = p / p.sum(dim=-1, keepdim=True)
    p = torch.clamp(p, EPS, 1 - EPS)
    return (-(y * torch.log(p)).sum(dim=-1)).mean()


def torch_keras_training(weights, steps, eps=EPS, rho=0.95, lr=1.0):
    """Parameters after each Keras Adadelta step on the recorded (x, y, masks) steps."""
    params = [torch.tensor(w, requires_grad=True) for w in weights]
    acc = [torch.zeros_like(p) for p in params]
    delta_acc = [torch.zeros_like(p) for p in params]
    after = []
    for x, y, masks in steps:
        loss = keras_loss(torch.tensor(y), torch_forward(params, torch.tensor(x),
                                                         [torch.tensor(m) for m in masks]))
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, a, d in zip(params, grads, acc, delta_acc):
                a.mul_(rho).add_((1 - rho) * g * g)
                update = g * torch.sqrt(d + eps) / torch.sqrt(a + eps)
                p.sub_(lr * update)
                d.mul_(rho).add_((1 - rho) * update * update)
        after.append([p.detach().numpy().copy() for p in params])
    return after


def record_fit(model, x, y):
    """Runs ``model.fit`` and returns, per step: the NHWC batch, its labels, the Keras-layout
    dropout keep masks, the parameters after the step; and the data indices of every batch."""
    net = model.nnkit_model
    dropouts = [layer for layer in net.layers if isinstance(layer, nn_layers.Dropout)]
    original = net.train_on_batch
    steps, weights_after = [], []

    def recording(xb, yb, **kwargs):
        logs = original(xb, yb, **kwargs)
        masks = []
        for layer, rate in zip(dropouts, (0.25, 0.5)):
            mask = layer._mask.copy()
            # Keras's (tf.nn.dropout's) values: 0 or 1/(1-rate), nothing in between
            assert set(np.unique(mask)) <= {np.float32(0), np.float32(1 / (1 - rate))}
            keep = (mask != 0).astype(np.float32)
            masks.append(keep.transpose(0, 2, 3, 1) if keep.ndim == 4 else keep)
        steps.append((xb.transpose(0, 2, 3, 1).copy(), yb.copy(), masks))
        weights_after.append(model.get_weights())
        return logs

    net.train_on_batch = recording
    try:
        model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0)
    finally:
        del net.train_on_batch
    return steps, weights_after


def test_glorot_uniform_fans_and_zero_biases_are_keras_s():
    model = keras_convnet(28)
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,),
                                          (9216, 128), (128,), (128, 10), (10,)]
    for kernel, bias in zip(weights[::2], weights[1::2]):
        # keras/initializers.py _compute_fans: receptive field * in / * out channels
        receptive = int(np.prod(kernel.shape[:-2])) if kernel.ndim == 4 else 1
        fan_in, fan_out = receptive * kernel.shape[-2], receptive * kernel.shape[-1]
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        assert np.abs(kernel).max() <= limit
        assert np.abs(kernel).max() > 0.95 * limit  # the whole range is used
        assert abs(kernel.std() / (limit / np.sqrt(3)) - 1) < 0.1  # U(-a, a) has std a/sqrt(3)
        assert not bias.any()


def test_fit_steps_equal_keras_adadelta_steps_in_torch():
    size = 14  # smaller images than MNIST's: the same layers, a faster test
    model = keras_convnet(size)
    rng = np.random.default_rng(0)
    x = rng.random((N, size, size, 1), dtype=np.float32)
    labels = rng.integers(0, 10, N)
    y = np.eye(10, dtype=np.float32)[labels]
    initial = model.get_weights()
    steps, nnkit_after = record_fit(model, x, y)

    # Keras's batching: every epoch a new permutation, in batches of BATCH, the partial one last
    per_epoch = -(-N // BATCH)
    assert [len(s[0]) for s in steps] == [BATCH, BATCH, N % BATCH] * EPOCHS
    row_of = {x[i].tobytes(): i for i in range(N)}
    orders = [[row_of[r.tobytes()] for s in steps[e * per_epoch:(e + 1) * per_epoch]
               for r in s[0]] for e in range(EPOCHS)]
    for e, order in enumerate(orders):
        assert sorted(order) == list(range(N))
        epoch = steps[e * per_epoch:(e + 1) * per_epoch]
        np.testing.assert_array_equal(np.concatenate([s[1] for s in epoch]), y[order])
    assert orders[0] != orders[1] and orders[0] != list(range(N))  # shuffled, each epoch anew

    reference = torch_keras_training(initial, steps)
    names = ("k1", "b1", "k2", "b2", "k3", "b3", "k4", "b4")
    worst = 0.0
    for step, (ours, theirs) in enumerate(zip(nnkit_after, reference)):
        for name, a, b, start in zip(names, ours, theirs, initial):
            assert np.abs(b - start).max() > 0, f"step {step}: {name} did not move"
            worst = max(worst, float(np.abs(a - b).max()))
            np.testing.assert_allclose(a, b, rtol=0, atol=2e-6, err_msg=f"step {step}, {name}")
    # The tolerance tells rules apart: nnkit's own AdaDelta epsilon (1e-6) is off by far more.
    other = torch_keras_training(initial, steps, eps=1e-6)[-1]
    assert max(float(np.abs(a - b).max()) for a, b in zip(nnkit_after[-1], other)) > 50 * 2e-6
    assert worst < 2e-6
