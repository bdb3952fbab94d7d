"""AuthenticDensityDetector: one-class fit, calibrated threshold, density options."""

import logging
import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import cdist
from scipy.special import gamma
from sklearn.covariance import OAS, EmpiricalCovariance, LedoitWolf
from sklearn.ensemble import IsolationForest
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, GroupKFold, KFold, cross_val_score
from sklearn.neighbors import KernelDensity
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_advdet import (
    AuthenticDensityDetector,
    LogitFeatures,
    heldout_log_likelihood_scorer,
    natural_error_report,
)
from sklearn_advdet.evaluation import LeaveOneAttackOut

# a correlated 3-D Gaussian: the known density of the authentic rows
_MEAN = np.array([1.0, -2.0, 0.5])
_COV = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]])


def _authentic(n, seed):
    return np.random.RandomState(seed).multivariate_normal(_MEAN, _COV, size=n)


def _betabinom_interval(n_test, m, n_cal, level=0.999):
    """Where the flagged count of n_test fresh rows lies (conformal, continuous scores).

    Given the calibration set, a fresh authentic row is flagged with
    probability U ~ Beta(m, n_cal + 1 - m); the count is then Binomial(n_test, U),
    i.e. beta-binomial.
    """
    dist = stats.betabinom(n_test, m, n_cal + 1 - m)
    return dist.ppf((1 - level) / 2), dist.ppf((1 + level) / 2)


# ------------------------------------------------------------ the threshold
@pytest.mark.parametrize("density", ["gaussian", "knn"])
def test_fpr_on_fresh_authentic_rows_holdout(density):
    X = _authentic(2000, seed=0)
    det = AuthenticDensityDetector(density, target_fpr=0.05, random_state=0).fit(X)
    assert det.n_calibration_ == 500
    m = math.floor(0.05 * 501)
    assert det.threshold_ == det.calibration_scores_[m - 1]
    fresh = _authentic(20000, seed=1)
    flagged = int(det.predict(fresh).sum())
    lo, hi = _betabinom_interval(fresh.shape[0], m, det.n_calibration_)
    assert lo <= flagged <= hi, (flagged, lo, hi)


def test_holdout_guarantee_is_exact_over_refits():
    # one fresh row per independent fit: flagged with probability exactly
    # m / (n_cal + 1), so the count over the refits is binomial
    n_rep, n_cal, alpha = 400, 39, 0.1
    m = math.floor(alpha * (n_cal + 1))
    flagged = 0
    for rep in range(n_rep):
        X = _authentic(60, seed=100 + rep)
        det = AuthenticDensityDetector(target_fpr=alpha, calibration_size=n_cal,
                                       random_state=rep).fit(X[:-1])
        flagged += int(det.predict(X[-1:])[0])
    test = stats.binomtest(flagged, n_rep, m / (n_cal + 1))
    assert test.pvalue > 0.001, (flagged, n_rep, m / (n_cal + 1))


def test_fpr_on_fresh_authentic_rows_cross_fitting():
    X = _authentic(1500, seed=2)
    det = AuthenticDensityDetector(target_fpr=0.05, calibration="cross", cv=5,
                                   random_state=0).fit(X)
    assert det.n_calibration_ == 1500
    m = math.floor(0.05 * 1501)
    fresh = _authentic(20000, seed=3)
    flagged = int(det.predict(fresh).sum())
    lo, hi = _betabinom_interval(fresh.shape[0], m, det.n_calibration_)
    assert lo <= flagged <= hi, (flagged, lo, hi)


def test_predict_proba_is_the_conformal_pvalue():
    X = _authentic(300, seed=4)
    det = AuthenticDensityDetector(target_fpr=0.1, random_state=0).fit(X)
    Q = _authentic(500, seed=5) * 1.5
    s = det.score_samples(Q)
    cal = det.calibration_scores_
    p = np.array([(1 + np.sum(cal <= v)) / (cal.size + 1) for v in s])
    proba = det.predict_proba(Q)
    np.testing.assert_allclose(proba[:, 0], p)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    pred = det.predict(Q)
    np.testing.assert_array_equal(pred, (p <= 0.1).astype(int))
    np.testing.assert_array_equal(pred, (det.decision_function(Q) > 0).astype(int))
    np.testing.assert_allclose(det.decision_function(Q), det.threshold_ - s)
    assert 0 < pred.mean() < 1


