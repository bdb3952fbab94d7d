"""Tests of PivotEmbedder: maths against scipy / brute force, both reference
flows (frozen embedder, cached pivots under GridSearchCV), bad input, and
scikit-learn's common estimator checks."""

import pickle
import tracemalloc

import numpy as np
import pytest
from scipy.spatial.distance import cdist, pdist, squareform
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

import sklearn_advdet._medoid as _medoid
import sklearn_advdet.embedding as embedding
from sklearn_advdet import FeatureLayout, PivotEmbedder
from sklearn_advdet._medoid import _cosine_medoid, _euclidean_medoid

SIZES = (3, 5, 4)  # three layers


def _reference(seed=0, sizes=SIZES, counts=(20, 7, 1, 13)):
    """Reference features of unequal classes (one with a single member)."""
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(len(counts)), counts)
    centers = rng.normal(scale=3.0, size=(len(counts), sum(sizes)))
    X = centers[y] + rng.normal(size=(len(y), sum(sizes)))
    perm = rng.permutation(len(y))
    return X[perm], y[perm]


def _brute_medoid(Xc, metric="euclidean"):
    return int(np.argmin(squareform(pdist(Xc, metric=metric)).sum(axis=1)))


def _layer_blocks(X, sizes):
    off = np.concatenate([[0], np.cumsum(sizes)])
    return [X[:, off[i] : off[i + 1]] for i in range(len(sizes))]


@pytest.fixture
def one_blas_thread():
    # on a shared 2-core machine, BLAS threads fighting over the cores make
    # small matrix products ~3-10x slower than one thread (timing only)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ------------------------------------------------------------ common checks
@parametrize_with_checks(
    [PivotEmbedder("single"), PivotEmbedder("single", pivots="medoid", metric="cosine", block_size=7)],
    expected_failed_checks=lambda est: {},
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ------------------------------------------------------------ pivots maths
def test_centroids_are_class_means():
    X, y = _reference()
    emb = PivotEmbedder(SIZES).fit(X, y)
    np.testing.assert_array_equal(emb.classes_, [0, 1, 2, 3])
    assert emb.medoid_indices_ is None
    for P, Xl in zip(emb.pivots_, _layer_blocks(X, SIZES)):
        expected = np.stack([Xl[y == c].mean(axis=0) for c in emb.classes_])
        np.testing.assert_allclose(P, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("medoid_metric", ["euclidean", "cosine"])
def test_medoids_match_brute_force(medoid_metric):
    X, y = _reference(seed=1)
    X_before = X.copy()
    emb = PivotEmbedder(
        SIZES, pivots="medoid", medoid_metric=medoid_metric, block_size=4
    ).fit(X, y)
    np.testing.assert_array_equal(X, X_before)  # the input is never centred in place
    assert emb.medoid_indices_.shape == (3, 4)
    for l, (P, Xl) in enumerate(zip(emb.pivots_, _layer_blocks(X, SIZES))):
        for k, c in enumerate(emb.classes_):
            members = np.flatnonzero(y == c)
            expected = members[_brute_medoid(Xl[members], medoid_metric)]
            assert emb.medoid_indices_[l, k] == expected
            np.testing.assert_array_equal(P[k], Xl[expected])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 33, 130])
@pytest.mark.parametrize("block_size", [1, 4, 64, 1000])
def test_euclidean_medoid_sizes_and_blocks(n, block_size):
    # a planted central point makes the argmin well separated
    rng = np.random.RandomState(n)
    X = rng.normal(size=(n, 6)) * [1, 2, 3, 1, 1, 5] + 7.0
    assert _euclidean_medoid(X, block_size) == _brute_medoid(X)


def test_euclidean_medoid_far_from_origin():
    # features with a huge common offset: the GEMM form alone would drown the
    # differences in cancellation error (centring + exact re-check keep it exact)
    rng = np.random.RandomState(3)
    X = 1e7 + rng.normal(size=(200, 16))
    assert _euclidean_medoid(X, 32) == _brute_medoid(X)


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e100])
def test_euclidean_medoid_beyond_float32_squares(scale):
    # fuzz regression: centred values above ~1e19 overflowed the float32
    # tiles (a RuntimeWarning, then inf sums and an arbitrary medoid); the
    # float64 sums by differences decide instead
    rng = np.random.RandomState(5)
    for d in (3, 300):
        X = rng.normal(size=(40, d)) * scale
        assert _euclidean_medoid(X, 16) == _brute_medoid(X)
        # numpy's error state is per thread: the worker threads' tiles too
        assert _euclidean_medoid(X, 16, n_threads=2) == _brute_medoid(X)
    emb = PivotEmbedder("single", pivots="medoid").fit(X, np.arange(40) % 2)
    assert np.isfinite(emb.pivots_[0]).all()


