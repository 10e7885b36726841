"""Flatten and ZeroPadding2D: shapes, values, numerical gradients, configs, bad arguments."""
import numpy as np
import pytest
from google.protobuf import text_format

from gradcheck import check_layer, run
from nnkit import Convolution2D, Dense, Sequential
from nnkit.config import model_from_proto
from nnkit.layers import Flatten, ZeroPadding2D


def test_flatten_is_a_c_order_reshape_with_its_gradient():
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 2, 2)
    layer = Flatten()
    y, dx = run(layer, x, np.ones((2, 12)))
    np.testing.assert_array_equal(y, x.reshape(2, 12))
    assert dx.shape == x.shape
    check_layer(Flatten(), np.random.default_rng(0).standard_normal((2, 3, 2, 2)))


@pytest.mark.parametrize("padding,expected", [
    (1, ((1, 1), (1, 1))), ((1, 2), ((1, 1), (2, 2))), (((0, 1), (2, 0)), ((0, 1), (2, 0))),
    ((0, 1, 2, 0), ((0, 1), (2, 0)))])
def test_zero_padding_sides(padding, expected):
    layer = ZeroPadding2D(padding)
    assert layer.padding == expected
    (top, bottom), (left, right) = expected
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5))
    y, _ = run(layer, x)
    assert y.shape == (2, 3, 4 + top + bottom, 5 + left + right)
    np.testing.assert_array_equal(y[:, :, top:top + 4, left:left + 5], x)
    assert np.count_nonzero(y) == x.size
    check_layer(ZeroPadding2D(padding), x)


@pytest.mark.parametrize("bad", [-1, (1, 2, 3), "1", ((1, 2, 3), 1), True])
def test_zero_padding_refuses_bad_padding_by_name(bad):
    with pytest.raises(ValueError, match="ZeroPadding2D 'zero_padding2d': padding"):
        ZeroPadding2D(bad)


def test_both_round_trip_through_the_job_schema():
    model = Sequential([ZeroPadding2D(((0, 1), (0, 1))), Convolution2D(2, 2, stride=2),
                        Flatten(), Dense(3)], input_shape=(1, 5, 5), seed=0)
    model.compile(loss="mse", metrics=[])
    text = text_format.MessageToString(model.to_proto())
    assert "zero_padding" in text and "flatten" in text and "loss: mse" in text
    again = model_from_proto(text)
    assert again.get_config() == model.get_config()
    model.build()
    again.build()
    x = np.random.default_rng(2).standard_normal((4, 1, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