def test_too_few_calibration_rows_is_a_clear_error():
    X = _authentic(40, seed=6)
    with pytest.raises(ValueError, match=r"target_fpr=0.01 needs at least 99 authentic calibration"):
        AuthenticDensityDetector(target_fpr=0.01).fit(X)


# ------------------------------------------------------ the density options
def _cross(density, **kw):
    # calibration="cross" refits the final density on every row of X
    return AuthenticDensityDetector(density, calibration="cross", cv=3, random_state=0, **kw)


@pytest.mark.parametrize("covariance, est", [("ledoit_wolf", LedoitWolf), ("oas", OAS),
                                             ("empirical", EmpiricalCovariance)])
@pytest.mark.parametrize("standardize", [True, False])
def test_gaussian_equals_sklearn_covariance_and_scipy(covariance, est, standardize):
    X, Q = _authentic(80, seed=7), _authentic(30, seed=8) * 2
    det = _cross("gaussian", covariance=covariance, standardize=standardize).fit(X)
    if standardize:
        scaler = StandardScaler().fit(X)
        Z, Zq = scaler.transform(X), scaler.transform(Q)
        jacobian = -np.log(scaler.scale_).sum()
    else:
        Z, Zq, jacobian = X, Q, 0.0
    cov = est().fit(Z)
    expected = stats.multivariate_normal(cov.location_, cov.covariance_).logpdf(Zq) + jacobian
    np.testing.assert_allclose(det.score_samples(Q), expected, rtol=1e-10)


def test_gaussian_with_plain_covariance_is_the_density_of_x():
    # the Jacobian makes the standardised fit a density in X's units
    X, Q = _authentic(80, seed=9), _authentic(20, seed=10)
    a = _cross("gaussian", covariance="empirical", standardize=True).fit(X)
    b = _cross("gaussian", covariance="empirical", standardize=False).fit(X)
    np.testing.assert_allclose(a.score_samples(Q), b.score_samples(Q), rtol=1e-9)


def test_knn_hand_worked_example():
    # 1-D rows 0, 1, 3; k=1; the query 2 is at distance 1 from its nearest:
    # p = k / (n * V_1 * r) = 1 / (3 * 2 * 1)
    det = AuthenticDensityDetector("knn", n_neighbors=1, standardize=False)
    det = det.set_params(calibration="cross", cv=3, target_fpr=0.5)
    det.fit([[0.0], [1.0], [3.0]])
    np.testing.assert_allclose(det.score_samples([[2.0]]), [-math.log(6.0)])


def test_knn_equals_brute_force_cdist():
    X, Q = _authentic(90, seed=11), _authentic(25, seed=12)
    k = 4
    det = _cross("knn", n_neighbors=k).fit(X)
    scaler = StandardScaler().fit(X)
    r = np.sort(cdist(scaler.transform(Q), scaler.transform(X)), axis=1)[:, k - 1]
    d, n = X.shape[1], X.shape[0]
    volume = math.pi ** (d / 2) / gamma(d / 2 + 1)
    expected = np.log(k / (n * volume * r**d)) - np.log(scaler.scale_).sum()
    np.testing.assert_allclose(det.score_samples(Q), expected, rtol=1e-10)


def test_gmm_equals_gaussian_mixture():
    rng = np.random.RandomState(13)
    X = np.vstack([rng.normal(size=(60, 2)), rng.normal(size=(60, 2)) + 6])
    Q = rng.uniform(-3, 9, size=(30, 2))
    det = _cross("gmm", n_components=2).fit(X)
    scaler = StandardScaler().fit(X)
    gm = GaussianMixture(n_components=2, random_state=0).fit(scaler.transform(X))
    expected = gm.score_samples(scaler.transform(Q)) - np.log(scaler.scale_).sum()
    np.testing.assert_allclose(det.score_samples(Q), expected, rtol=1e-10)


def test_isolation_forest_equals_sklearn():
    X, Q = _authentic(120, seed=14), _authentic(30, seed=15) * 2
    det = _cross("isolation_forest").fit(X)
    scaler = StandardScaler().fit(X)
    iso = IsolationForest(random_state=0).fit(scaler.transform(X))
    np.testing.assert_allclose(det.score_samples(Q), iso.score_samples(scaler.transform(Q)))


