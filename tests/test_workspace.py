"""A model's layers share scratch memory (``Workspace``): the convolutions' im2col buffers,
and in a training step the input gradients, in two buffers alternating down the stack.

Sharing must change no value: a training step gives, bit for bit, what the same layers give
driven by hand, each with buffers of its own.
"""
import numpy as np

from nnkit import (SGD, Activation, AvgPooling2D, Convolution2D, Dense, ImageInput, LRN2D,
                   MaxPooling2D, Sequential)
from nnkit.layers import convolution
from nnkit.layers.base import Workspace


class UnfusedSGD(SGD):
    """The dense weight gradient computed whole, as calls by hand compute it."""

    takes_deferred = False


def cnn(seed=0):
    layers = [ImageInput(12, 12, 3),
              Convolution2D(6, 5, 1, 2, w_std=0.1), MaxPooling2D(pool_size=(3, 3), stride=2),
              Activation("relu"), LRN2D(3, alpha=0.01, beta=0.75),
              Convolution2D(6, 5, 1, 2, w_std=0.1), Activation("tanh"),
              AvgPooling2D(pool_size=(3, 3), stride=2), Dense(4, w_std=0.1)]
    m = Sequential(layers, seed=seed)
    m.compile(UnfusedSGD(lr=0.05, momentum=0.9, decay=0.004), "softmaxloss", ["accuracy"])
    m.build()
    return m


def batch(step):
    rng = np.random.default_rng(step)
    return rng.standard_normal((10, 3, 12, 12)).astype(np.float32), rng.integers(0, 4, 10)


def step_by_hand(m, x, y, step):
    """The training step through the per-layer API: every layer's own buffers."""
    m.layers[0].Feed(x)
    for below, layer in zip(m.layers, m.layers[1:]):
        layer.ComputeFeature(below)
    m.label_layer.Feed(y)
    m.loss_layer.ComputeFeature(m.layers[-1], m.label_layer)
    m.loss_layer.ComputeGradient()
    for layer in reversed(m.layers[1:]):
        layer.ComputeGradient()
    for layer in reversed(m.layers[1:]):
        m.updater.Update(step, layer)


def test_views_of_one_name_share_memory_and_the_buffer_only_grows():
    space = Workspace()
    small = space.view("col", 12, (3, 4), np.float32)
    big = space.view("col", 40, (5, 8), np.float32)
    again = space.view("col", 12, (2, 6), np.float32)
    assert np.shares_memory(big, again) and again.flags.c_contiguous
    assert space.nbytes == 40 * 4  # grown once, for the largest request
    assert not np.shares_memory(small, big)  # the old buffer went when it grew
    other = space.view("col", 12, (3, 4), np.float64)
    assert not np.shares_memory(other, again)  # one buffer per name and dtype
    assert not np.shares_memory(space.view("padded", 12, (12,), np.float32), again)


def test_a_training_step_matches_the_same_step_by_hand_bit_for_bit():
    shared, by_hand = cnn(), cnn()
    for step in range(1, 4):
        x, y = batch(step)
        shared.train_on_batch(x, y, step)
        step_by_hand(by_hand, x, y, step)
    for p, q in zip(shared.params, by_hand.params):
        np.testing.assert_array_equal(p.data, q.data, err_msg=p.full_name)
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=p.full_name)


def test_input_gradients_take_two_buffers_and_the_convolutions_share_their_scratch(
        monkeypatch):
    # Chunks of at most 1024 columns, whatever the rows of col (conv1's would take the
    # whole batch in one chunk, and keep its col, under CHUNK_VALUES).
    monkeypatch.setattr(convolution, "CHUNK_VALUES", 0)
    m = cnn()
    m.train_on_batch(*batch(1))
    assert all("dx" not in layer._buffers for layer in m.layers)  # none of their own
    # Layer i writes input_grad{i % 2}: each is as large as the largest of its layers'.
    n = 10
    sizes = {0: 0, 1: 0}
    for index, (below, layer) in enumerate(zip(m.layers, m.layers[1:]), start=1):
        if below.accepts_grad:
            sizes[index % 2] = max(sizes[index % 2], below.data.size)
    for slot, size in sizes.items():
        view = m.workspace.view(f"input_grad{slot}", 1, (1,), np.float32)
        assert view.base.size == size, slot
    assert sizes[0] == n * 6 * 12 * 12  # the first convolution's output gradient
    # The convolutions' im2col columns: one buffer per part, not one per layer, except the
    # col of a batch that is one chunk, kept for backward: conv2's 10 images of 6x6 outputs
    # (conv1's 12x12 outputs take two chunks).
    conv1, conv2 = m.layers[1], m.layers[5]
    assert not any(key.endswith("col") for key in conv1._buffers)
    assert [key for key in conv2._buffers if key.endswith("col")] == ["kept_col"]
    assert conv2._buffers["kept_col"].shape == (6 * 5 * 5, n * 6 * 6)
    assert conv1.workspace is conv2.workspace is m.workspace


def test_a_layer_on_its_own_keeps_its_own_buffers():
    source, layer = Activation("linear"), Activation("relu")
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 12)
    feed = ImageInput(1, 1, 12)
    feed.Feed(x)
    source.ComputeFeature(feed)
    layer.ComputeFeature(source)
    layer.grad = np.ones_like(layer.data)
    layer.ComputeGradient()
    assert layer.workspace is not source.workspace  # no model: a workspace each
    assert source.grad is layer._buffers["dx"]
    np.testing.assert_array_equal(source.grad.reshape(2, 12), (x > 0).astype(np.float32))
