"""The k-NN search backends (sklearn_advdet.search): exactness, order, interface."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from sklearn_advdet.search import BACKENDS, make_index, resolve_backend
from sklearn_advdet.search import exact


def test_tie_reranking_row_is_exact():
    # the per-row re-ranking used when sklearn's k-th and (k+1)-th distances tie
    rng = np.random.RandomState(8)
    R = rng.normal(size=(3000, 24)).astype(np.float32)
    R[100:110] = R[5]  # exact duplicates: a tie block
    sq = np.einsum("ij,ij->i", R, R, dtype=np.float64)
    for q, k in [(R[5], 4), (R[5], 11), (R[7] + 0.01, 50)]:
        idx, dist = exact.exact_row(q, R, sq, k)
        D = cdist(q[None].astype(np.float64), R.astype(np.float64))[0]
        want = np.lexsort((np.arange(D.size), D))[:k]
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_allclose(dist, D[want], rtol=1e-12)


def _brute_knn(Q, R, k):
    """k nearest by (float64 distance from differences, reference index)."""
    D = cdist(np.asarray(Q, dtype=np.float64), np.asarray(R, dtype=np.float64))
    order = np.array([np.lexsort((np.arange(D.shape[1]), row))[:k] for row in D])
    return order, np.take_along_axis(D, order, axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_jobs", [None, 2])
@pytest.mark.parametrize("k", [1, 7, 60, 700])
@pytest.mark.parametrize("offset", [0.0, 500.0])
def test_exact_index_matches_brute_force_across_blocks(monkeypatch, dtype, n_jobs, k, offset):
    # tiny screening tiles: many reference blocks merged per query chunk and
    # several query chunks on threads; clustered data near the origin or far
    # from it (screened as a centred copy) with duplicates and a query that
    # is a reference row (zero distance)
    monkeypatch.setattr(exact, "_SCREEN_ENTRIES", 2048)
    monkeypatch.setattr(exact, "_QUERY_CHUNK", 16)
    rng = np.random.RandomState(k)
    centres = rng.normal(scale=3.0, size=(5, 12))
    R = (offset + centres[rng.randint(5, size=700)] + rng.normal(size=(700, 12))).astype(dtype)
    R[600:640] = R[3]  # a block of duplicates
    Q = (offset + centres[rng.randint(5, size=45)] + rng.normal(size=(45, 12))).astype(dtype)
    Q[0], Q[1] = R[3], R[10]
    index = exact.ExactIndex(R, n_jobs)
    assert (index._shift is None) == (offset == 0.0)
    dist, idx = index.query(Q, k)
    want_idx, want_dist = _brute_knn(Q, R, k)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-12, atol=0)
    assert np.all(dist[0, :41] == 0.0) if k >= 41 else np.all(dist[0] == 0.0)


def test_exact_index_ties_beyond_the_margin_fall_back_to_a_full_scan(monkeypatch):
    # 300 references at exactly the same distance from the query straddle
    # the k-th place: more ties than the screening margin keeps, so that
    # query is redone by the full exact scan; the answer is still (distance,
    # index) order
    calls = []
    original = exact.exact_row

    def spy(q, R, sq, k):
        calls.append(k)
        return original(q, R, sq, k)

    monkeypatch.setattr(exact, "exact_row", spy)
    rng = np.random.RandomState(3)
    R = rng.normal(size=(2000, 8)) * 10 + 40
    R[[50, 1900]] = 0.0  # two at distance 0 from the query
    ring = rng.permutation(np.arange(100, 1800))[:300]
    R[ring] = 0.0
    R[ring, rng.randint(8, size=300)] = rng.choice([-1.0, 1.0], size=300)  # all at distance 1
    Q = np.zeros((3, 8))
    Q[1:] = rng.normal(size=(2, 8)) * 10 + 40  # ordinary queries: no fallback
    index = exact.ExactIndex(R)
    dist, idx = index.query(Q, 40)
    want_idx, want_dist = _brute_knn(Q, R, 40)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-12)
    assert calls == [40]  # only the query whose window overflowed


def test_exact_index_far_from_the_origin_needs_no_full_scans(monkeypatch):
    # features whose mean dwarfs their spread: screened uncentred, the
    # rounding window would hold every reference and each query would fall
    # back to a full exact scan; the centred screening copy keeps it narrow
    calls = []
    original = exact.exact_row
    monkeypatch.setattr(
        exact, "exact_row", lambda *a: calls.append(1) or original(*a)
    )
    rng = np.random.RandomState(5)
    centres = rng.normal(scale=2.0, size=(10, 32))
    R = (300.0 + centres[rng.randint(10, size=5000)] + rng.normal(size=(5000, 32))).astype(np.float32)
    Q = (300.0 + centres[rng.randint(10, size=20)] + rng.normal(size=(20, 32))).astype(np.float32)
    index = exact.ExactIndex(R)
    dist, idx = index.query(Q, 200)
    want_idx, want_dist = _brute_knn(Q, R, 200)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-12)
    assert calls == []
    # without the centred copy the same queries all need the full scan
    monkeypatch.setattr(exact, "_CENTRE_RATIO", np.inf)
    _, idx2 = exact.ExactIndex(R).query(Q, 200)
    np.testing.assert_array_equal(idx2, want_idx)
    assert len(calls) == len(Q)


# ------------------------------------------------------------- the interface
def test_make_index_interface_order_and_k_larger_than_reference():
    rng = np.random.RandomState(11)
    R = np.round(rng.normal(size=(60, 5)), 1)  # rounded: distance ties occur
    Q = np.vstack([R[:3], np.round(rng.normal(size=(7, 5)), 1)])
    index = make_index("exact", R)
    assert index.backend == "exact"
    dist, idx = index.query(Q, 100)  # k > n_ref: every reference
    assert dist.shape == idx.shape == (10, 60)
    assert dist.dtype == np.float64 and idx.dtype == np.intp
    want_idx, want_dist = _brute_knn(Q, R, 60)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-12)
    assert np.all(dist[:3, 0] == 0.0)
    d0, i0 = index.query(Q[:0], 4)
    assert d0.shape == i0.shape == (0, 4)


def test_backend_names_and_auto_rule_live_in_one_place(monkeypatch):
    assert set(BACKENDS) >= {"auto", "exact", "pynndescent"}
    assert resolve_backend("auto", 50_000) == "exact"
    assert resolve_backend("exact", 10**9) == "exact"
    with pytest.raises(ValueError, match="unknown search backend 'brute'"):
        make_index("brute", np.zeros((3, 2)))
    with pytest.raises(ValueError, match="takes no backend_params"):
        make_index("exact", np.zeros((3, 2)), params={"epsilon": 0.1})
    with pytest.raises(TypeError, match="backend_params must be a dict"):
        make_index("exact", np.zeros((3, 2)), params=[1])


def test_legacy_private_exact_index_keeps_its_old_order():
    from sklearn_advdet.knn import _ExactIndex

    rng = np.random.RandomState(12)
    R, Q = rng.normal(size=(40, 3)), rng.normal(size=(4, 3))
    idx, dist = _ExactIndex(R).query(Q, 5)
    want_dist, want_idx = make_index("exact", R).query(Q, 5)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(dist, want_dist)


# ------------------------------------------------------------------- faiss
def _tie_free(n, d, seed, n_q=40):
    rng = np.random.RandomState(seed)
    centres = rng.normal(scale=3.0, size=(8, d))
    R = (centres[rng.randint(8, size=n)] + rng.normal(size=(n, d))).astype(np.float32)
    Q = (centres[rng.randint(8, size=n_q)] + rng.normal(size=(n_q, d))).astype(np.float32)
    return R, Q


def _recall(idx, want):
    return np.mean([np.intersect1d(a, b).size / want.shape[1] for a, b in zip(idx, want)])


def test_faiss_flat_equals_the_exact_search_on_tie_free_data():
    faiss = pytest.importorskip("faiss", reason="faiss is an optional extra (pip install faiss-cpu)")
    R, Q = _tie_free(3000, 16, 20)
    before = faiss.omp_get_max_threads()
    index = make_index("faiss", R, n_jobs=1)
    assert index.backend == "faiss" and faiss.omp_get_max_threads() == before
    for k in (1, 10, 200):
        d_f, i_f = index.query(Q, k)
        d_e, i_e = make_index("exact", R).query(Q, k)
        np.testing.assert_array_equal(i_f, i_e)
        np.testing.assert_allclose(d_f, d_e, rtol=1e-12)
        np.testing.assert_allclose(d_f, _brute_knn(Q, R, k)[1], rtol=1e-12)
    assert faiss.omp_get_max_threads() == before  # the OpenMP pool is restored


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0.0, 300.0])
def test_faiss_flat_screening_is_exact_with_ties_and_offsets(monkeypatch, dtype, offset):
    # faiss only screens; the exact re-ranking inside the rounding window
    # gives the exact search's answer even with duplicates, a query that is
    # a reference row, data far from the origin and float64 input
    pytest.importorskip("faiss", reason="faiss is an optional extra (pip install faiss-cpu)")
    from sklearn_advdet.search import faiss as faiss_backend

    calls = []
    original = faiss_backend.FaissFlatScreen.search
    monkeypatch.setattr(faiss_backend.FaissFlatScreen, "search",
                        lambda self, Qw, M: calls.append(M) or original(self, Qw, M))
    rng = np.random.RandomState(23)
    centres = rng.normal(scale=3.0, size=(5, 12))
    R = (offset + centres[rng.randint(5, size=900)] + rng.normal(size=(900, 12))).astype(dtype)
    R[600:640] = R[3]
    Q = (offset + centres[rng.randint(5, size=45)] + rng.normal(size=(45, 12))).astype(dtype)
    Q[0], Q[1] = R[3], R[10]
    d_f, i_f = make_index("faiss", R).query(Q, 60)
    want_idx, want_dist = _brute_knn(Q, R, 60)
    np.testing.assert_array_equal(i_f, want_idx)
    np.testing.assert_allclose(d_f, want_dist, rtol=1e-12, atol=0)
    assert np.all(d_f[0, :41] == 0.0)
    assert calls == [60 + 32]  # faiss screened the k + margin candidates


@pytest.mark.parametrize("params, min_recall", [
    ({"index": "ivf", "nlist": 30, "nprobe": 8}, 0.95),
    ({"index": "hnsw", "M": 16, "efSearch": 200}, 0.95),
])
def test_faiss_approximate_indexes_recall_against_the_exact_search(params, min_recall):
    pytest.importorskip("faiss", reason="faiss is an optional extra (pip install faiss-cpu)")
    R, Q = _tie_free(4000, 16, 21, n_q=100)
    k = 50
    d_a, i_a = make_index("faiss", R, random_state=0, params=params).query(Q, k)
    d_e, i_e = make_index("exact", R).query(Q, k)
    recall = _recall(i_a, i_e)
    assert min_recall <= recall  # approximate: recall, not equality (STYLE 9)
    assert np.all(np.diff(d_a, axis=1) >= 0) and np.all(np.isfinite(d_a))
    # what an approximate index misses is farther away, never nearer
    assert np.all(d_a[:, -1] >= d_e[:, -1] * (1 - 1e-5))
    if params["index"] == "ivf":  # visiting every list is the exhaustive search
        full = make_index("faiss", R, random_state=0, params={**params, "nprobe": 30})
        assert _recall(full.query(Q, k)[1], i_e) == 1.0
        # too narrow a probe finds fewer than k neighbours: the error names the fix
        tiny = make_index("faiss", R[:400], random_state=0,
                          params={"index": "ivf", "nlist": 10, "nprobe": 1})
        with pytest.raises(RuntimeError, match="nprobe"):
            tiny.query(Q, 300)


def test_faiss_params_are_checked():
    pytest.importorskip("faiss", reason="faiss is an optional extra (pip install faiss-cpu)")
    R = np.zeros((50, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="unknown faiss backend_params \\['nprob'\\]"):
        make_index("faiss", R, params={"nprob": 4})
    with pytest.raises(ValueError, match="must be one of"):
        make_index("faiss", R, params={"index": "pq"})
    with pytest.raises(ValueError, match="positive int"):
        make_index("faiss", R, params={"index": "ivf", "nprobe": 0})


def test_faiss_missing_gives_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "faiss" and level == 0:  # the package, not search/faiss.py
            raise ImportError("No module named 'faiss'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    monkeypatch.delitem(__import__("sys").modules, "faiss", raising=False)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        make_index("faiss", np.zeros((5, 2), dtype=np.float32))


def test_estimators_accept_the_faiss_backend():
    pytest.importorskip("faiss", reason="faiss is an optional extra (pip install faiss-cpu)")
    from sklearn_advdet import FeatureLayout, KNNClassScorer, LIDScorer

    R, Q = _tie_free(1500, 8, 22)
    y = np.arange(len(R)) % 4
    logits = lambda c: np.eye(4)[c]  # noqa: E731
    X_ref = np.hstack([R, logits(y)])
    X = np.hstack([Q, logits(np.arange(len(Q)) % 4)])
    layout = FeatureLayout([8, 4], has_logits=True)
    exact = KNNClassScorer(layout, n_neighbors=30, backend="exact").fit(X_ref, y)
    fa = KNNClassScorer(layout, n_neighbors=30, backend="faiss").fit(X_ref, y)
    assert fa.backend_ == "faiss"
    np.testing.assert_array_equal(fa.transform(X), exact.transform(X))
    lid_e = LIDScorer(layout, backend="exact").fit(X_ref)
    lid_f = LIDScorer(layout, backend="faiss").fit(X_ref)
    np.testing.assert_array_equal(lid_f.transform(X), lid_e.transform(X))
    np.testing.assert_array_equal(lid_f.fit_transform(X_ref), lid_e.fit_transform(X_ref))


# ------------------------------------------------------------------ joblib
def test_query_chunks_go_through_joblib_with_identical_results(monkeypatch):
    import joblib
    from joblib._parallel_backends import ThreadingBackend

    tasks = []

    class CountingBackend(ThreadingBackend):
        def submit(self, func, callback=None):
            tasks.append(1)
            return super().submit(func, callback=callback)

    joblib.register_parallel_backend("h2_counting", CountingBackend)
    monkeypatch.setattr(exact, "_QUERY_CHUNK", 16)
    R, Q = _tie_free(2000, 10, 24, n_q=100)
    index = make_index("exact", R, n_jobs=2)
    default = index.query(Q, 25)
    with joblib.parallel_config(backend="threading"):
        threaded = index.query(Q, 25)
    with joblib.parallel_config(backend="h2_counting"):
        counted = index.query(Q, 25)
    serial = make_index("exact", R, n_jobs=1).query(Q, 25)
    for got in (threaded, counted, serial):
        np.testing.assert_array_equal(got[0], default[0])
        np.testing.assert_array_equal(got[1], default[1])
    assert len(tasks) >= 2  # the chunks were joblib tasks of the chosen backend
    np.testing.assert_array_equal(default[1], _brute_knn(Q, R, 25)[0])