def test_any_estimator_with_score_samples_is_cloned():
    X, Q = _authentic(100, seed=16), _authentic(20, seed=17)
    kde = KernelDensity(bandwidth=0.7)
    det = _cross(kde, standardize=False).fit(X)
    assert not hasattr(kde, "tree_")  # the given estimator stays unfitted
    expected = KernelDensity(bandwidth=0.7).fit(X).score_samples(Q)
    np.testing.assert_allclose(det.score_samples(Q), expected)


def test_estimator_without_score_samples_is_refused():
    with pytest.raises(ValueError, match="density"):
        AuthenticDensityDetector(StandardScaler()).fit(_authentic(50, seed=0))


# ------------------------------------------------------------- two tails
def test_flags_both_tails_where_a_one_sided_threshold_cannot():
    rng = np.random.RandomState(18)
    authentic = rng.normal(size=(1000, 1))
    over = rng.normal(3.5, 0.3, size=(150, 1))     # e.g. PGD: over-confident
    under = rng.normal(-3.5, 0.3, size=(150, 1))   # e.g. DeepFool: under-confident
    det = AuthenticDensityDetector(random_state=0).fit(authentic[:600])
    X = np.vstack([authentic[600:], over, under])
    y = np.r_[np.zeros(400), np.ones(300)]
    auc_density = roc_auc_score(y, det.decision_function(X))
    auc_high, auc_low = roc_auc_score(y, X[:, 0]), roc_auc_score(y, -X[:, 0])
    assert auc_density > 0.99
    assert max(auc_high, auc_low) < 0.8  # each one-sided score misses a tail
    assert det.predict(over).mean() > 0.9 and det.predict(under).mean() > 0.9


def test_pipeline_after_logit_features_flags_over_and_under_confidence():
    rng = np.random.RandomState(19)
    logits = rng.normal(size=(800, 10))
    logits[np.arange(800), rng.randint(10, size=800)] += 4.0  # a confident class
    over = logits[:200] * 4.0                                 # over-confident
    under = logits[:200].copy()
    top2 = np.argsort(under, axis=1)[:, -2:]
    under[np.arange(200), top2[:, 1]] = under[np.arange(200), top2[:, 0]] + 0.01
    pipe = make_pipeline(LogitFeatures("logits", features=["margin", "entropy"]),
                         AuthenticDensityDetector(random_state=0))
    pipe.fit(logits[200:])
    assert pipe.predict(over).mean() > 0.9
    assert pipe.predict(under).mean() > 0.9
    assert pipe.predict(logits[:200]).mean() < 0.2


# ---------------------------------------------------------- composability
def test_grid_search_on_authentic_rows_only_picks_the_mixture():
    rng = np.random.RandomState(20)
    centres = np.array([[0, 0], [6, 0], [0, 6]])
    X = np.vstack([rng.normal(size=(100, 2)) + c for c in centres])
    grid = GridSearchCV(AuthenticDensityDetector(target_fpr=0.1, random_state=0),
                        {"density": ["gaussian", "gmm"], "n_components": [1, 3]},
                        cv=KFold(3, shuffle=True, random_state=0))
    grid.fit(X)
    assert grid.best_params_ == {"density": "gmm", "n_components": 3}
    det = grid.best_estimator_
    np.testing.assert_allclose(det.score(X), det.score_samples(X).mean())


def test_score_and_scorer_use_the_authentic_rows():
    X = _authentic(200, seed=21)
    det = AuthenticDensityDetector(random_state=0).fit(X[:150])
    Q = np.vstack([X[150:], X[150:] + 10])
    y = np.r_[np.zeros(50), np.ones(50)]
    expected = det.score_samples(X[150:]).mean()
    np.testing.assert_allclose(det.score(Q, y), expected)
    np.testing.assert_allclose(heldout_log_likelihood_scorer(det, Q, y), expected)
    np.testing.assert_allclose(heldout_log_likelihood_scorer(det, X[150:]), expected)


def _detection_set(seed=22):
    rng = np.random.RandomState(seed)
    n = 300
    authentic = rng.normal(size=(n, 2))
    fgsm = authentic + rng.normal(size=(n, 2)) * 0.3 + 4
    pgd = authentic - 4
    X = np.vstack([authentic, fgsm, pgd])
    y = np.r_[np.zeros(n), np.ones(2 * n)].astype(int)
    attack = np.r_[["-"] * n, ["fgsm"] * n, ["pgd"] * n]
    groups = np.tile(np.arange(n), 3)
    return X, y, attack, groups