def test_euclidean_medoid_exact_duplicates_take_lowest_index():
    rng = np.random.RandomState(4)
    X = rng.normal(size=(60, 8))
    centre = X.mean(axis=0)
    X[[11, 29, 47]] = centre  # three identical rows at the centre: a tie
    brute = _brute_medoid(X)
    assert brute == 11
    assert _euclidean_medoid(X, 16) == 11
    same = np.tile(rng.normal(size=(1, 5)), (25, 1))  # every row identical
    assert _euclidean_medoid(same, 8) == _brute_medoid(same) == 0


def _near_tie(d, seed):
    """A point-symmetric cloud plus a and -(1 + 1e-9) a near its centre.

    By symmetry the two planted rows' summed distances differ only through
    the 1e-9 stretch: about 1e-10 relative, far below float32 resolution and
    far above float64's, so only the exact re-summation can split them (a,
    the unstretched one, row 0, wins).
    """
    rng = np.random.RandomState(seed)
    P = rng.normal(size=(60, d)) * rng.uniform(0.5, 2.0, size=d)
    a = 0.05 * rng.normal(size=d)
    return np.vstack([a, P, -P, -(1 + 1e-9) * a]) + 3.0


@pytest.mark.parametrize("d", [8, 300])  # the cheap and the tight bound
@pytest.mark.parametrize("n_threads", [1, 2])
def test_euclidean_medoid_near_tie_needs_exact_resum(d, n_threads):
    X = _near_tie(d, seed=d)
    sums = squareform(pdist(X)).sum(axis=1)
    assert sums[0] < sums[-1] and (sums[-1] - sums[0]) / sums[0] < 1e-8
    assert _brute_medoid(X) == 0
    assert _euclidean_medoid(X, 16, n_threads) == 0
    # the stretched copy first: it must lose although it comes first
    Y = X[::-1].copy()
    assert _euclidean_medoid(Y, 16, n_threads) == len(Y) - 1 == _brute_medoid(Y)


