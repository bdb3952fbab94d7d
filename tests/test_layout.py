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

def test_one_rule_for_plain_tuples_and_shorthands():
    # a plain tuple is FeatureLayout(tuple): hidden layers only, no logits
    assert check_layout((4, 3), 7) == FeatureLayout([4, 3])
    assert not check_layout([4, 3], 7).has_logits
    single = check_layout("single", 7)
    assert single == FeatureLayout([7]) and single.n_layers == 1
    logits = check_layout("logits", 7, need_logits=True, need_layers=False)
    assert logits.has_logits and logits.n_layers == 0 and logits.logits_slice == slice(0, 7)
    assert logits.select("all") == []
    layout = FeatureLayout([4, 3], has_logits=True)
    assert check_layout(layout, 7, need_logits=True) is layout


def test_check_layout_refuses_guessing_and_names_the_fix():
    with pytest.raises(ValueError, match="needs layer_sizes: pass the FeatureLayout"):
        check_layout(None, 7)
    with pytest.raises(ValueError, match=r"Foo needs the logits block.*has_logits=True"):
        check_layout((4, 3), 7, need_logits=True, estimator="Foo")
    with pytest.raises(ValueError, match="reads hidden layers but the layout holds the logits"):
        check_layout("logits", 7)
    with pytest.raises(TypeError, match="'single' or 'logits'"):
        check_layout("all", 7)


def test_dict_round_trip_and_equality():
    layout = FeatureLayout([3, 4, 2], names=["x", "y", "logits"], has_logits=True)
    again = FeatureLayout.from_dict(layout.to_dict())
    assert again == layout and hash(again) == hash(layout)
    assert again != FeatureLayout([3, 4, 2])
