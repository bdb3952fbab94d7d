"""make_detector on the embedded digits detection set."""

import numpy as np
import pytest
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, GroupKFold, GroupShuffleSplit

from sklearn_advdet import FeatureLayout, MahalanobisScorer, load_digits_detection, make_detector

pytestmark = pytest.mark.slow
FEATS = ["logit", "mahalanobis", "knn"]


@pytest.fixture(scope="module")
def digits():
    d = load_digits_detection()
    # half of the source images (the kNN scores, k = all 898 references,
    # dominate the cost), authentic + FGSM + PGD
    keep = np.isin(d.attack, ["authentic", "fgsm", "pgd"]) & (d.groups % 2 == 0)
    tr, te = next(GroupShuffleSplit(test_size=0.3, random_state=0)
                  .split(d.X[keep], d.y[keep], d.groups[keep]))
    return d, d.X[keep], d.y[keep], d.groups[keep], tr, te


def test_supervised_detector_fits_and_detects(digits):
    d, X, y, groups, tr, te = digits
    det = make_detector(d.layout, d.X_ref, d.y_ref, mode="supervised", features=FEATS,
                        random_state=0)
    union = det.named_steps["features"]
    assert all(isinstance(t, FrozenEstimator) for n, t in union.transformer_list if n != "logit")
    assert not hasattr(det.named_steps["classifier"], "classes_")  # last step unfitted
    det.fit(X[tr], y[tr])
    auc = roc_auc_score(y[te], det.predict_proba(X[te])[:, 1])
    assert auc > 0.9, auc
    names = det[:-1].get_feature_names_out()
    L = d.layout.n_layers
    assert len(names) == 5 + 2 * L
    assert names[0] == "logit__max_softmax"
    assert [n for n in names if n.startswith("mahalanobis__")] == [
        f"mahalanobis__mahalanobis_{layer}" for layer in d.layout.layer_names]
    # the frozen step is the one fitted on the reference set, unchanged by fit
    maha = dict(union.transformer_list)["mahalanobis"].estimator
    ref = MahalanobisScorer(d.layout, log=True).fit(d.X_ref, d.y_ref)
    np.testing.assert_allclose(maha.transform(X[te][:20]), ref.transform(X[te][:20]))


def test_gridsearch_over_a_parameter(digits):
    d, X, y, groups, tr, te = digits
    sub = np.random.RandomState(0).permutation(len(X))[:900]
    det = make_detector(d.layout, d.X_ref, d.y_ref, mode="supervised",
                        features=["logit", "mahalanobis"], classifier="logistic")
    grid = GridSearchCV(det, {"classifier__C": [1e-3, 1.0]}, cv=GroupKFold(2),
                        scoring="roc_auc")
    grid.fit(X[sub], y[sub], groups=groups[sub])
    assert list(grid.cv_results_["param_classifier__C"]) == [1e-3, 1.0]
    assert grid.best_score_ > 0.8
    assert [n for n, _ in grid.best_estimator_.steps] == ["features", "scale", "classifier"]


def test_default_composition(digits):
    d, X, y, groups, tr, te = digits
    det = make_detector(d.layout, d.X_ref, d.y_ref, random_state=0)
    assert [n for n, _ in det.named_steps["features"].transformer_list] == [
        "logit", "mahalanobis", "lid", "knn"]
    # the default is the hybrid: boosting or the authentic density, fused
    assert type(det.named_steps["detector"]).__name__ == "ConformalFusionDetector"
    det.fit(X[tr], y[tr])
    assert roc_auc_score(y[te], det.predict_proba(X[te])[:, 1]) > 0.9


def test_authentic_mode_needs_no_attack(digits):
    d, X, y, groups, tr, te = digits
    det = make_detector(d.layout, d.X_ref, d.y_ref, mode="authentic", random_state=0)
    assert [n for n, _ in det.steps] == ["features", "detector"]
    assert [n for n, _ in det.named_steps["features"].transformer_list] == [
        "logit", "mahalanobis"]
    authentic_train = tr[y[tr] == 0]
    det.fit(X[authentic_train])
    auc = roc_auc_score(y[te], det.decision_function(X[te]))
    assert auc > 0.8, auc


def test_bad_arguments():
    rng = np.random.RandomState(0)
    X_ref = rng.normal(size=(30, 6))
    y_ref = np.arange(30) % 2
    with pytest.raises(ValueError, match="has_logits=True"):
        make_detector((4, 2), X_ref, y_ref)
    layout = FeatureLayout([4, 2], has_logits=True)
    with pytest.raises(ValueError, match="distinct names"):
        make_detector(layout, X_ref, y_ref, features=["logit", "softmax"])
    with pytest.raises(ValueError, match="columns but layer_sizes sum"):
        make_detector(layout, X_ref[:, :5], y_ref)
    with pytest.raises(ValueError, match="mode"):
        make_detector(layout, X_ref, y_ref, mode="oneclass")