def test_supervised_cv_drops_adversarial_rows_and_scores_auc():
    X, y, attack, groups = _detection_set()
    det = AuthenticDensityDetector(drop_adversarial=True, random_state=0)
    auc = cross_val_score(det, X, y, groups=groups, cv=GroupKFold(3), scoring="roc_auc")
    assert auc.min() > 0.95
    loao = LeaveOneAttackOut(attack, random_state=0)
    auc = cross_val_score(det, X, y, groups=groups, cv=loao, scoring="roc_auc")
    assert auc.shape == (2,) and auc.min() > 0.95
    with pytest.raises(ValueError, match="drop_adversarial=True"):
        cross_val_score(det.set_params(drop_adversarial=False), X, y, groups=groups,
                        cv=GroupKFold(3), scoring="roc_auc", error_score="raise")


def test_multi_metric_search_with_the_likelihood_scorer():
    X, y, _, groups = _detection_set()
    grid = GridSearchCV(
        AuthenticDensityDetector(drop_adversarial=True, random_state=0),
        {"density": ["gaussian", "knn"]},
        scoring={"auc": "roc_auc", "loglik": heldout_log_likelihood_scorer},
        refit="auc", cv=GroupKFold(3),
    ).fit(X, y, groups=groups)
    assert np.all(np.isfinite(grid.cv_results_["mean_test_loglik"]))
    assert grid.best_score_ > 0.95


def test_frozen_reference_transformer_inside_a_pipeline():
    X = _authentic(300, seed=23)
    ref = StandardScaler().fit(_authentic(1000, seed=24))
    pipe = make_pipeline(FrozenEstimator(ref), AuthenticDensityDetector(random_state=0))
    pipe.fit(X)
    direct = AuthenticDensityDetector(random_state=0).fit(ref.transform(X))
    Q = _authentic(20, seed=25)
    np.testing.assert_allclose(pipe.decision_function(Q), direct.decision_function(ref.transform(Q)))


# --------------------------------------------------------------- bad input
def test_fit_refuses_adversarial_rows():
    X = _authentic(100, seed=26)
    y = np.r_[np.zeros(95), np.ones(5)]
    det = AuthenticDensityDetector(random_state=0)
    with pytest.raises(ValueError, match=r"y marks 5 of 100 rows adversarial.*drop_adversarial=True"):
        det.fit(X, y)
    assert not hasattr(det, "threshold_")


def test_y_of_zeros_is_the_same_as_no_y():
    X = _authentic(100, seed=27)
    a = AuthenticDensityDetector(random_state=0).fit(X, np.zeros(100))
    b = AuthenticDensityDetector(random_state=0).fit(X)
    assert a.threshold_ == b.threshold_


def test_drop_adversarial_drops_and_logs(caplog):
    X = _authentic(100, seed=28)
    y = np.r_[np.zeros(95), np.ones(5)]
    with caplog.at_level(logging.INFO, logger="sklearn_advdet.authentic"):
        det = AuthenticDensityDetector(drop_adversarial=True, random_state=0).fit(X, y)
    assert "dropped 5 adversarial row(s) of 100" in caplog.text
    ref = AuthenticDensityDetector(random_state=0).fit(X[:95])
    assert det.threshold_ == ref.threshold_
    with pytest.raises(ValueError, match="every row adversarial|all 100 sample"):
        det.fit(X, np.ones(100))


def test_non_binary_labels_are_refused():
    with pytest.raises(ValueError, match="0 \\(authentic\\) and 1"):
        AuthenticDensityDetector().fit(_authentic(50, seed=0), np.arange(50) % 3)


def test_nan_input_is_refused():
    X = _authentic(100, seed=29)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        AuthenticDensityDetector().fit(bad)
    det = AuthenticDensityDetector(random_state=0).fit(X)
    with pytest.raises(ValueError, match="NaN"):
        det.predict(bad)


def test_one_row_fit_says_what_to_do():
    with pytest.raises(ValueError, match="got 1 sample.*pass more authentic rows"):
        AuthenticDensityDetector().fit([[1.0, 2.0]])


def test_too_few_rows_for_the_density():
    with pytest.raises(ValueError, match="needs at least 10"):
        AuthenticDensityDetector("knn", n_neighbors=10, target_fpr=0.3).fit(_authentic(12, seed=0))


