"""Dropout: eval identity, training statistics, mask reuse, seeding, gradient check, errors."""
import numpy as np
import pytest

from gradcheck import Source, check_layer, run
from nnkit.layers import Dropout, set_seed


class ReseededDropout(Dropout):
    """Draws the same mask on every forward pass, so the layer is a fixed function of x."""

    def forward(self, x):
        self.rng = np.random.default_rng(5)
        return super().forward(x)


def test_eval_mode_is_identity_and_copies():
    x = np.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    layer = Dropout(0.7).eval()
    src = Source(x)
    y = layer.ComputeFeature(src)
    np.testing.assert_array_equal(y, x)
    assert not np.shares_memory(y, x)  # documented: a copy, never an alias of the source
    layer.grad = dy
    layer.ComputeGradient()
    np.testing.assert_array_equal(src.grad, dy)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_training_drops_ratio_and_preserves_the_mean(ratio):
    layer = Dropout(ratio)
    layer.rng = np.random.default_rng(0)
    x = np.ones((200, 1000), np.float32)
    y, _ = run(layer, x)
    kept = y != 0
    # 200k units: the sample fraction and mean are within ~0.0015 and ~0.002 (1 sigma).
    assert abs(1 - kept.mean() - ratio) < 0.01
    assert abs(y.mean() - 1.0) < 0.015
    np.testing.assert_allclose(y[kept], 1 / (1 - ratio), rtol=1e-6)


def test_backward_uses_the_forward_mask():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.5, 1.5, (8, 50))  # nonzero, so y == 0 exactly where dropped
    dy = rng.standard_normal(x.shape)
    layer = Dropout(0.4)
    layer.rng = np.random.default_rng(2)
    y, dx = run(layer, x, dy)
    mask = (y != 0) / 0.6
    assert 0 < (y == 0).sum() < y.size
    np.testing.assert_allclose(y, x * mask, rtol=1e-12)
    np.testing.assert_allclose(dx, dy * mask, rtol=1e-12)


def test_same_seed_same_mask_different_seed_different_mask():
    x = np.ones((16, 32), np.float32)
    masks = []
    for seed in (3, 3, 4):
        layer = Dropout(0.5)
        set_seed([layer], seed)
        masks.append(run(layer, x)[0] != 0)
    np.testing.assert_array_equal(masks[0], masks[1])
    assert (masks[0] != masks[2]).any()


def test_successive_batches_draw_new_masks_without_a_seed():
    layer = Dropout(0.5)
    assert layer.rng is None
    x = np.ones((16, 32), np.float32)
    first = run(layer, x)[0] != 0
    assert layer.rng is not None  # created on first use, then kept
    assert (first != (run(layer, x)[0] != 0)).any()


def test_ratio_zero_keeps_everything():
    x = np.random.default_rng(0).standard_normal((3, 4))
    y, _ = run(Dropout(0.0), x)
    np.testing.assert_array_equal(y, x)


def test_gradient_check_with_a_fixed_mask():
    layer = ReseededDropout(0.5)
    x = np.random.default_rng(6).standard_normal((4, 6))
    check_layer(layer, x)
    assert 0 < (layer.data == 0).sum() < layer.data.size  # the mask did drop some units


def test_get_config():
    assert Dropout(0.25, name="d").get_config() == {"ratio": 0.25, "name": "d"}


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_ratio_out_of_range_is_an_error(ratio):
    with pytest.raises(ValueError, match=r"Dropout 'drop1': ratio must be in \[0, 1\)"):
        Dropout(ratio, name="drop1")


class _Shard:
    """What Dropout.distribute reads from an nnkit.distributed.World: where the shard starts."""

    def __init__(self, first_example):
        self.first_example = first_example


def _stream_mask(seed, step, x, first=0):
    layer = Dropout(0.5)
    set_seed([layer], seed)
    layer.distribute(_Shard(first), step)
    before = layer.rng.bit_generator.state
    mask = run(layer, x)[0] != 0
    assert layer.rng.bit_generator.state == before  # the stream's key: never advanced
    return mask


@pytest.mark.parametrize("units", [32, 37])  # 37: examples start inside a Philox block
def test_per_example_streams_do_not_depend_on_the_shards(units):
    x = np.ones((7, units), np.float32)
    whole = _stream_mask(3, 5, x)
    for cut in (1, 3, 4):
        parts = [_stream_mask(3, 5, x[:cut]), _stream_mask(3, 5, x[cut:], first=cut)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert abs(whole.mean() - 0.5) < 0.15
    assert (whole != _stream_mask(3, 6, x)).any()  # another step, other masks
    assert (whole != _stream_mask(4, 5, x)).any()  # another seed, other masks


def test_without_a_world_the_layer_draws_from_its_generator_again():
    layer = Dropout(0.5)
    set_seed([layer], 3)
    layer.distribute(_Shard(0), 5)
    layer.distribute(None, 6)  # a later non-distributed batch
    before = layer.rng.bit_generator.state
    run(layer, np.ones((4, 8), np.float32))
    assert layer.rng.bit_generator.state != before
