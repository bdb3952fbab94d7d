"""LogitFeatures against scipy's softmax, logsumexp and entropy."""

import numpy as np
import pytest
from scipy.special import logsumexp, softmax
from scipy.stats import entropy
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_advdet import FeatureLayout, LogitFeatures
from sklearn_advdet.features.logit import LOGIT_FEATURES


def _data(n=40, n_hidden=3, n_classes=5, seed=0):
    rng = np.random.RandomState(seed)
    hidden = rng.normal(size=(n, n_hidden))
    logits = 3 * rng.normal(size=(n, n_classes))
    layout = FeatureLayout([n_hidden, n_classes], has_logits=True)
    return np.hstack([hidden, logits]), logits, layout


@pytest.mark.parametrize("T", [1.0, 0.5, 3.0])
def test_statistics_match_scipy(T):
    X, z, layout = _data()
    F = LogitFeatures(layout, temperature=T).fit_transform(X)
    p = softmax(z / T, axis=1)
    srt = np.sort(z, axis=1)
    expected = np.column_stack([
        p.max(axis=1),
        srt[:, -1] - srt[:, -2],
        -T * logsumexp(z / T, axis=1),
        entropy(p, axis=1),
        z.max(axis=1),
    ])
    np.testing.assert_allclose(F, expected, rtol=1e-12, atol=1e-12)


def test_subset_in_given_order_and_names():
    X, z, layout = _data()
    full = LogitFeatures(layout).fit_transform(X)
    pick = ["entropy", "max_logit", "margin"]
    lf = LogitFeatures(layout, features=pick).fit(X)
    cols = [LOGIT_FEATURES.index(f) for f in pick]
    np.testing.assert_array_equal(lf.transform(X), full[:, cols])
    assert list(lf.get_feature_names_out()) == pick


def test_reads_only_the_logits_block():
    X, z, layout = _data()
    X2 = X.copy()
    X2[:, :3] = 1e6
    lf = LogitFeatures(layout).fit(X)
    np.testing.assert_array_equal(lf.transform(X), lf.transform(X2))
    np.testing.assert_array_equal(
        LogitFeatures("logits").fit_transform(z), lf.transform(X)
    )


def test_large_logits_stay_finite():
    z = np.array([[1000.0, 0.0, -1000.0], [800.0, 800.0, 0.0]])
    F = LogitFeatures("logits").fit_transform(z)
    assert np.all(np.isfinite(F))
    np.testing.assert_allclose(F[:, 0], [1.0, 0.5])
    np.testing.assert_allclose(F[:, 2], -logsumexp(z, axis=1))
    np.testing.assert_allclose(F[:, 3], [0.0, np.log(2)], atol=1e-12)


def test_layout_without_logits_names_the_fix():
    X, _, _ = _data()
    with pytest.raises(ValueError, match="has_logits=True"):
        LogitFeatures((3, 5)).fit(X)
    with pytest.raises(ValueError, match="layer_sizes"):
        LogitFeatures().fit(X)


def test_bad_input():
    X, _, layout = _data()
    Xn = X.copy()
    Xn[0, -1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        LogitFeatures(layout).fit(Xn)
    lf = LogitFeatures(layout).fit(X)
    with pytest.raises(ValueError, match="NaN"):
        lf.transform(Xn)
    with pytest.raises(ValueError, match="expecting 8 features"):
        lf.transform(X[:, 1:])
    with pytest.raises(ValueError, match="columns but layer_sizes sum"):
        LogitFeatures(layout).fit(X[:, 1:])
    with pytest.raises(ValueError, match="unknown logit features"):
        LogitFeatures(layout, features=["softmax"]).fit(X)
    with pytest.raises(ValueError, match="twice"):
        LogitFeatures(layout, features=["margin", "margin"]).fit(X)
    with pytest.raises(ValueError, match="at least 2 logits"):
        LogitFeatures("logits").fit(X[:, :1])


@parametrize_with_checks([LogitFeatures("logits"),
                          LogitFeatures("logits", features=["energy"], temperature=2.0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)
