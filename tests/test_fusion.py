"""ConformalFusionDetector: conformal p-values of two components, Bonferroni-fused."""

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KernelDensity
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_advdet import AuthenticDensityDetector, ConformalFusionDetector, FeatureLayout
from sklearn_advdet import make_detector


def _data(seed=0, n_auth=600, n_adv=300):
    rng = np.random.RandomState(seed)
    authentic = rng.normal(size=(n_auth, 3))
    seen = rng.normal(size=(n_adv, 3)) + [4.0, 0.0, 0.0]
    X = np.vstack([authentic, seen])
    y = np.r_[np.zeros(n_auth, int), np.ones(n_adv, int)]
    return X, y


def test_p_values_equal_a_brute_force_count():
    X, y = _data()
    det = ConformalFusionDetector(LogisticRegression(), random_state=0).fit(X, y)
    Q = np.random.RandomState(1).normal(size=(50, 3)) * 2
    s_cls = det.classifier_.decision_function(Q)
    s_den = -det.density_.score_samples(Q)
    cal = det.calibration_scores_
    n = det.n_calibration_
    assert n == int(np.floor(0.25 * 600)) and cal.shape == (n, 2)
    expected = np.column_stack([
        [(1 + np.sum(cal[:, 0] >= s)) / (n + 1) for s in s_cls],
        [(1 + np.sum(cal[:, 1] >= s)) / (n + 1) for s in s_den],
    ])
    np.testing.assert_allclose(det.p_values(Q), expected)
    # the calibration scores are the held-back authentic rows' own scores
    assert np.all(np.diff(cal, axis=0) >= 0)


def test_predict_is_the_bonferroni_rule_and_the_sign_of_decision_function():
    X, y = _data(seed=2)
    for target in (0.02, 0.05, 0.2):
        det = ConformalFusionDetector(target_fpr=target, random_state=0).fit(X, y)
        Q = np.random.RandomState(3).normal(size=(400, 3)) * 2.5
        fused = np.minimum(1, 2 * det.p_values(Q).min(axis=1))
        np.testing.assert_allclose(det.predict_proba(Q)[:, 0], fused)
        flagged = det.predict(Q) == 1
        np.testing.assert_array_equal(flagged, fused <= target)
        np.testing.assert_array_equal(flagged, det.decision_function(Q) > 0)
        assert 0 < flagged.sum() < len(Q)


def test_false_positive_rate_on_fresh_authentic_rows():
    """At most target_fpr on new authentic rows (union bound), within a binomial band."""
    target, n_new = 0.1, 20000
    rates = []
    for seed in range(4):
        X, y = _data(seed=10 + seed, n_auth=800)
        det = ConformalFusionDetector(target_fpr=target, random_state=seed).fit(X, y)
        fresh = np.random.RandomState(100 + seed).normal(size=(n_new, 3))
        rates.append(det.predict(fresh).mean())
    # each component flags at most target/2 in expectation; the mean over refits
    # may exceed target only by sampling noise
    band = 3 * np.sqrt(target * (1 - target) / (len(rates) * n_new)) + 0.02
    assert np.mean(rates) <= target + band
    assert np.mean(rates) > target / 4  # the threshold is not trivially loose


def test_flags_an_attack_the_classifier_never_saw():
    X, y = _data(seed=4)
    det = ConformalFusionDetector(LogisticRegression(), random_state=0).fit(X, y)
    rng = np.random.RandomState(5)
    unseen = rng.normal(size=(200, 3)) + [0.0, -5.0, 0.0]   # not along the trained axis
    seen = rng.normal(size=(200, 3)) + [4.0, 0.0, 0.0]
    # the classifier alone scores the unseen attack like authentic rows ...
    cls_flags = det.p_values(unseen)[:, 0] <= det.target_fpr / 2
    assert cls_flags.mean() < 0.1
    # ... the fusion flags it, and the seen one, through its density component
    assert det.predict(unseen).mean() > 0.9
    assert det.predict(seen).mean() > 0.9


def test_bad_input_names_the_fix():
    X, y = _data()
    with pytest.raises(ValueError, match="one class only"):
        ConformalFusionDetector().fit(X, np.zeros(len(y)))
    with pytest.raises(ValueError, match="at least 39"):
        ConformalFusionDetector(calibration_size=20, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="authentic rows"):
        ConformalFusionDetector(calibration_size=599).fit(X, y)
    with pytest.raises(ValueError, match="0 and 1|0/1|binary"):
        ConformalFusionDetector().fit(X, np.r_[y[:-1], 2])


def test_sample_weight_reaches_the_classifier():
    X, y = _data(seed=6)
    w = np.r_[np.ones(600), np.full(300, 5.0)]
    a = ConformalFusionDetector(LogisticRegression(), random_state=0).fit(X, y, sample_weight=w)
    b = ConformalFusionDetector(LogisticRegression(), random_state=0).fit(X, y)
    assert not np.allclose(a.classifier_.coef_, b.classifier_.coef_)
    np.testing.assert_array_equal(a.calibration_scores_[:, 1], b.calibration_scores_[:, 1])


def test_make_detector_hybrid():
    rng = np.random.RandomState(0)
    layout = FeatureLayout([4, 3], has_logits=True)
    y_ref = np.arange(300) % 3
    X_ref = np.hstack([rng.normal(size=(300, 4)) + y_ref[:, None], 3 * np.eye(3)[y_ref]])
    det = make_detector(layout, X_ref, y_ref, mode="hybrid", features=["logit", "mahalanobis"],
                        classifier="logistic", random_state=0)
    assert isinstance(det[-1], ConformalFusionDetector)
    assert type(det[-1].classifier).__name__ == "Pipeline"  # scaled logistic regression
    X = np.vstack([X_ref, X_ref + rng.normal(scale=3, size=X_ref.shape)])
    yy = np.repeat([0, 1], 300)
    p = det.fit(X, yy).predict_proba(X)
    assert p.shape == (600, 2) and ((p >= 0) & (p <= 1)).all()
    assert isinstance(det[-1].density_, AuthenticDensityDetector)


@parametrize_with_checks(
    # a kernel density: the checks' data sets are too small for a full covariance
    # and a loose target_fpr, for a few held-back rows to give a threshold
    [ConformalFusionDetector(LogisticRegression(), KernelDensity(), target_fpr=0.9,
                             calibration_size=0.5, random_state=0)],
    expected_failed_checks=lambda est: {
        "check_classifiers_train": (
            "predict flags a row when either component's conformal p-value is <= "
            "target_fpr / 2 (most authentic rows at the checks' loose target 0.9), "
            "not the argmax of predict_proba"
        ),
        "check_decision_proba_consistency": (
            "predict_proba[:, 0] is the discrete Bonferroni p-value (ties), "
            "decision_function a continuous score with the same zero"),
        "check_sample_weights_not_an_array": "a detector's y holds 0/1 detection labels",
        "check_sample_weights_not_overwritten": "a detector's y holds 0/1 detection labels",
        "check_sample_weights_pandas_series": "a detector's y holds 0/1 detection labels",
        "check_sample_weights_shape": "a detector's y holds 0/1 detection labels",
        "check_classifiers_classes": "a detector's y holds 0/1 detection labels",
        "check_estimators_dtypes": "a detector's y holds 0/1 detection labels",
        "check_classifier_data_not_an_array": "a detector's y holds 0/1 detection labels",
        "check_fit2d_1feature": "a detector's y holds 0/1 detection labels",
        "check_sample_weight_equivalence_on_dense_data": (
            "the held-back calibration rows are drawn among the authentic rows: a "
            "repeated row changes the draw, a weight does not"),
    },
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
