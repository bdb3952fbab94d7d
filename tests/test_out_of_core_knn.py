"""Out-of-core k-NN: KNNClassScorer and LIDScorer fitted on a memory-mapped
feature store search each layer's memmap block by block (never loaded, float16
widened per block) and find the neighbours of the in-memory fit; the exact
search on a memmap is checked against brute force in float64."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

import sklearn_advdet._layered as layered
import sklearn_advdet.search.exact as exact
from sklearn_advdet import KNNClassScorer, LIDScorer
from sklearn_advdet._layered import LayeredView
from sklearn_advdet.search.exact import ExactIndex
from sklearn_advdet.store import open_store
from test_out_of_core import N_CLASSES, _peak, _write_store


def _brute(R, Q, k):
    """k nearest rows of R for every row of Q, float64, ordered by (distance, index)."""
    D = cdist(np.asarray(Q, np.float64), np.asarray(R, np.float64))
    idx = np.array([np.lexsort((np.arange(len(d)), d))[:k] for d in D])
    return np.take_along_axis(D, idx, axis=1), idx


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("offset", [0.0, 300.0])  # 300: the centred-screening path
def test_exact_index_on_a_memmap_equals_brute_force(tmp_path, monkeypatch, dtype, offset):
    monkeypatch.setattr(exact, "_READ_BYTES", 4096)  # many read blocks
    monkeypatch.setattr(exact, "_SCREEN_ENTRIES", 512)  # many screening blocks
    rng = np.random.default_rng(1)
    data = (rng.normal(size=(700, 12)) + offset).astype(dtype)
    mm = np.memmap(tmp_path / "r.bin", dtype=dtype, mode="w+", shape=data.shape)
    mm[:] = data
    mm.flush()
    ro = np.memmap(tmp_path / "r.bin", dtype=dtype, mode="r", shape=data.shape)
    Q = (rng.normal(size=(40, 12)) + offset).astype(np.float64 if dtype == "float64"
                                                      else np.float32)
    Q[0] = np.asarray(data[5], Q.dtype)  # a query on a reference (distance 0)
    index = ExactIndex(ro, n_jobs=1)
    assert index._screen_data is None  # screened block by block, no copy held
    assert (index._shift is not None) == bool(offset)
    dist, idx = index.query(Q, 9)
    d_ref, i_ref = _brute(data, Q, 9)
    np.testing.assert_array_equal(idx, i_ref)
    np.testing.assert_allclose(dist, d_ref, rtol=1e-12, atol=1e-12)
    # the in-memory index of the same values gives the same answer
    if dtype != "float16":
        d_mem, i_mem = ExactIndex(np.array(data), n_jobs=1).query(Q, 9)
        np.testing.assert_array_equal(idx, i_mem)
        np.testing.assert_array_equal(dist, d_mem)


def test_exact_row_on_a_float16_memmap(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.normal(size=(300, 5)).astype(np.float16)
    sq = np.einsum("ij,ij->i", data.astype(np.float64), data.astype(np.float64))
    q = rng.normal(size=5).astype(np.float32)
    idx, dist = exact.exact_row(q, data, sq, 6)
    d_ref, i_ref = _brute(data, q[None], 6)
    np.testing.assert_array_equal(idx, i_ref[0])
    np.testing.assert_allclose(dist, d_ref[0], rtol=1e-12)


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "ref"
    X, logits, y = _write_store(path, n=150)
    return path, X, logits, y


def _queries(X, logits, seed=3):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(X), 30)
    Xq = X[rows] + rng.normal(scale=0.5, size=(30, X.shape[1])).astype(X.dtype)
    return np.hstack([Xq, logits[rows]])


@pytest.mark.parametrize("preprocessing", [None, "l2"])
def test_knn_scorer_on_a_store_equals_the_in_memory_fit(store, preprocessing):
    path, X, logits, y = store
    st = open_store(path)
    params = dict(layers=["conv", "fc"], n_neighbors=9, preprocessing=preprocessing,
                  backend="exact")
    ooc = KNNClassScorer(**params).fit(st)  # layout and labels from the store
    mem = KNNClassScorer(st.layout, **params).fit(st.X, y)
    assert ooc.layout_ == mem.layout_ and ooc.n_features_in_ == mem.n_features_in_
    if preprocessing is None:  # the index keeps the store's memory-map itself
        assert all(isinstance(ix.data, np.memmap) for ix in ooc._indexes)
    Q = _queries(X, logits)
    np.testing.assert_array_equal(ooc.transform(Q), mem.transform(Q))
    for layer in ("conv", "fc"):
        d1, i1 = ooc.kneighbors(Q, layer=layer)
        d2, i2 = mem.kneighbors(Q, layer=layer)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(d1, d2, rtol=1e-12)
    # and against brute force on the layer "fc" (no preprocessing)
    if preprocessing is None:
        d_ref, i_ref = _brute(X[:, 6:], Q[:, 6:10], 9)
        np.testing.assert_array_equal(ooc.kneighbors(Q, layer="fc")[1], i_ref)


def test_float16_store_is_widened_per_block(tmp_path):
    path = tmp_path / "half"
    X, logits, y = _write_store(path, n=150, dtype="float16")
    st = open_store(path)
    ooc = KNNClassScorer(layers=["conv", "fc"], n_neighbors=7, backend="exact").fit(st)
    assert ooc._indexes[0].data.dtype == np.float16  # not a widened copy
    mem = KNNClassScorer(st.layout, layers=["conv", "fc"], n_neighbors=7,
                         backend="exact").fit(np.asarray(st.X, np.float32), y)
    Q = _queries(X.astype(np.float32), logits.astype(np.float32))
    np.testing.assert_array_equal(ooc.transform(Q), mem.transform(Q))


def test_fit_memory_stays_bounded(tmp_path, monkeypatch):
    # 6,000 x (256 + 64) float32 = 7.7 MB of features
    path = tmp_path / "big"
    X, logits, y = _write_store(path, n=6000, sizes=(256, 64), n_classes=N_CLASSES,
                                chunk_size=1000)
    monkeypatch.setattr(layered, "_CHUNK_BYTES", 1 << 18)
    monkeypatch.setattr(exact, "_READ_BYTES", 1 << 18)
    st = open_store(path)
    in_memory = _peak(lambda: KNNClassScorer(st.layout, layers=[0, 1], n_neighbors=50,
                                             backend="exact").fit(st.X, y))
    out_of_core = _peak(lambda: KNNClassScorer(layers=[0, 1], n_neighbors=50,
                                               backend="exact").fit(open_store(path)))
    assert in_memory > X.nbytes  # the concatenated X
    # the norms (6,000 float64 per layer) and a few 256 KB read blocks
    assert out_of_core < X.nbytes / 8, (out_of_core, X.nbytes)


def test_non_finite_reference_values_are_named(tmp_path):
    path = tmp_path / "nan"
    _write_store(path, poison=(40, 8))  # a NaN in layer "fc"
    for est in (KNNClassScorer(layers=["fc"], n_neighbors=5, backend="exact"),
                LIDScorer(layers=["fc"], n_neighbors=5, backend="exact")):
        with pytest.raises(ValueError, match="block 'fc' holds NaN"):
            est.fit(open_store(path))
        assert not hasattr(est, "n_features_in_") or not hasattr(est, "layers_")
    # a layer without NaN is indexed (only the selected layers are checked)
    KNNClassScorer(layers=["conv"], n_neighbors=5, backend="exact").fit(open_store(path))


def test_lid_on_a_store_equals_the_in_memory_fit(store):
    path, X, logits, y = store
    st = open_store(path)
    ooc = LIDScorer(layers=["conv", "fc"], n_neighbors=8, backend="exact").fit(st)
    mem = LIDScorer(st.layout, layers=["conv", "fc"], n_neighbors=8,
                    backend="exact").fit(st.X)
    Q = _queries(X, logits)
    np.testing.assert_array_equal(ooc.transform(Q), mem.transform(Q))
    with pytest.raises(ValueError, match="minimum of 3"):
        LIDScorer().fit(LayeredView([X[:2]], layout=None))


def test_view_without_aligned_blocks_is_read_per_layer(store):
    # a hand-made view whose single block spans both layers: no block holds
    # exactly one layer, so each layer's columns are read (same answer)
    path, X, logits, y = store
    st = open_store(path)
    view = LayeredView([np.hstack([X, logits])], layout=st.layout)
    assert view.aligned_block(st.layout.slice_of(0)) is None
    a = KNNClassScorer(layers=[0, 1], n_neighbors=5, backend="exact").fit(view, y)
    b = KNNClassScorer(st.layout, layers=[0, 1], n_neighbors=5, backend="exact").fit(st.X, y)
    Q = _queries(X, logits)
    np.testing.assert_array_equal(a.transform(Q), b.transform(Q))


def test_a_fitted_scorer_keeps_its_references_when_the_store_is_rewritten(tmp_path):
    # the index maps the store's layer file: rewriting the store (resume=False)
    # removes the old files and writes new ones, so the fitted scorer keeps
    # reading the old values (an in-place truncation would change them, or
    # crash the reader with SIGBUS when the file shrinks)
    path = tmp_path / "ref"
    X, logits, y = _write_store(path, n=150, seed=0)
    knn = KNNClassScorer(layers=["conv", "fc"], n_neighbors=7, backend="exact")
    knn.fit(open_store(path))
    Q = _queries(X, logits)
    before = knn.transform(Q)
    X2, _, _ = _write_store(path, n=150, seed=5)  # other values, same shapes
    assert not np.array_equal(open_store(path).layer("conv"), X[:, :6])
    np.testing.assert_array_equal(knn.transform(Q), before)
    np.testing.assert_array_equal(knn._indexes[0].data, X[:, :6])


def test_pca_preprocessing_out_of_core(tmp_path, monkeypatch):
    """PCA from the covariance gathered chunk by chunk: the neighbours and
    whitened distances of the in-memory fit's PCA, with every component kept
    or truncated; the fitted scorer saves and loads."""
    from sklearn_advdet.persistence import load, save

    monkeypatch.setattr(layered, "_CHUNK_BYTES", 1 << 12)  # chunks of 128 rows
    path = tmp_path / "ref"
    X, logits, y = _write_store(path, n=700, sizes=(6, 4), chunk_size=100)
    st = open_store(path)
    params = dict(layers=["conv", "fc"], n_neighbors=9, preprocessing="pca",
                  n_components=6, backend="exact")  # every component of both layers
    ooc = KNNClassScorer(**params).fit(st)
    mem = KNNClassScorer(st.layout, **params).fit(st.X, y)
    assert type(ooc.preprocessors_[0]).__name__ == "ChunkedPCA"
    Q = _queries(X, logits)
    for layer in ("conv", "fc"):
        d1, i1 = ooc.kneighbors(Q, layer=layer)
        d2, i2 = mem.kneighbors(Q, layer=layer)
        np.testing.assert_allclose(d1, d2, rtol=1e-4)
        np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(ooc.transform(Q), mem.transform(Q))
    # truncated (6 -> 4 components of layer "conv"): the same
    part = dict(params, layers=["conv"], n_components=4)
    d1, i1 = KNNClassScorer(**part).fit(st).kneighbors(Q)
    d2, i2 = KNNClassScorer(st.layout, **part).fit(st.X, y).kneighbors(Q)
    np.testing.assert_allclose(d1, d2, rtol=1e-4)
    np.testing.assert_array_equal(i1, i2)
    # l2: the normalised copy equals the in-memory one exactly
    l2 = KNNClassScorer(**dict(params, preprocessing="l2")).fit(st)
    l2_mem = KNNClassScorer(st.layout, **dict(params, preprocessing="l2")).fit(st.X, y)
    np.testing.assert_array_equal(l2.transform(Q), l2_mem.transform(Q))
    save(ooc, tmp_path / "knn.advdet")
    np.testing.assert_array_equal(load(tmp_path / "knn.advdet").transform(Q), ooc.transform(Q))
    # a constant layer cannot be whitened: the error names the fix
    const = tmp_path / "const"
    Xc, lc, yc = _write_store(const, n=50)
    with pytest.raises(ValueError, match="whiten=False or preprocessing='l2'"):
        KNNClassScorer(**dict(params, layers=["conv"])).fit(
            LayeredView([np.zeros((50, 6), np.float32), Xc[:, 6:], lc],
                        layout=open_store(const).layout),
            yc)


def test_chunked_pca_equals_sklearn_pca(monkeypatch):
    from sklearn.decomposition import PCA

    from sklearn_advdet.search._layers import fit_preprocessing_view

    monkeypatch.setattr(layered, "_CHUNK_BYTES", 1 << 10)  # chunks of 16 rows
    rng = np.random.default_rng(4)
    X = (rng.normal(size=(300, 8)) * np.arange(1, 9) + 5).astype(np.float32)
    view = LayeredView([X])
    for whiten in (True, False):
        pca, Z = fit_preprocessing_view("pca", view, slice(0, 8), None, 3, whiten)
        ref = PCA(3, whiten=whiten, svd_solver="full").fit(X.astype(np.float64))
        np.testing.assert_allclose(pca.explained_variance_, ref.explained_variance_,
                                   rtol=1e-10)
        np.testing.assert_allclose(pca.mean_, ref.mean_, rtol=1e-12)
        signs = np.sign(np.sum(pca.components_ * ref.components_, axis=1))
        np.testing.assert_allclose(pca.components_ * signs[:, None], ref.components_,
                                   atol=1e-10)
        np.testing.assert_allclose(Z * signs, ref.transform(X), rtol=1e-5, atol=1e-5)
