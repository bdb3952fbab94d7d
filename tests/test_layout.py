import numpy as np
import pytest

from sklearn_advdet import FeatureLayout
from sklearn_advdet._layout import check_layout


def test_slices_cover_columns_in_order():
    layout = FeatureLayout([3, 5, 2, 10], names=["a", "b", "c", "logits"], has_logits=True)
    X = np.arange(20)[None, :]
    pieces = [X[:, layout.slice_of(i)] for i in range(4)]
    np.testing.assert_array_equal(np.concatenate(pieces, axis=1), X)
    assert layout.logits_slice == slice(10, 20)
    assert layout.n_layers == 3 and layout.n_logits == 10 and layout.n_features == 20
    assert layout.select("all") == [0, 1, 2]
    assert layout.select(["c", 0]) == [2, 0]
    assert layout.select(-1) == [2]


def test_select_errors():
    layout = FeatureLayout([3, 5, 10], has_logits=True)
    with pytest.raises(ValueError, match="unknown layer 'logits'"):
        layout.select("logits")
    with pytest.raises(ValueError, match="out of range"):
        layout.select(2)
    with pytest.raises(ValueError, match="twice"):
        layout.select([0, -2])
    with pytest.raises(TypeError, match="index or name"):
        layout.select([1.5])
    with pytest.raises(ValueError, match="no logits block"):
        FeatureLayout([3, 4]).logits_slice


def test_check_layout_messages():
    with pytest.raises(ValueError, match="X has 330 columns but layer_sizes sum to 336"):
        check_layout([300, 36], 330)
    with pytest.raises(ValueError, match="positive integers"):
        check_layout([3, 0], 3)
    with pytest.raises(TypeError, match="sequence of positive ints"):
        check_layout("64", 64)
    assert check_layout(None, 7).sizes == (7,)
    assert check_layout([4, 3], 7, logits_last=True).has_logits


def test_dict_round_trip_and_equality():
    layout = FeatureLayout([3, 4, 2], names=["x", "y", "logits"], has_logits=True)
    again = FeatureLayout.from_dict(layout.to_dict())
    assert again == layout and hash(again) == hash(layout)
    assert again != FeatureLayout([3, 4, 2])
