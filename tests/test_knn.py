"""KNNClassScorer, ScoreThresholdDetector and knn_evaluation."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.decomposition import PCA
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_advdet import FeatureLayout, KNNClassScorer, ScoreThresholdDetector
from sklearn_advdet import knn as knnmod
from sklearn_advdet.search import _base as search_base
from sklearn_advdet import metrics


# ------------------------------------------------------------------ helpers
def _lay(*sizes):
    """Layout of hidden blocks followed by the logits block (the last size)."""
    return FeatureLayout(sizes, has_logits=True)


def _logits(pred, n_classes):
    """One-hot-ish logits whose argmax is ``pred``."""
    z = np.zeros((len(pred), n_classes))
    z[np.arange(len(pred)), pred] = 5.0
    return z


def _brute_scores(Zref, yref, Zq, pred, k, weights):
    """Independent scoring: scipy cdist, stable sort, explicit sums."""
    D = cdist(Zq, Zref)
    out = np.empty(len(Zq))
    for i in range(len(Zq)):
        order = sorted(range(len(Zref)), key=lambda j: (D[i, j], j))[:k]
        num = den = 0.0
        dz = [D[i, j] for j in order]
        any_zero = any(d == 0 for d in dz)
        for rank, j in enumerate(order, start=1):
            if weights == "uniform":
                w = 1.0
            elif weights == "rank":
                w = 1.0 / rank
            elif any_zero:
                w = 1.0 if D[i, j] == 0 else 0.0
            else:
                w = 1.0 / D[i, j] ** 2
            den += w
            num += w * (yref[j] == pred[i])
        out[i] = num / den
    return out


@pytest.fixture(scope="module")
def two_layer_data():
    """Reference and queries with two hidden layers (5 and 3 columns) + 4 logits."""
    rng = np.random.RandomState(0)
    n_ref, n_q, C = 80, 25, 4
    yref = rng.randint(C, size=n_ref)
    centers1, centers2 = rng.normal(scale=2, size=(C, 5)), rng.normal(scale=2, size=(C, 3))
    ref = np.hstack([
        centers1[yref] + rng.normal(size=(n_ref, 5)),
        centers2[yref] + rng.normal(size=(n_ref, 3)),
        _logits(yref, C),
    ])
    yq = rng.randint(C, size=n_q)
    pred = rng.randint(C, size=n_q)
    q = np.hstack([
        centers1[yq] + rng.normal(size=(n_q, 5)),
        centers2[yq] + rng.normal(size=(n_q, 3)),
        _logits(pred, C),
    ])
    return ref, yref, q, pred


# ------------------------------------------------------------ maths of scores
@pytest.mark.parametrize("weights", ["uniform", "rank", "distance"])
def test_scores_match_brute_force(two_layer_data, weights):
    ref, yref, q, pred = two_layer_data
    sc = KNNClassScorer(_lay(5, 3, 4), layers="all", n_neighbors=7, weights=weights)
    got = sc.fit(ref, yref).transform(q)
    assert got.shape == (len(q), 2)
    for col, sl in enumerate([slice(0, 5), slice(5, 8)]):
        want = _brute_scores(ref[:, sl], yref, q[:, sl], pred, 7, weights)
        np.testing.assert_allclose(got[:, col], want, rtol=1e-12, atol=1e-12)
    assert np.all((got >= 0) & (got <= 1))
    # scores vary: the check above is not trivially satisfied
    assert np.unique(got).size > 3


def test_hand_worked_example():
    # 1-D reference: positions and classes; query at 0.5 predicted class 1
    pos = np.array([0.0, 1.0, 2.0, 4.0, 10.0])
    lab = np.array([1, 0, 1, 1, 0])
    ref = np.column_stack([pos, _logits(lab, 2)])
    q = np.column_stack([[0.5], _logits([1], 2)])
    # neighbours of 0.5 with k=4: 0 (d .5, c1), 1 (d .5, c0), 2 (d 1.5, c1), 4 (d 3.5, c1)
    # tie between positions 0 and 1 broken by reference index: rank 1 = index 0
    expected = {
        "uniform": 3 / 4,
        "rank": (1 + 1 / 3 + 1 / 4) / (1 + 1 / 2 + 1 / 3 + 1 / 4),
        "distance": (4 + 1 / 2.25 + 1 / 12.25) / (4 + 4 + 1 / 2.25 + 1 / 12.25),
    }
    for weights, want in expected.items():
        sc = KNNClassScorer(_lay(1, 2), n_neighbors=4, weights=weights).fit(ref, lab)
        assert sc.transform(q)[0, 0] == pytest.approx(want, rel=1e-12)
    dist, idx = sc.kneighbors(q)
    assert idx.tolist() == [[0, 1, 2, 3]]
    np.testing.assert_allclose(dist, [[0.5, 0.5, 1.5, 3.5]])


def test_ties_are_broken_by_reference_index():
    # query at 0; references 1..4 all at distance 1 with different classes
    ref = np.column_stack([[0.0, 1.0, -1.0, 1.0, -1.0], _logits([0, 1, 2, 3, 1], 4)])
    y = np.array([0, 1, 2, 3, 1])
    q = np.column_stack([[0.0, 0.0, 0.0], _logits([1, 2, 3], 4)])
    sc = KNNClassScorer(_lay(1, 4), n_neighbors=3, weights="rank").fit(ref, y)
    _, idx = sc.kneighbors(q)
    # the k=3 kept: index 0 (d=0), then the tied 1 and 2 (lowest indices)
    assert idx.tolist() == [[0, 1, 2]] * 3
    w = np.array([1, 1 / 2, 1 / 3])
    np.testing.assert_allclose(
        sc.transform(q)[:, 0], [w[1] / w.sum(), w[2] / w.sum(), 0.0]
    )


def test_zero_distance_takes_all_weight_under_distance_weights():
    rng = np.random.RandomState(1)
    feats = rng.normal(size=(30, 6)).astype(np.float32) * 7.3
    y = rng.randint(3, size=30)
    # two exact duplicates of row 0 with other classes
    feats[[5, 9]] = feats[0]
    y[[0, 5, 9]] = [0, 1, 1]
    ref = np.hstack([feats, _logits(y, 3).astype(np.float32)])
    q = np.hstack([feats[[0, 0]], _logits([1, 0], 3).astype(np.float32)])
    sc = KNNClassScorer(_lay(6, 3), n_neighbors=10, weights="distance").fit(ref, y)
    dist, idx = sc.kneighbors(q)
    assert idx[0, :3].tolist() == [0, 5, 9]
    assert np.all(dist[:, :3] == 0.0) and np.all(dist[:, 3:] > 0)
    # the three zero-distance neighbours share all the weight equally
    np.testing.assert_allclose(sc.transform(q)[:, 0], [2 / 3, 1 / 3])


def test_k_larger_than_reference_uses_all():
    rng = np.random.RandomState(2)
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    ref = np.hstack([rng.normal(size=(10, 3)), _logits(y, 3)])
    q = np.hstack([rng.normal(size=(3, 3)), _logits([0, 1, 2], 3)])
    sc = KNNClassScorer(_lay(3, 3), n_neighbors=1000).fit(ref, y)
    assert sc.n_neighbors_ == 10
    np.testing.assert_allclose(sc.transform(q)[:, 0], [0.3, 0.2, 0.5])
    assert sc.kneighbors(q)[1].shape == (3, 10)


def test_predicted_class_absent_from_reference_scores_zero():
    rng = np.random.RandomState(3)
    y = rng.randint(3, size=40)  # classes 0..2 only; the DNN has 5
    ref = np.hstack([rng.normal(size=(40, 4)), _logits(y, 5)])
    q = np.hstack([rng.normal(size=(4, 4)), _logits([3, 4, 0, 1], 5)])
    for weights in ("uniform", "rank", "distance"):
        sc = KNNClassScorer(_lay(4, 5), n_neighbors=15, weights=weights).fit(ref, y)
        s = sc.transform(q)[:, 0]
        assert s[0] == 0.0 and s[1] == 0.0 and s[2:].sum() > 0
    assert sc.classes_.tolist() == [0, 1, 2] and sc.n_classes_ == 5


def test_layer_selection_names_and_feature_names(two_layer_data):
    ref, yref, q, _ = two_layer_data
    layout = FeatureLayout([5, 3, 4], names=["conv", "fc", "logits"], has_logits=True)
    full = KNNClassScorer(layout, layers="all", n_neighbors=5).fit(ref, yref)
    assert full.get_feature_names_out().tolist() == ["knn_score_conv", "knn_score_fc"]
    last = KNNClassScorer(layout, n_neighbors=5).fit(ref, yref)  # default: last layer
    assert last.layers_ == [1]
    np.testing.assert_array_equal(last.transform(q)[:, 0], full.transform(q)[:, 1])
    by_name = KNNClassScorer(layout, layers="conv", n_neighbors=5).fit(ref, yref)
    np.testing.assert_array_equal(by_name.transform(q)[:, 0], full.transform(q)[:, 0])
    with pytest.raises(ValueError, match="not used by this fitted KNNClassScorer"):
        last.kneighbors(q, layer="conv")


# ------------------------------------------------------------- preprocessing
def test_pca_whitening_matches_sklearn(two_layer_data):
    ref, yref, q, pred = two_layer_data
    sc = KNNClassScorer(
        _lay(5, 3, 4), layers=0, n_neighbors=9, weights="distance",
        preprocessing="pca", n_components=3, random_state=0,
    ).fit(ref, yref)
    pca = PCA(n_components=3, whiten=True).fit(ref[:, :5])
    Zr, Zq = pca.transform(ref[:, :5]), pca.transform(q[:, :5])
    np.testing.assert_allclose(sc.preprocessors_[0].transform(q[:, :5]), Zq, atol=1e-10)
    # whitened: unit variance on the reference
    np.testing.assert_allclose(Zr.var(axis=0, ddof=1), 1.0, rtol=1e-8)
    want = _brute_scores(Zr, yref, Zq, pred, 9, "distance")
    np.testing.assert_allclose(sc.transform(q)[:, 0], want, rtol=1e-9)
    # without whitening the scores differ (the option does something)
    nw = KNNClassScorer(
        _lay(5, 3, 4), layers=0, n_neighbors=9, weights="distance",
        preprocessing="pca", n_components=3, whiten=False,
    ).fit(ref, yref)
    assert not np.allclose(nw.transform(q), sc.transform(q))


def test_pca_preprocessing_on_too_few_or_constant_references():
    # fuzz regressions: one reference row divided by n - 1 = 0 inside PCA (a
    # RuntimeWarning); a zero-variance component warned before the clear error
    layout = FeatureLayout([3, 2], has_logits=True)
    X = np.array([[0.1, 2.0, 3.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match="needs at least 2 reference rows"):
        KNNClassScorer(layout, preprocessing="pca").fit(X, [0])
    X = np.array([[2.0, 1.0, 5.0, 1.0, 0.0], [2.0, 1.0, 5.0, 0.0, 1.0],
                  [2.0, 1.0, 5.0, 1.0, 0.0], [2.0, 1.0, 5.0, 0.0, 1.0]])
    # was: a fit without a word, then inf/NaN scores from dividing by 0
    with pytest.raises(ValueError, match="3 of the 3 have none.*whiten=False"):
        KNNClassScorer(layout, preprocessing="pca", n_components=3).fit(X, [0, 1, 0, 1])
    scores = KNNClassScorer(layout, preprocessing="pca", n_components=3, whiten=False,
                            n_neighbors=2).fit(X, [0, 1, 0, 1]).transform(X)
    assert np.isfinite(scores).all()


def test_l2_preprocessing_matches_brute_force(two_layer_data):
    ref, yref, q, pred = two_layer_data
    sc = KNNClassScorer(_lay(5, 3, 4), layers=1, n_neighbors=6, weights="rank",
                        preprocessing="l2").fit(ref, yref)
    norm = lambda Z: Z / np.linalg.norm(Z, axis=1, keepdims=True)  # noqa: E731
    want = _brute_scores(norm(ref[:, 5:8]), yref, norm(q[:, 5:8]), pred, 6, "rank")
    np.testing.assert_allclose(sc.transform(q)[:, 0], want, rtol=1e-9)


# ------------------------------------------------------------------ backends
def _clustered(n, d, seed, n_centers=20):
    rng = np.random.RandomState(seed)
    centers = rng.normal(scale=3.0, size=(n_centers, d))
    lab = rng.randint(n_centers, size=n)
    return (centers[lab] + rng.normal(size=(n, d))).astype(np.float32), lab % 10


@pytest.mark.slow  # numba compiles pynndescent once per process: ~75-120 s here
def test_pynndescent_recall_and_auto_rule(monkeypatch):
    pytest.importorskip("pynndescent")
    allf, alll = _clustered(3150, 16, 0)  # queries: fresh points of the same clusters
    feats, lab, qf, ql = allf[:3000], alll[:3000], allf[3000:], alll[3000:]
    ref = np.hstack([feats, _logits(lab, 10).astype(np.float32)])
    q = np.hstack([qf, _logits(ql, 10).astype(np.float32)])
    k = 100
    exact = KNNClassScorer(_lay(16, 10), n_neighbors=k, backend="exact").fit(ref, lab)
    ann = KNNClassScorer(_lay(16, 10), n_neighbors=k, backend="pynndescent",
                         random_state=0).fit(ref, lab)
    assert exact.backend_ == "exact" and ann.backend_ == "pynndescent"
    d_e, i_e = exact.kneighbors(q)
    d_a, i_a = ann.kneighbors(q)
    recall = np.mean([np.intersect1d(a, b).size / k for a, b in zip(i_a, i_e)])
    assert recall >= 0.99
    assert np.all(np.isfinite(d_a)) and np.all(np.diff(d_a, axis=1) >= 0)
    # scores agree in aggregate (an approximate search may miss on a rare query)
    diff = np.abs(ann.transform(q) - exact.transform(q))
    assert diff.mean() < 0.01 and np.mean(diff <= 0.03) >= 0.97

    # "auto": small reference -> exact, no index built
    auto = KNNClassScorer(_lay(16, 10), n_neighbors=k).fit(ref, lab)
    assert auto.backend_ == "exact"
    np.testing.assert_array_equal(auto.transform(q), exact.transform(q))
    # above the size rule -> pynndescent for batches, exact for small batches
    monkeypatch.setattr(search_base, "_AUTO_ANN_MIN_REF", 1000)
    auto = KNNClassScorer(_lay(16, 10), n_neighbors=k, random_state=0).fit(ref, lab)
    assert auto.backend_ == "pynndescent"
    small = q[: search_base._AUTO_ANN_MIN_QUERIES - 1]
    np.testing.assert_array_equal(auto.kneighbors(small)[1], exact.kneighbors(small)[1])
    _, i_auto = auto.kneighbors(q)
    assert np.mean([np.intersect1d(a, b).size / k for a, b in zip(i_auto, i_e)]) >= 0.99


def test_float32_and_float64_agree(two_layer_data):
    ref, yref, q, _ = two_layer_data
    a = KNNClassScorer(_lay(5, 3, 4), layers="all", n_neighbors=7).fit(ref, yref)
    b = KNNClassScorer(_lay(5, 3, 4), layers="all", n_neighbors=7).fit(
        ref.astype(np.float32), yref
    )
    np.testing.assert_allclose(a.transform(q), b.transform(q.astype(np.float32)))


# --------------------------------------------------------------- bad input
def test_bad_input_gives_clear_errors(two_layer_data):
    ref, yref, q, _ = two_layer_data
    with pytest.raises(ValueError, match="layer_sizes sum to 11"):
        KNNClassScorer(_lay(5, 2, 4)).fit(ref, yref)
    with pytest.raises(ValueError, match="logits block"):
        KNNClassScorer(FeatureLayout([5, 3, 4])).fit(ref, yref)
    # a plain tuple means hidden layers only (the package's one rule): the
    # scorer needs the logits, so the error names the fix
    with pytest.raises(ValueError, match=r"plain tuple means hidden layers only.*has_logits=True"):
        KNNClassScorer((5, 3, 4)).fit(ref, yref)
    with pytest.raises(ValueError, match="needs layer_sizes"):
        KNNClassScorer(None).fit(ref, yref)
    with pytest.raises(ValueError, match="logits block has 3 columns"):
        KNNClassScorer(_lay(5, 4, 3)).fit(ref, yref)  # logits block too narrow
    bad = ref.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        KNNClassScorer(_lay(5, 3, 4)).fit(bad, yref)
    sc = KNNClassScorer(_lay(5, 3, 4), n_neighbors=3).fit(ref, yref)
    qbad = q.copy()
    qbad[0, -1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sc.transform(qbad)
    with pytest.raises(ValueError, match="12 features"):
        sc.transform(q[:, :-1])  # logits block missing a column
    with pytest.raises(ValueError, match="class indices"):
        KNNClassScorer(_lay(5, 3, 4)).fit(ref, np.array(["cat", "dog"] * 40))
    with pytest.raises(ValueError, match="negative class index"):
        KNNClassScorer(_lay(5, 3, 4)).fit(ref, yref - 1)
    with pytest.raises(ValueError, match="0 sample"):
        KNNClassScorer(_lay(5, 3, 4)).fit(ref[:0], yref[:0])  # empty reference set
    with pytest.raises(ValueError, match="weights"):
        KNNClassScorer(_lay(5, 3, 4), weights="inverse").fit(ref, yref)


@pytest.mark.parametrize("weights", ["uniform", "rank", "distance"])
def test_single_layout_scores_the_knn_majority(two_layer_data, weights):
    # no logits block: the score is that of the neighbours' own majority class
    ref, yref, q, _ = two_layer_data
    names = np.array(["ant", "bee", "cat", "dog"])
    sc = KNNClassScorer("single", n_neighbors=9, weights=weights).fit(ref[:, :8], names[yref])
    assert sc.layout_.sizes == (8,) and not sc.layout_.has_logits
    assert sc.classes_.tolist() == names.tolist()
    got = sc.transform(q[:, :8])[:, 0]
    per_class = np.column_stack([
        _brute_scores(ref[:, :8], yref, q[:, :8], np.full(len(q), c), 9, weights)
        for c in range(4)
    ])
    np.testing.assert_allclose(got, per_class.max(axis=1), rtol=1e-12)
    assert got.min() >= 0.25 - 1e-12


# ------------------------------------------------------- common sklearn checks
@parametrize_with_checks(
    [KNNClassScorer("single", n_neighbors=5), ScoreThresholdDetector()],
    expected_failed_checks=lambda est: (
        {
            "check_classifiers_train": (
                "thresholds one column; the check's blobs are not separable "
                "on a single column"
            ),
        }
        if isinstance(est, ScoreThresholdDetector)
        else {}
    ),
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ----------------------------------------------------- threshold detector
def test_threshold_detector_eer_matches_metrics():
    rng = np.random.RandomState(4)
    s = np.r_[rng.beta(5, 2, 300), rng.beta(2, 5, 200)]
    y = np.r_[np.zeros(300, int), np.ones(200, int)]
    det = ScoreThresholdDetector().fit(s[:, None], y)
    t, eer = metrics.eer_threshold(y, -s)
    assert det.threshold_ == t
    pred = det.predict(s[:, None])
    np.testing.assert_array_equal(pred, (-s >= t).astype(int))
    err_auth, err_adv = pred[y == 0].mean(), 1 - pred[y == 1].mean()
    assert abs(err_auth - err_adv) < 0.02
    dec = det.decision_function(s[:, None])
    np.testing.assert_allclose(dec, -s - t, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(dec > 0, pred == 1)  # sklearn's rule
    # direction="high": the same with the score's sign flipped
    det_h = ScoreThresholdDetector(direction="high").fit(-s[:, None], y)
    np.testing.assert_array_equal(det_h.predict(-s[:, None]), pred)


@pytest.mark.parametrize("target", [0.0, 0.05, 0.1, 0.37, 1.0])
def test_threshold_detector_target_fpr(target):
    rng = np.random.RandomState(5)
    s = np.round(np.r_[rng.normal(1, 1, 200), rng.normal(-1, 1, 100)], 1)  # ties
    y = np.r_[np.zeros(200, int), np.ones(100, int)]
    det = ScoreThresholdDetector(method="fpr", target_fpr=target).fit(s[:, None], y)
    flagged = det.predict(s[:, None]) == 1
    fpr = flagged[y == 0].mean()
    assert fpr <= target + 1e-12
    # lowest such threshold: brute force over the candidate thresholds
    signed = -s
    ok = [t for t in np.unique(signed) if (signed[y == 0] >= t).mean() <= target]
    if ok:
        best = min(ok)
        assert flagged[y == 1].mean() == pytest.approx((signed[y == 1] >= best).mean())


def test_threshold_detector_rejects_non_binary_and_bad_column():
    X = np.random.RandomState(0).rand(9, 2)
    with pytest.raises(ValueError, match="Only binary"):
        ScoreThresholdDetector().fit(X, np.arange(9) % 3)
    with pytest.raises(ValueError, match="column=2"):
        ScoreThresholdDetector(column=2).fit(X, np.arange(9) % 2)


# ------------------------------------------------------- detection pipelines
@pytest.fixture(scope="module")
def detection_problem():
    """Reference set + detection set whose adversarial rows carry a wrong prediction."""
    rng = np.random.RandomState(6)
    C, n_ref = 4, 400
    centers = [rng.normal(scale=3, size=(C, d)) for d in (6, 4, 3)]
    yref = rng.randint(C, size=n_ref)
    ref = np.hstack([c[yref] + rng.normal(size=(n_ref, c.shape[1])) for c in centers]
                    + [_logits(yref, C)])
    n = 240
    true = rng.randint(C, size=n)
    y = (np.arange(n) % 2).astype(int)  # 1 = adversarial
    # adversarial rows: features drift towards a wrong class, prediction wrong
    wrong = (true + 1 + rng.randint(C - 1, size=n)) % C
    blocks = []
    for li, c in enumerate(centers):
        mix = np.where(y[:, None] == 1, 0.15 * (li + 1), 0.0)
        blocks.append((1 - mix) * c[true] + mix * c[wrong]
                      + rng.normal(size=(n, c.shape[1])))
    pred = np.where(y == 1, wrong, true)
    X = np.hstack(blocks + [_logits(pred, C)])
    scorer = KNNClassScorer(_lay(6, 4, 3, C), layers="all", n_neighbors=30).fit(ref, yref)
    attack = np.where(y == 1, np.where(np.arange(n) % 4 == 1, "fgsm", "pgd"), "")
    return scorer, X, y, attack


def test_pipeline_logistic_regression_gridsearch(detection_problem):
    scorer, X, y, _ = detection_problem
    pipe = Pipeline([("knn", FrozenEstimator(scorer)), ("clf", LogisticRegression())])
    search = GridSearchCV(pipe, {"clf__C": [0.01, 1.0]}, cv=3, scoring="roc_auc")
    search.fit(X, y)
    assert search.best_score_ > 0.9
    # the frozen scorer was not refitted on the detection data
    assert search.best_estimator_.named_steps["knn"].estimator is scorer
    proba = search.predict_proba(X)[:, 1]
    assert metrics.overall_auc(y, proba) > 0.9


def test_pipeline_threshold_detector_gridsearch(detection_problem):
    scorer, X, y, _ = detection_problem
    pipe = Pipeline([("knn", FrozenEstimator(scorer)), ("det", ScoreThresholdDetector())])
    search = GridSearchCV(
        pipe, {"det__column": [0, 1, 2], "det__method": ["eer", "fpr"]}, cv=3,
        scoring="accuracy",
    ).fit(X, y)
    assert len(search.cv_results_["params"]) == 6
    assert search.best_score_ > 0.75
    det = search.best_estimator_.named_steps["det"]
    S = scorer.transform(X)[:, det.column]
    np.testing.assert_array_equal(search.predict(X), (-S >= det.threshold_).astype(int))


def test_pipeline_lstm_on_score_trajectory(detection_problem):
    from sklearn_advdet import SequenceLSTMDetector

    scorer, X, y, _ = detection_problem
    pipe = Pipeline([
        ("knn", FrozenEstimator(scorer)),
        ("lstm", SequenceLSTMDetector(n_steps=3, hidden_size=8, lr=5e-2,
                                      max_epochs=8, device="cpu", random_state=0)),
    ])
    # one candidate, 2 folds: 3 short fits keep this test cheap
    search = GridSearchCV(pipe, {"lstm__hidden_size": [8]}, cv=2, scoring="roc_auc")
    search.fit(X, y)
    assert search.best_estimator_.named_steps["lstm"].n_steps_ == 3
    assert search.best_estimator_.named_steps["lstm"].step_size_ == 1
    assert search.best_score_ > 0.85


# ----------------------------------------------------------------- evaluation
def test_knn_evaluation_matches_direct_computation(detection_problem):
    scorer, X, y, attack = detection_problem
    S = scorer.transform(X)
    rng = np.random.RandomState(7)
    correct = rng.rand(len(y)) > 0.2
    rep = knnmod.knn_evaluation(S, y, attack, correct=correct,
                                layer_names=scorer.get_feature_names_out())
    assert list(rep) == ["knn_score_layer0", "knn_score_layer1", "knn_score_layer2"]
    for j, name in enumerate(rep):
        r = rep[name]
        assert r["eer_accuracy"] == metrics.eer_accuracy_per_attack(y, -S[:, j], attack)
        assert set(r["eer_accuracy"]) == {"fgsm", "pgd", "all"}
        t = r["threshold"]
        flagged = S[:, j] <= t
        # the pooled EER threshold: error rates on both sides as metrics says
        fpr, fnr = flagged[y == 0].mean(), 1 - flagged[y == 1].mean()
        assert (fpr + fnr) / 2 == pytest.approx(1 - r["eer_accuracy"]["all"])
        nat = (y == 0) & ~correct
        good = (y == 0) & correct
        assert r["n_natural_errors"] == nat.sum()
        assert r["natural_errors_caught"] == pytest.approx(flagged[nat].mean())
        assert r["correct_flagged"] == pytest.approx(flagged[good].mean())
        assert r["natural_error_eer_accuracy"] == pytest.approx(
            metrics.eer_accuracy(nat[nat | good].astype(int), -S[nat | good, j])
        )
    # without `correct`: no natural-error entries; 1-D input accepted
    r = knnmod.knn_evaluation(S[:, 0], y, attack)["layer0"]
    assert "natural_errors_caught" not in r
    with pytest.raises(ValueError, match="layer names"):
        knnmod.knn_evaluation(S, y, attack, layer_names=["a"])