# ----------------------------------------------------------- natural errors
def test_natural_error_report_counts_flags():
    X = _authentic(400, seed=30)
    det = AuthenticDensityDetector(random_state=0).fit(X)
    Q = np.vstack([_authentic(50, seed=31), _authentic(10, seed=32) * 4])
    true = np.zeros(60, dtype=int)
    pred = np.r_[np.zeros(50, dtype=int), np.ones(10, dtype=int)]
    report = natural_error_report(det, Q, true, pred)
    flagged = det.predict(Q) == 1
    assert report == {
        "n_correct": 50,
        "n_errors": 10,
        "flagged_correct": flagged[:50].mean(),
        "flagged_errors": flagged[50:].mean(),
    }
    assert report["flagged_errors"] > report["flagged_correct"]


# ------------------------------------------------------------ common checks
_MULTICLASS_Y = "passes y with labels 0, 1, 2 or strings; a detector's y holds 0/1 detection labels"


@parametrize_with_checks(
    [
        AuthenticDensityDetector(target_fpr=0.5, calibration_size=1, drop_adversarial=True,
                                 random_state=0),
        AuthenticDensityDetector("knn", n_neighbors=1, target_fpr=0.3, calibration="cross",
                                 cv=2, drop_adversarial=True),
    ],
    expected_failed_checks=lambda est: {
        "check_estimators_dtypes": _MULTICLASS_Y,
        "check_classifier_data_not_an_array": _MULTICLASS_Y,
        "check_classifiers_classes": _MULTICLASS_Y,
        "check_fit2d_1feature": _MULTICLASS_Y,
        "check_classifiers_one_label": (
            "fitting on one class (authentic rows) is what a one-class detector "
            "does; the check expects an error"
        ),
        "check_classifiers_train": (
            "predict flags rows whose conformal p-value (predict_proba[:, 0]) is "
            "<= target_fpr, so it is not the argmax of predict_proba"
        ),
    },
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ------------------------------------------------------------------- extras
def test_singular_empirical_covariance_names_the_fix():
    X = _authentic(40, seed=33)
    X = np.hstack([X, X[:, :1] * 2.0])  # a column that is a multiple of another
    with pytest.raises(ValueError, match="singular.*covariance='ledoit_wolf' or 'oas'"):
        AuthenticDensityDetector(covariance="empirical", target_fpr=0.2).fit(X)
    AuthenticDensityDetector(covariance="ledoit_wolf", target_fpr=0.2).fit(X)


def test_weighted_score_and_pipeline_score():
    X = _authentic(200, seed=34)
    pipe = make_pipeline(StandardScaler(), AuthenticDensityDetector(random_state=0)).fit(X[:150])
    s = pipe.score_samples(X[150:])
    np.testing.assert_allclose(pipe.score(X[150:]), s.mean())
    w = np.arange(50, dtype=float)
    det = pipe[-1]
    Z = pipe[0].transform(X[150:])
    np.testing.assert_allclose(det.score(Z, sample_weight=w), np.average(s, weights=w))


def test_natural_error_report_checks_lengths():
    det = AuthenticDensityDetector(random_state=0).fit(_authentic(100, seed=35))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        natural_error_report(det, _authentic(5, seed=36), [0] * 5, [0] * 4)


def test_natural_error_report_checks_shapes_and_kinds():
    # fuzz regressions: 2-D classes broadcast inside numpy; names compared to
    # indices flagged every row a natural error without a word
    det = AuthenticDensityDetector(random_state=0).fit(_authentic(100, seed=37))
    X = _authentic(4, seed=38)
    with pytest.raises(ValueError, match="pred_class must hold one class per row"):
        natural_error_report(det, X, [0, 1, 2, 0], np.zeros((4, 2), dtype=int))
    with pytest.raises(TypeError, match="same kind"):
        natural_error_report(det, X, [0, 1, 2, 0], ["0", "1", "2", "0"])


def test_gmm_on_fewer_distinct_rows_than_components_names_the_fix():
    # fuzz regression: k-means started from fewer clusters than components
    # (a ConvergenceWarning) and fitted a degenerate mixture
    X = np.repeat(_authentic(2, seed=39), 20, axis=0)
    with pytest.raises(ValueError, match="2 distinct point.*n_components=4"):
        AuthenticDensityDetector("gmm", n_components=4, target_fpr=0.2).fit(X)
    AuthenticDensityDetector("gmm", n_components=2, target_fpr=0.2, random_state=0).fit(X)
