"""MahalanobisScorer against an independent numpy + sklearn.covariance + scipy computation."""

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import OAS, EmpiricalCovariance, LedoitWolf
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_advdet import FeatureLayout, MahalanobisScorer
from sklearn_advdet.features import mahalanobis as mahamod

_EST = {"ledoit_wolf": LedoitWolf, "oas": OAS, "empirical": EmpiricalCovariance}


def _data(n_ref=120, sizes=(4, 6), n_classes=3, n=30, seed=0):
    rng = np.random.RandomState(seed)
    y_ref = rng.randint(n_classes, size=n_ref)
    y_ref[:n_classes] = np.arange(n_classes)
    blocks = [rng.normal(size=(n_ref, d)) @ rng.normal(size=(d, d))
              + 3 * y_ref[:, None] for d in sizes]
    logits_ref = np.eye(n_classes)[y_ref] * 4 + rng.normal(size=(n_ref, n_classes))
    X_ref = np.hstack(blocks + [logits_ref])
    X = rng.normal(size=(n, sum(sizes) + n_classes)) * 2 + 3
    layout = FeatureLayout(list(sizes) + [n_classes], has_logits=True)
    return X_ref, y_ref, X, layout


def _reference(X_ref, y_ref, X, layout, kind, class_mean):
    """Per-layer distances the slow way: loops, sklearn.covariance, scipy."""
    classes = np.unique(y_ref)
    pred = X[:, layout.logits_slice].argmax(axis=1)
    out = np.empty((X.shape[0], layout.n_layers))
    for i in range(layout.n_layers):
        Zr, Z = X_ref[:, layout.slice_of(i)], X[:, layout.slice_of(i)]
        means = {c: Zr[y_ref == c].mean(axis=0) for c in classes}
        centred = np.vstack([Zr[y_ref == c] - means[c] for c in classes])
        VI = np.linalg.inv(_EST[kind](assume_centered=True).fit(centred).covariance_)
        for r in range(Z.shape[0]):
            d = {c: mahalanobis(Z[r], means[c], VI) for c in classes}
            out[r, i] = d[pred[r]] if class_mean == "predicted" else min(d.values())
    return out


@pytest.mark.parametrize("kind", ["ledoit_wolf", "oas", "empirical"])
@pytest.mark.parametrize("class_mean", ["predicted", "closest"])
def test_matches_independent_computation(kind, class_mean):
    X_ref, y_ref, X, layout = _data()
    m = MahalanobisScorer(layout, covariance=kind, class_mean=class_mean).fit(X_ref, y_ref)
    expected = _reference(X_ref, y_ref, X, layout, kind, class_mean)
    np.testing.assert_allclose(m.transform(X), expected,
                               rtol=1e-9)
    for j in range(layout.n_layers):
        U = m.precision_cholesky_[j]
        np.testing.assert_allclose(U @ U.T, np.linalg.inv(m.covariances_[j]), rtol=1e-8,
                                   atol=1e-10)
        assert np.allclose(U, np.triu(U))
    assert (m.shrinkage_ > 0).all() == (kind != "empirical")


def test_log_layers_names_and_chunks(monkeypatch):
    X_ref, y_ref, X, layout = _data()
    full = MahalanobisScorer(layout).fit(X_ref, y_ref)
    one = MahalanobisScorer(layout, layers=[-1], log=True).fit(X_ref, y_ref)
    np.testing.assert_allclose(one.transform(X)[:, 0], np.log1p(full.transform(X)[:, 1]))
    assert list(full.get_feature_names_out()) == ["mahalanobis_layer0", "mahalanobis_layer1"]
    assert one.layers_ == [1] and one.means_[0].shape == (3, 6)
    before = full.transform(X)
    monkeypatch.setattr(mahamod, "_CHUNK_ENTRIES", 7)  # one or two rows per chunk
    np.testing.assert_allclose(full.transform(X), before, rtol=1e-12)


def test_logits_change_predicted_score_only():
    X_ref, y_ref, X, layout = _data()
    X2 = X.copy()
    X2[:, layout.logits_slice] = np.roll(X2[:, layout.logits_slice], 1, axis=1)
    pred = MahalanobisScorer(layout).fit(X_ref, y_ref)
    mini = MahalanobisScorer(layout, class_mean="closest").fit(X_ref, y_ref)
    assert not np.allclose(pred.transform(X), pred.transform(X2))
    np.testing.assert_array_equal(mini.transform(X), mini.transform(X2))
    assert np.all(mini.transform(X) <= pred.transform(X) + 1e-12)


def test_min_without_logits_any_labels():
    X_ref, y_ref, X, layout = _data()
    hidden = X_ref[:, :10]
    names = np.array(["cat", "dog", "emu"])[y_ref]
    m = MahalanobisScorer((4, 6), class_mean="closest").fit(hidden, names)
    ref = MahalanobisScorer(layout, class_mean="closest").fit(X_ref, y_ref)
    np.testing.assert_allclose(m.transform(X[:, :10]), ref.transform(X))
    assert list(m.classes_) == ["cat", "dog", "emu"]


def test_bad_input_errors():
    X_ref, y_ref, X, layout = _data()
    with pytest.raises(ValueError, match="has_logits=True"):
        MahalanobisScorer((4, 6, 3)).fit(X_ref, y_ref)
    with pytest.raises(ValueError, match="1 class"):
        MahalanobisScorer(layout).fit(X_ref, np.zeros(len(y_ref), dtype=int))
    Xn = X_ref.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MahalanobisScorer(layout).fit(Xn, y_ref)
    # a class absent from y_ref that the DNN predicts
    keep = y_ref != 2
    m = MahalanobisScorer(layout).fit(X_ref[keep], y_ref[keep])
    Xq = X.copy()
    Xq[:, layout.logits_slice] = np.eye(3)[np.arange(len(X)) % 3] * 5
    with pytest.raises(ValueError, match=r"predicted class\(es\) \[2\].*class_mean='closest'"):
        m.transform(Xq)
    ok = Xq[np.arange(len(X)) % 3 != 2]
    assert np.all(np.isfinite(m.transform(ok)))
    # a class index beyond the logits block
    with pytest.raises(ValueError, match="class index 3"):
        MahalanobisScorer(layout).fit(X_ref, np.where(y_ref == 2, 3, y_ref))
    # wider than the reference set: empirical is singular, shrinkage is not
    rng = np.random.RandomState(1)
    wide = np.hstack([rng.normal(size=(8, 20)), np.eye(2)[np.arange(8) % 2]])
    lay = FeatureLayout([20, 2], has_logits=True)
    with pytest.raises(ValueError, match="singular.*ledoit_wolf"):
        MahalanobisScorer(lay, covariance="empirical").fit(wide, np.arange(8) % 2)
    assert MahalanobisScorer(lay).fit(wide, np.arange(8) % 2).transform(wide).shape == (8, 1)


@parametrize_with_checks([MahalanobisScorer("single", class_mean="closest"),
                          MahalanobisScorer("single", class_mean="closest", covariance="oas", log=True)])
def test_sklearn_compatible(estimator, check):
    check(estimator)
