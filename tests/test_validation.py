"""The shared label checks of sklearn_advdet._validation (regressions of the fuzz suite)."""

import numpy as np
import pytest

from sklearn_advdet import (
    KNNClassScorer,
    MahalanobisScorer,
    MLPDetector,
    PivotEmbedder,
    ScoreThresholdDetector,
    metrics,
)
from sklearn_advdet._validation import check_class_targets, check_label_types
from sklearn_advdet.evaluation import (
    DkNNCredibilityPeer,
    KernelDensityPeer,
    LeaveOneAttackOut,
)

MIXED = np.array(["x", 0, 1, 1], dtype=object)  # numpy cannot sort it


def test_check_label_types_refuses_strings_mixed_with_numbers():
    with pytest.raises(TypeError, match=r"y mixes labels of types \['int', 'str'\].*one type"):
        check_label_types(MIXED)
    with pytest.raises(TypeError, match="y_ref mixes"):
        check_class_targets(MIXED, "y_ref")
    # one kind, object dtype or not, passes through
    for ok in (np.array(["a", "b"], dtype=object), np.array([0, 1], dtype=object),
               np.array(["a", "b"]), np.arange(3), np.array([], dtype=object)):
        assert check_label_types(ok) is not None


X = np.hstack([np.random.default_rng(0).normal(size=(4, 2)), np.eye(2)[[0, 1, 1, 0]]])


@pytest.mark.parametrize("estimator", [
    PivotEmbedder("single"),
    KNNClassScorer("single", n_neighbors=2),
    MahalanobisScorer("single", class_mean="closest"),
    KernelDensityPeer("single", classes="max"),
    DkNNCredibilityPeer("single", n_neighbors=2),
    ScoreThresholdDetector(),
    MLPDetector(max_epochs=1, hidden_size=2),
], ids=lambda e: type(e).__name__)
def test_mixed_labels_are_a_type_error_naming_the_fix(estimator):
    # was: TypeError "'<' not supported between instances of 'int' and 'str'"
    # from inside np.unique
    with pytest.raises(TypeError, match="mixes labels of types"):
        estimator.fit(X, MIXED)


def test_metrics_and_splitters_refuse_mixed_labels():
    with pytest.raises(TypeError, match="y_true mixes"):
        metrics.overall_auc(MIXED, [0.1, 0.2, 0.3, 0.4])
    cv = LeaveOneAttackOut(["-", "a", "b", "a"], test_size=0.5)
    with pytest.raises(TypeError, match="y mixes"):
        next(cv.split(np.zeros((4, 1)), MIXED, [0, 1, 2, 3]))
