"""RunningMeans: the batch-size weighted means, by dict and by row."""
import pytest

from nnkit.means import RunningMeans


def test_add_row_is_add_of_the_same_values_as_a_dict():
    rows = [(5, 2.25, 0.4), (1, 0.1, None), (7, 1e-3, 1), (3, 3.0, True)]  # None, bool: left out
    by_dict, by_row = RunningMeans(skip=("lr",)), RunningMeans(skip=("lr",), keys=("loss", "accuracy", "lr"))
    for n, loss, accuracy in rows:
        by_dict.add({"loss": loss, "accuracy": accuracy, "lr": 0.1}, n)
        by_row.add_row(n, loss, accuracy, 0.1)
    assert by_row.state_dict() == by_dict.state_dict()
    assert by_row.means() == by_dict.means() and set(by_row.means()) == {"loss", "accuracy"}
    assert by_row.mean("accuracy") == (0.4 * 5 + 1 * 7) / 16


def test_add_row_needs_one_value_per_key():
    with pytest.raises(ValueError, match=r"got 1 values for the keys \('loss', 'accuracy'\)"):
        RunningMeans(keys=("loss", "accuracy")).add_row(3, 1.0)
