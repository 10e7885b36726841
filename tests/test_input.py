"""Input layers: shapes, conversion, and clear errors for bad batches."""
import numpy as np
import pytest

from nnkit.layers import Dense, Dummy, ImageInput, LabelInput


def test_image_input_accepts_rows_and_images():
    inp = ImageInput(4, 5, 3)
    rows = np.arange(2 * 60, dtype=np.uint8).reshape(2, 60)
    out = inp.Feed(rows)
    assert out.shape == (2, 3, 4, 5) and out.dtype == np.float32
    np.testing.assert_array_equal(out.reshape(2, -1), rows)
    assert inp.Feed(np.zeros((7, 3, 4, 5))).shape == (7, 3, 4, 5)


def test_image_input_wrong_size_names_layer_and_shapes():
    inp = ImageInput(28, 28, name="pixels")
    with pytest.raises(ValueError, match=r"ImageInput 'pixels'.*\(batch, 784\).*\(3, 100\)"):
        inp.Feed(np.zeros((3, 100)))


def test_nan_input_is_reported_with_its_index():
    inp = ImageInput(2, 2)
    x = np.zeros((3, 4))
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"non-finite value \(nan\) at index \(1, 0, 1, 0\)"):
        inp.Feed(x)


def test_label_input_shapes_and_values():
    lab = LabelInput()
    np.testing.assert_array_equal(lab.Feed(np.array([[1], [2], [0]])), [1, 2, 0])
    np.testing.assert_array_equal(lab.Feed(np.array([3.0, 4.0])), [3, 4])
    assert lab.data.dtype == np.int64
    with pytest.raises(ValueError, match=r"LabelInput 'label_input'.*\(2, 2\)"):
        lab.Feed(np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="label -1 at index 1 is negative"):
        lab.Feed(np.array([0, -1]))
    with pytest.raises(ValueError, match="label 1.5 at index 0 is not a whole number"):
        lab.Feed(np.array([1.5, 2.0]))
    with pytest.raises(TypeError, match="integers"):
        lab.Feed(np.array(["a", "b"]))


def test_dummy_feed_reshapes_and_keeps_aux_data():
    d = Dummy()
    out = d.Feed((2, 3), np.arange(6), aux_data=[1, 0])
    assert out.shape == (2, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(d.aux_data, [1, 0])
    with pytest.raises(ValueError, match=r"Dummy 'dummy'.*does not fit the shape \(4, 3\)"):
        d.Feed((4, 3), np.arange(6))


def test_source_never_computed_is_named():
    inp = ImageInput(2, 2, name="never_fed")
    with pytest.raises(RuntimeError, match=r"Dense 'fc'.*ImageInput 'never_fed' has no data"):
        Dense(3, name="fc").ComputeFeature(inp)


def test_inputs_are_not_computed():
    with pytest.raises(TypeError, match="Feed"):
        LabelInput().ComputeFeature(ImageInput(1, 1))