def test_euclidean_medoid_refines_many_candidates(monkeypatch):
    # force the refinement step (tight bounds for the screened candidates)
    calls = []
    original = _medoid._selected_row_sums

    def spy(*args, **kwargs):
        calls.append(len(args[1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(_medoid, "_MAX_EXACT_CANDIDATES", 0)
    monkeypatch.setattr(_medoid, "_selected_row_sums", spy)
    X = _near_tie(8, seed=1)
    assert _euclidean_medoid(X, 16) == 0 == _brute_medoid(X)
    assert calls and calls[0] >= 2


@pytest.mark.parametrize("d", [8, 300])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_gemm_row_sums_within_their_error_bound(d, n_threads):
    # the float32 tile sums and their rigorous bounds against float64 pdist,
    # on data far from the origin in float64 (centring matters) and float32
    rng = np.random.RandomState(d)
    for X in (1e4 + rng.normal(size=(203, d)), rng.gamma(2.0, size=(203, d)).astype(np.float32)):
        exact = squareform(pdist(np.asarray(X, dtype=np.float64))).sum(axis=1)
        mu = X.mean(axis=0, dtype=np.float64)
        sums, errs, _ = _medoid._symmetric_row_sums(X, mu, 32, n_threads, tight=True)
        rounding = _medoid.safe_gamma(32, np.float32) + 2 * _medoid._U32
        bound = errs + rounding * sums
        assert np.all(np.abs(sums - exact) <= bound)
        assert np.all(bound < 1e-3 * exact)  # and tight enough to be useful
        cheap, none, _ = _medoid._symmetric_row_sums(X, mu, 32, n_threads, tight=False)
        assert none is None
        np.testing.assert_allclose(cheap, sums, rtol=1e-6)
        rows = np.array([0, 5, 31, 32, 33, 202])  # across block edges
        s2, e2 = _medoid._selected_row_sums(X, rows, mu, 32, n_threads)
        assert np.all(np.abs(s2 - exact[rows]) <= e2 + rounding * s2)
        np.testing.assert_allclose(
            _medoid._exact_row_sums(X, rows, mu, 32), exact[rows], rtol=1e-12
        )


def test_euclidean_medoid_repairs_negative_squared_distances(monkeypatch):
    # every row twice: the float32 GEMM form of a zero distance rounds to a
    # small negative square about half the time; such tiles are repaired
    # (NaN -> 0, as sqrt(max(., 0))) and the answer stays the brute-force one
    repairs = []
    original = np.nan_to_num

    def spy(*args, **kwargs):
        repairs.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(np, "nan_to_num", spy)
    rng = np.random.RandomState(7)
    X = rng.normal(size=(120, 24)) * 5
    X[60:] = X[:60]
    assert _euclidean_medoid(X, 32) == _brute_medoid(X)
    assert repairs


def test_cosine_medoid_matches_brute_force():
    rng = np.random.RandomState(5)
    X = rng.normal(size=(90, 7)) + 0.5
    assert _cosine_medoid(X) == _brute_medoid(X, "cosine")


def test_medoid_of_large_class_without_square_matrix(one_blas_thread):
    n, d = 20_000, 64
    rng = np.random.RandomState(6)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[12_345] = 0.0  # the exact centre of the cloud: the medoid, by far
    tracemalloc.start()
    try:
        idx = _euclidean_medoid(X, block_size=1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert idx == 12_345
    # an n x n float64 matrix would take 3.2 GB; 1024 x 1024 float32 tiles
    # (4 MiB each) and 1024-row blocks stay far below 16 MiB
    assert peak < 16 * 2**20, peak
    assert peak < n * n * 8 / 50


# ------------------------------------------------------------- transform
@pytest.mark.parametrize("pivots", ["centroid", "medoid"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine", "cosine_similarity"])
def test_transform_matches_cdist(pivots, metric):
    X, y = _reference(seed=7)
    emb = PivotEmbedder(SIZES, pivots=pivots, metric=metric, block_size=5).fit(X, y)
    Xt = np.random.RandomState(8).normal(scale=3.0, size=(23, sum(SIZES)))
    Z = emb.transform(Xt)
    assert Z.dtype == np.float32 and Z.shape == (23, 3 * 4)
    expected = []
    for P, Xl in zip(emb.pivots_, _layer_blocks(Xt, SIZES)):
        if metric == "euclidean":
            expected.append(cdist(Xl, P))
        else:
            D = cdist(Xl, P, "cosine")
            expected.append(D if metric == "cosine" else 1.0 - D)
    np.testing.assert_allclose(Z, np.hstack(expected), rtol=1e-5, atol=1e-5)


def test_transform_is_row_chunk_and_dtype_independent():
    X, y = _reference(seed=9)
    Xt = np.random.RandomState(10).normal(size=(37, sum(SIZES)))
    big = PivotEmbedder(SIZES, pivots="medoid", block_size=1000).fit(X, y)
    small = PivotEmbedder(SIZES, pivots="medoid", block_size=3).fit(X, y)
    np.testing.assert_array_equal(big.medoid_indices_, small.medoid_indices_)
    np.testing.assert_allclose(big.transform(Xt), small.transform(Xt), rtol=1e-6)
    Z32 = big.transform(Xt.astype(np.float32))
    np.testing.assert_allclose(Z32, big.transform(Xt), rtol=1e-4, atol=1e-4)


def test_parallel_equals_sequential():
    X, y = _reference(seed=11, counts=(40, 30, 25))
    seq = PivotEmbedder(SIZES, pivots="medoid").fit(X, y)
    par = PivotEmbedder(SIZES, pivots="medoid", n_jobs=2).fit(X, y)
    np.testing.assert_array_equal(seq.medoid_indices_, par.medoid_indices_)


def test_layers_selection_names_and_logits():
    rng = np.random.RandomState(12)
    layout = FeatureLayout([3, 4, 2, 3], names=["b1", "b2", "b3", "logits"], has_logits=True)
    X = rng.normal(size=(30, 12))
    y = np.array(["cat", "dog", "emu"])[np.arange(30) % 3]
    emb = PivotEmbedder(layout).fit(X, y)
    assert emb.layer_indices_ == [0, 1, 2]  # logits never embedded by "all"
    assert emb.transform(X).shape == (30, 9)
    names = emb.get_feature_names_out()
    assert list(names[:4]) == ["b1_classcat", "b1_classdog", "b1_classemu", "b2_classcat"]
    assert list(names[-1:]) == ["b3_classemu"]

    one = PivotEmbedder(layout, layers=["b3", 0]).fit(X, y)
    assert one.layer_indices_ == [2, 0]
    np.testing.assert_array_equal(one.transform(X)[:, :3], emb.transform(X)[:, 6:9])
    assert list(one.get_feature_names_out()[:1]) == ["b3_classcat"]

    plain = PivotEmbedder((3, 4, 2, 3), layers=-1).fit(X, y)  # tuple: no logits
    assert list(plain.get_feature_names_out()) == [
        "layer3_classcat", "layer3_classdog", "layer3_classemu"
    ]
    with pytest.raises(ValueError, match="unknown layer 'logits'"):
        PivotEmbedder(layout, layers="logits").fit(X, y)


def test_set_output_default_and_pickle():
    X, y = _reference(seed=13)
    emb = PivotEmbedder(SIZES, pivots="medoid").set_output(transform="default")
    Z = emb.fit_transform(X, y)
    again = pickle.loads(pickle.dumps(emb))
    np.testing.assert_array_equal(again.transform(X), Z)


def test_set_output_pandas():
    pd = pytest.importorskip("pandas")
    X, y = _reference(seed=14)
    emb = PivotEmbedder(SIZES).set_output(transform="pandas").fit(X, y)
    df = emb.transform(X)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == list(emb.get_feature_names_out())


# ------------------------------------------------------------- bad input
def test_bad_input_errors():
    X, y = _reference(seed=15)
    emb = PivotEmbedder(SIZES)
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[3, 2] = bad
        with pytest.raises(ValueError, match="NaN|infinity"):
            clone(emb).fit(Xb, y)
    with pytest.raises(ValueError, match="X has 12 columns but layer_sizes sum to 13"):
        PivotEmbedder((3, 5, 5)).fit(X, y)
    with pytest.raises(ValueError, match="y has 1 class"):
        clone(emb).fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="requires y"):
        clone(emb).fit(X)
    with pytest.raises(ValueError, match="pivots must be one of"):
        PivotEmbedder(SIZES, pivots="mean").fit(X, y)
    with pytest.raises(ValueError, match="metric must be one of"):
        PivotEmbedder(SIZES, metric="manhattan").fit(X, y)
    with pytest.raises(ValueError, match="medoid_metric must be one of"):
        PivotEmbedder(SIZES, medoid_metric="cosine_similarity").fit(X, y)
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        PivotEmbedder(SIZES, block_size=0).fit(X, y)

    fitted = clone(emb).fit(X, y)
    with pytest.raises(ValueError, match="X has 10 features, but PivotEmbedder is expecting 12"):
        fitted.transform(X[:, :10])
    Xb = X.copy()
    Xb[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fitted.transform(Xb)


def test_failed_fit_leaves_no_half_fitted_state():
    X, y = _reference(seed=16)
    fresh = PivotEmbedder(SIZES)
    with pytest.raises(ValueError, match="1 class"):
        fresh.fit(X, np.ones(len(X)))
    assert not hasattr(fresh, "pivots_") and not hasattr(fresh, "n_features_in_")

    fitted = PivotEmbedder(SIZES, pivots="medoid").fit(X, y)
    before = [P.copy() for P in fitted.pivots_]
    Z = fitted.transform(X)
    # a failure after X was validated (different width, single class)
    fitted.set_params(layer_sizes=(2, 2))
    with pytest.raises(ValueError, match="1 class"):
        fitted.fit(X[:, :4], np.ones(len(X)))
    assert fitted.n_features_in_ == 12
    for old, new in zip(before, fitted.pivots_):
        np.testing.assert_array_equal(old, new)
    fitted.set_params(layer_sizes=SIZES)
    np.testing.assert_array_equal(fitted.transform(X), Z)


def test_reference_errors():
    X, y = _reference(seed=17)
    with pytest.raises(ValueError, match="X has 10 columns but the reference set has 12"):
        PivotEmbedder(reference=(X, y)).fit(X[:, :10], np.zeros(len(X)))
    with pytest.raises(ValueError, match="one class label per reference row"):
        PivotEmbedder(SIZES, reference=(X, y[:-1])).fit(X)
    with pytest.raises(TypeError, match="reference must be None, a pair"):
        PivotEmbedder(SIZES, reference=(X, y, y)).fit(X)
    with pytest.raises(ValueError, match="NaN"):
        PivotEmbedder(SIZES, reference=(np.full_like(X, np.nan), y)).fit(X)


# ------------------------------------------------ the two reference flows
def _detection(seed=20, n_img=60):
    """Detection set: authentic rows near the class centres (y=0) and two
    'attacks' that push each image's features away (y=1)."""
    rng = np.random.RandomState(seed)
    X_ref, y_ref = _reference(seed=seed, counts=(30, 25, 20))
    centers = np.stack([X_ref[y_ref == c].mean(axis=0) for c in range(3)])
    cls = rng.randint(0, 3, n_img)
    auth = centers[cls] + rng.normal(size=(n_img, sum(SIZES)))
    fgsm = auth + rng.normal(scale=4.0, size=auth.shape)
    pgd = auth + rng.normal(scale=6.0, size=auth.shape)
    X = np.vstack([auth, fgsm, pgd])
    y = np.repeat([0, 1, 1], n_img)
    attack = np.repeat(["none", "fgsm", "pgd"], n_img)
    groups = np.tile(np.arange(n_img), 3)
    return X_ref, y_ref, X, y, attack, groups


def test_frozen_embedder_in_detection_pipeline(one_blas_thread):
    X_ref, y_ref, X, y, _, _ = _detection()
    emb = PivotEmbedder(SIZES, pivots="medoid").fit(X_ref, y_ref)
    pivots = [P.copy() for P in emb.pivots_]
    pipe = Pipeline([("embed", FrozenEstimator(emb)), ("clf", LogisticRegression())])
    pipe.fit(X, y)  # detection labels: must not touch the pivots
    for old, new in zip(pivots, emb.pivots_):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(emb.classes_, [0, 1, 2])
    manual = LogisticRegression().fit(emb.transform(X), y)
    np.testing.assert_allclose(
        pipe.predict_proba(X), manual.predict_proba(emb.transform(X)), rtol=1e-10
    )
    # a clone of the pipeline (as GridSearchCV makes) keeps the frozen pivots
    cloned = clone(pipe).fit(X, y)
    np.testing.assert_array_equal(cloned.named_steps["embed"].estimator.pivots_[0], pivots[0])


def test_reference_param_ignores_detection_labels():
    X_ref, y_ref, X, y, _, _ = _detection(seed=21)
    direct = PivotEmbedder(SIZES, pivots="medoid").fit(X_ref, y_ref)
    via_ref = PivotEmbedder(SIZES, pivots="medoid", reference=(X_ref, y_ref)).fit(X, y)
    np.testing.assert_array_equal(via_ref.classes_, [0, 1, 2])
    for a, b in zip(direct.pivots_, via_ref.pivots_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(direct.transform(X), via_ref.transform(X))
    # y may be omitted altogether with a reference
    PivotEmbedder(SIZES, reference={"X": X_ref, "y": y_ref}).fit(X)


def test_feature_store_path_as_reference(tmp_path):
    from sklearn_advdet.deep.store import FeatureStoreWriter, open_store

    X_ref, y_ref = _reference(seed=24, sizes=(3, 5), counts=(9, 6, 5))
    logits = np.random.RandomState(24).normal(size=(len(y_ref), 3))
    w = FeatureStoreWriter.create(
        tmp_path / "ref", count=len(y_ref), layer_names=["conv", "fc"],
        layer_sizes=[3, 5], n_classes=3, chunk_size=8, has_labels=True,
    )
    for k in w.missing_chunks():
        lo, hi = w.chunk_bounds(k)
        w.write_chunk(k, layers=[X_ref[lo:hi, :3], X_ref[lo:hi, 3:]],
                      logits=logits[lo:hi], labels=y_ref[lo:hi])
    assert w.finalize()
    store = open_store(tmp_path / "ref")
    X_det = store.X[:7] + 0.5  # detection rows in the store's layout
    emb = PivotEmbedder(pivots="medoid", reference=str(tmp_path / "ref")).fit(X_det)
    # layout taken from the store: two hidden layers, the logits left out
    assert emb.layout_ == store.layout and emb.layer_indices_ == [0, 1]
    assert list(emb.get_feature_names_out()[:2]) == ["conv_class0", "conv_class1"]
    direct = PivotEmbedder((3, 5), pivots="medoid").fit(
        X_ref.astype(np.float32), y_ref
    )
    np.testing.assert_array_equal(emb.medoid_indices_, direct.medoid_indices_)
    np.testing.assert_allclose(
        emb.transform(X_det), direct.transform(X_det[:, :8]), rtol=1e-6
    )


@pytest.fixture
def count_pivot_computations(monkeypatch):
    calls = []
    original = embedding._compute_pivots

    def counting(X, y, slices, pivots, medoid_metric, block_size, n_jobs):
        calls.append((pivots, medoid_metric))
        return original(X, y, slices, pivots, medoid_metric, block_size, n_jobs)

    monkeypatch.setattr(embedding, "_compute_pivots", counting)
    return calls


def _search(X_ref, y_ref, memory, scoring=None):
    pipe = Pipeline(
        [
            ("embed", PivotEmbedder(SIZES, reference=(X_ref, y_ref), memory=memory)),
            ("clf", LogisticRegression()),
        ]
    )
    grid = {
        "embed__pivots": ["centroid", "medoid"],
        "embed__metric": ["euclidean", "cosine"],
        "clf__C": [0.1, 1.0],
    }
    return GridSearchCV(pipe, grid, cv=GroupKFold(n_splits=3), scoring=scoring)


def test_grid_search_computes_each_pivot_set_once(
    tmp_path, count_pivot_computations, one_blas_thread
):
    X_ref, y_ref, X, y, _, groups = _detection(seed=22)
    search = _search(X_ref, y_ref, memory=str(tmp_path / "cache"))
    search.fit(X, y, groups=groups)
    # 8 candidates x 3 folds + refit = 25 fits, but only 2 distinct pivot sets
    # (the distance metric does not change the pivots)
    assert sorted(count_pivot_computations) == [("centroid", None), ("medoid", "euclidean")]
    assert search.best_score_ > 0.8
    # same key again (another estimator, same cache): nothing is recomputed
    count_pivot_computations.clear()
    cache = str(tmp_path / "cache")
    PivotEmbedder(SIZES, pivots="medoid", metric="cosine", reference=(X_ref, y_ref),
                  memory=cache, block_size=3).fit(X)
    assert count_pivot_computations == []
    # a different reference set, or other layers, is a different key
    PivotEmbedder(SIZES, pivots="medoid", reference=(X_ref[:-1], y_ref[:-1]),
                  memory=cache).fit(X)
    PivotEmbedder(SIZES, layers=[0, 1], pivots="medoid", reference=(X_ref, y_ref),
                  memory=cache).fit(X)
    assert len(count_pivot_computations) == 2

    count_pivot_computations.clear()
    _search(X_ref, y_ref, memory=None).fit(X, y, groups=groups)
    assert len(count_pivot_computations) == 25  # no cache: once per fit


def test_grid_search_with_macro_auc_scorer_and_routing(tmp_path, one_blas_thread):
    import sklearn
    from sklearn_advdet.metrics import make_macro_auc_scorer, macro_auc

    X_ref, y_ref, X, y, attack, groups = _detection(seed=23)
    with sklearn.config_context(enable_metadata_routing=True):
        search = _search(
            X_ref, y_ref, memory=str(tmp_path / "cache"), scoring=make_macro_auc_scorer()
        )
        search.fit(X, y, groups=groups, attack=attack)
    assert 0.8 < search.best_score_ <= 1.0
    score = macro_auc(y, search.decision_function(X), attack)
    assert score > 0.8
