"""Out-of-core reference sets: PivotEmbedder fitted on a memory-mapped feature
store through the lazy LayeredView, equal bit for bit to the in-memory fit,
with bounded memory (tracemalloc) and bounded reads (bytes counted)."""

import pickle
import tracemalloc

import numpy as np
import pytest
from scipy.spatial.distance import cdist

import sklearn_advdet._layered as layered
import sklearn_advdet.embedding as embedding
from sklearn_advdet import PivotEmbedder
from sklearn_advdet._layered import LayeredView, chunked_class_means
from sklearn_advdet.store import FeatureStoreWriter, StoreError, open_store

SIZES = (6, 4)
N_CLASSES = 5


def _write_store(path, n=120, sizes=SIZES, n_classes=N_CLASSES, seed=0, dtype="float32",
                 chunk_size=32, labels=True, poison=None):
    """A class-clustered store written chunk by chunk; returns its arrays too."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    y[:n_classes] = np.arange(n_classes)  # every class present
    centres = rng.normal(scale=4.0, size=(n_classes, sum(sizes)))
    X = (centres[y] + rng.normal(size=(n, sum(sizes)))).astype(dtype)
    if poison is not None:
        X[poison] = np.nan
    logits = rng.normal(size=(n, n_classes)).astype(dtype)
    w = FeatureStoreWriter.create(path, count=n, layer_names=["conv", "fc"],
                                  layer_sizes=list(sizes), n_classes=n_classes,
                                  chunk_size=chunk_size, has_labels=labels, dtype=dtype,
                                  resume=False)
    for k in w.missing_chunks():
        lo, hi = w.chunk_bounds(k)
        w.write_chunk(k, layers=[X[lo:hi, : sizes[0]], X[lo:hi, sizes[0] :]],
                      logits=logits[lo:hi], labels=y[lo:hi] if labels else None)
    assert w.finalize()
    return X, logits, y


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "ref"
    X, logits, y = _write_store(path)
    return path, X, logits, y


# ------------------------------------------------------------------ the view
def test_view_reads_only_the_asked_layer(store_path):
    path, X, logits, y = store_path
    store = open_store(path)
    view = LayeredView.from_store(store)
    full = np.hstack([X, logits])
    assert view.shape == full.shape and view.dtype == np.float32
    assert view.layout == store.layout
    rows = np.array([3, 17, 90])
    np.testing.assert_array_equal(view[rows, 6:10], X[rows, 6:10])
    assert view.bytes_read == 3 * 4 * 4  # 3 rows of layer "fc" only
    # a column range over two blocks reads both, nothing else
    view.bytes_read = 0
    np.testing.assert_array_equal(view[10:20, 4:12], full[10:20, 4:12])
    assert view.bytes_read == 10 * 8 * 4
    np.testing.assert_array_equal(view[5], full[5])
    assert view[2:4, 3:3].shape == (2, 0)
    np.testing.assert_array_equal(np.asarray(view), store.X)  # materialises on request
    with pytest.raises(TypeError, match="contiguous slice"):
        view[:, [0, 1]]
    # the read is a copy: writing into it leaves the store alone
    block = view[:, 0:6]
    block[:] = 0
    np.testing.assert_array_equal(open_store(path).layer("conv"), X[:, :6])


def test_view_pickles_as_its_store_path(store_path, tmp_path):
    path, X, logits, y = store_path
    view = LayeredView.from_store(str(path))
    blob = pickle.dumps(view)
    assert len(blob) < 1000  # the path and generation, not the data
    np.testing.assert_array_equal(pickle.loads(blob)[:, 0:10], X)
    _write_store(path, seed=1)  # rewritten: another generation
    with pytest.raises(StoreError, match="rewritten"):
        pickle.loads(blob)
    # a view of plain arrays pickles its arrays
    plain = LayeredView([X[:, :6], X[:, 6:]])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(plain))[:, :], X)


def test_view_errors():
    with pytest.raises(ValueError, match="one row per sample"):
        LayeredView([np.zeros((3, 2)), np.zeros((4, 2))])
    with pytest.raises(ValueError, match="float blocks"):
        LayeredView([np.zeros((3, 2), dtype=int)])
    with pytest.raises(ValueError, match="float32 or float64"):
        LayeredView([np.zeros((3, 2))], dtype="float16")


def test_chunked_class_means_equal_numpy_means(monkeypatch):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1000, 7)).astype(np.float32) * 1e3
    y = rng.integers(0, 9, 1000)
    monkeypatch.setattr(layered, "_CHUNK_BYTES", 8 * 7 * 33)  # 33-row chunks
    means = chunked_class_means(LayeredView([X]), y, 9, slice(0, 7))
    for k in range(9):
        # the in-memory centroid, bit for bit (class rows summed in row order)
        np.testing.assert_array_equal(means[k], X[y == k].astype(np.float64).mean(axis=0))


# ------------------------------------------------- out-of-core == in memory
@pytest.mark.parametrize("pivots, medoid_metric", [("centroid", "euclidean"),
                                                   ("medoid", "euclidean"),
                                                   ("medoid", "cosine")])
def test_out_of_core_fit_equals_in_memory_fit(store_path, pivots, medoid_metric):
    path, X, logits, y = store_path
    store = open_store(path)
    params = dict(pivots=pivots, medoid_metric=medoid_metric, block_size=16)
    memory = PivotEmbedder(store.layout, **params).fit(store.X, store.labels)
    fits = [
        PivotEmbedder(**params).fit(store),  # the store itself, its labels
        PivotEmbedder(**params).fit(LayeredView.from_store(store), y),
        PivotEmbedder(**params, reference=str(path)).fit(store.X[:7]),
    ]
    X_new = np.hstack([X, logits])[::7] + 0.25
    for emb in fits:
        assert emb.layout_ == memory.layout_ and emb.n_features_in_ == 15
        np.testing.assert_array_equal(emb.classes_, memory.classes_)
        for a, b in zip(emb.pivots_, memory.pivots_):
            assert a.dtype == np.float64
            np.testing.assert_array_equal(a, b)
        if pivots == "medoid":
            np.testing.assert_array_equal(emb.medoid_indices_, memory.medoid_indices_)
        np.testing.assert_array_equal(emb.transform(X_new), memory.transform(X_new))
    # independent check: brute-force centroids / medoids of one layer
    for k in range(N_CLASSES):
        Xk = X[y == k, 6:10].astype(np.float64)
        if pivots == "centroid":
            np.testing.assert_allclose(fits[0].pivots_[1][k], Xk.mean(axis=0), rtol=1e-12)
        else:
            sums = cdist(Xk, Xk, metric=medoid_metric).sum(axis=1)
            assert fits[0].medoid_indices_[1, k] == np.flatnonzero(y == k)[np.argmin(sums)]
    # transform reads a store too, without concatenating it
    np.testing.assert_array_equal(fits[0].transform(store), memory.transform(store.X))


def test_one_layer_reads_one_file(store_path):
    path, X, logits, y = store_path
    for pivots, extra in (("centroid", 0), ("medoid", N_CLASSES)):
        view = LayeredView.from_store(path)
        emb = PivotEmbedder(pivots=pivots, layers=["fc"]).fit(view, y)
        # every row of layer "fc" once (the medoids: plus the 5 medoid rows)
        assert view.bytes_read == (len(y) + extra) * 4 * 4
        assert [p.shape for p in emb.pivots_] == [(N_CLASSES, 4)]


def _peak(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("pivots", ["centroid", "medoid"])
def test_memory_stays_bounded(tmp_path, monkeypatch, pivots):
    # 8,000 x (256 + 64) float32 = 10.2 MB of features in 40 classes
    path = tmp_path / "big"
    X, logits, y = _write_store(path, n=8000, sizes=(256, 64), n_classes=40, chunk_size=1000)
    monkeypatch.setattr(layered, "_CHUNK_BYTES", 1 << 18)  # 256 KB chunks
    full = X.nbytes
    store = open_store(path)
    in_memory = _peak(lambda: PivotEmbedder(store.layout, pivots=pivots).fit(store.X, y))
    out_of_core = _peak(lambda: PivotEmbedder(pivots=pivots, block_size=64).fit(open_store(path)))
    assert in_memory > full  # the concatenation
    # centroids: a few chunk buffers and the (40, 256) sums (about 1 MB
    # measured); medoids: one class of one layer (~200 x 256) and its tiles
    assert out_of_core < full / 5, (out_of_core, full)


# ------------------------------------------------------- dtype, bad input
def test_float16_store(tmp_path):
    path = tmp_path / "half"
    X, logits, y = _write_store(path, dtype="float16")
    store = open_store(path)
    assert store.layer("conv").dtype == np.float16
    view = LayeredView.from_store(store)
    assert view.dtype == np.float32  # float16 widened exactly
    for pivots in ("centroid", "medoid"):
        ooc = PivotEmbedder(pivots=pivots).fit(store)
        mem = PivotEmbedder(store.layout, pivots=pivots).fit(store.X, y)
        for a, b in zip(ooc.pivots_, mem.pivots_):
            assert a.dtype == np.float64
            np.testing.assert_array_equal(a, b)
    # float64 centroid of the float16 values, computed independently
    k_rows = X[y == 2, :6].astype(np.float64)
    centroids = PivotEmbedder(pivots="centroid").fit(store).pivots_[0]
    np.testing.assert_allclose(centroids[2], k_rows.mean(axis=0), rtol=1e-13)


def test_non_finite_values_are_named_and_leave_no_state(tmp_path):
    path = tmp_path / "nan"
    X, logits, y = _write_store(path, poison=(50, 7))  # a NaN in layer "fc"
    emb = PivotEmbedder(pivots="centroid")
    for pivots in ("centroid", "medoid"):
        with pytest.raises(ValueError, match="block 'fc' holds NaN"):
            emb.set_params(pivots=pivots).fit(open_store(path))
        assert not hasattr(emb, "pivots_") and not hasattr(emb, "n_features_in_")
    # only the embedded layers are read, and checked
    emb = PivotEmbedder(layers=["conv"]).fit(open_store(path))
    assert np.isfinite(emb.pivots_[0]).all()


def test_labels_errors(tmp_path, store_path):
    path, X, logits, y = store_path
    with pytest.raises(ValueError, match="one class label per row"):
        PivotEmbedder().fit(open_store(path), y[:-1])
    _write_store(tmp_path / "nolabels", labels=False)
    with pytest.raises(ValueError, match="holds no labels"):
        PivotEmbedder().fit(open_store(tmp_path / "nolabels"))
    emb = PivotEmbedder().fit(open_store(path))
    with pytest.raises(ValueError, match="X has 9 features, but PivotEmbedder"):
        emb.transform(LayeredView([X[:, :9]]))


def test_memory_cache_keys_on_the_store(store_path, tmp_path, monkeypatch):
    path, X, logits, y = store_path
    calls = []
    original = embedding._compute_pivots

    def counting(*args):
        calls.append(type(args[0]).__name__)
        return original(*args)

    monkeypatch.setattr(embedding, "_compute_pivots", counting)
    cache = str(tmp_path / "cache")
    a = PivotEmbedder(reference=str(path), memory=cache).fit(open_store(path).X)
    b = PivotEmbedder(reference=str(path), memory=cache).fit(open_store(path).X)
    assert calls == ["LayeredView"]  # the second fit hit the cache
    for p, q in zip(a.pivots_, b.pivots_):
        np.testing.assert_array_equal(p, q)
    _write_store(path, seed=5)  # rewritten store: a new key
    PivotEmbedder(reference=str(path), memory=cache).fit(open_store(path).X)
    assert len(calls) == 2
