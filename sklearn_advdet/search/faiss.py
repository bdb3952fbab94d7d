"""``backend="faiss"``: faiss flat (screening the exact search), IVF and HNSW.

faiss (``pip install faiss-cpu``, the ``faiss`` extra of this package) is
imported when an index is built.  faiss runs its own OpenMP thread pool; the
index sets it from ``n_jobs`` around every build and search and restores it
afterwards, so that it does not compete with the BLAS pool of the rest of
the process.
"""

import math
from contextlib import contextmanager

import numpy as np

from .._parallel import n_threads_for
from .._rounding import safe_gamma
from ._refine import sorted_neighbors

__all__ = ["FaissFlatScreen", "FaissIndex", "FAISS_PARAMS", "check_faiss_params"]

#: accepted ``backend_params`` keys and their defaults (None: chosen from the data)
FAISS_PARAMS = {
    "index": "flat",        # "flat" (exhaustive), "ivf" (inverted lists) or "hnsw" (graph)
    "nlist": None,          # ivf: number of lists; default min(sqrt(n), n / 39)
    "nprobe": 16,           # ivf: lists visited per query
    "M": 32,                # hnsw: graph degree
    "efConstruction": 40,   # hnsw: build breadth
    "efSearch": None,       # hnsw: search breadth; default max(2 k, 64)
}
_KINDS = ("flat", "ivf", "hnsw")


def _import_faiss():
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            "backend='faiss' needs the faiss package: pip install faiss-cpu "
            "(or the 'faiss' extra: pip install sklearn_advdet[faiss]), or use "
            "backend='exact'"
        ) from exc
    return faiss


def check_faiss_params(params):
    """Complete ``params`` with the defaults of :data:`FAISS_PARAMS`; clear errors."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(FAISS_PARAMS))
    if unknown:
        raise ValueError(
            f"unknown faiss backend_params {unknown}: the faiss backend takes "
            f"{sorted(FAISS_PARAMS)}"
        )
    out = {**FAISS_PARAMS, **params}
    if out["index"] not in _KINDS:
        raise ValueError(
            f"backend_params['index'] must be one of {list(_KINDS)}, got {out['index']!r}"
        )
    for key in ("nlist", "nprobe", "M", "efConstruction", "efSearch"):
        v = out[key]
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1):
            raise ValueError(f"backend_params[{key!r}] must be a positive int, got {v!r}")
    return out


@contextmanager
def _omp_threads(faiss, n):
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


class FaissFlatScreen:
    """faiss ``IndexFlatL2`` as the screening pass of the exact search.

    :class:`~sklearn_advdet.search.exact.ExactIndex` asks it for the ``M``
    smallest float32 squared distances of every query and re-ranks the
    candidates inside their rounding-error window (:meth:`error_bound`)
    exactly in float64, so ``backend="faiss"`` with ``index="flat"`` gives
    the same neighbours, distances and (distance, index) order as
    ``backend="exact"``; only the screening GEMM is faiss's.

    Parameters
    ----------
    screen_data : ndarray of shape (n_ref, n_dims)
        The exact search's screening copy of the references (centred when
        they lie far from the origin); a float32 copy is added to faiss.
    n_jobs : int, default=None
        faiss's OpenMP threads during the search.
    """

    def __init__(self, screen_data, n_jobs=None):
        self._faiss = _import_faiss()
        self.n_jobs = n_jobs
        self.index = self._faiss.IndexFlatL2(screen_data.shape[1])
        with _omp_threads(self._faiss, n_threads_for(n_jobs)):
            self.index.add(np.ascontiguousarray(screen_data, dtype=np.float32))
        self._lossy = screen_data.dtype != np.float32  # rounded to float32

    def search(self, Qw, M):
        """Sorted float32 squared distances (as float64) and indices of the M nearest."""
        Qf = np.ascontiguousarray(Qw, dtype=np.float32)
        with _omp_threads(self._faiss, n_threads_for(self.n_jobs)):
            sqd, idx = self.index.search(Qf, M)
        return sqd.astype(np.float64), idx.astype(np.intp)

    def error_bound(self, q_norm, r_max, d):
        """Bound on the error of every screened squared distance of each query.

        faiss computes ``|q|^2 + |r|^2 - 2 q.r`` (or the sum of squared
        differences for small batches) in float32: each is within
        ``gamma_{d+2} (|q| + |r|)^2`` of the squared distance of the float32
        vectors (with :func:`.._rounding.safe_gamma`'s margins); rounding
        float64 data to float32 moves it by at most ``4 u (|q| + |r|)^2`` more.
        """
        g = safe_gamma(d + 2, np.float32)
        if self._lossy:
            g += 4.0 * float(np.finfo(np.float32).eps) / 2
        return g * np.square(q_norm + r_max)


class FaissIndex:
    """An approximate faiss index of the references (IVF or HNSW, float32).

    Parameters
    ----------
    data : ndarray of shape (n_ref, n_dims)
        References; searched as float32 (a float32 copy is made of float64
        data).
    random_state : int
        Seed of the IVF k-means (the other kinds draw nothing).
    n_jobs : int, default=None
        faiss's OpenMP threads during build and search (``None``: as many as
        the BLAS thread pool has).
    params : dict, default=None
        See :data:`FAISS_PARAMS` (``"index"``: ``"ivf"`` or ``"hnsw"``; the
        exhaustive ``"flat"`` is :class:`FaissFlatScreen` inside the exact
        search). The answers are approximate (recall below 1); the distances
        returned are faiss's float32 ones, those small enough to be spoilt by
        cancellation recomputed from the coordinates.
    """

    backend = "faiss"

    def __init__(self, data, random_state=0, n_jobs=None, params=None):
        faiss = _import_faiss()
        self.params = check_faiss_params(params)
        self.data = data
        self.sqnorm = np.einsum("ij,ij->i", data, data, dtype=np.float64)
        self.n_jobs = n_jobs
        x = np.ascontiguousarray(data, dtype=np.float32)
        n, d = x.shape
        kind = self.params["index"]
        with _omp_threads(faiss, n_threads_for(n_jobs)):
            if kind == "ivf":
                nlist = self.params["nlist"] or max(1, min(int(math.sqrt(n)), n // 39))
                self._quantizer = faiss.IndexFlatL2(d)  # kept alive with the index
                index = faiss.IndexIVFFlat(self._quantizer, d, min(nlist, n))
                index.cp.seed = int(random_state)
                index.train(x)
                index.nprobe = min(self.params["nprobe"], index.nlist)
            else:
                index = faiss.IndexHNSWFlat(d, self.params["M"])
                index.hnsw.efConstruction = self.params["efConstruction"]
            index.add(x)
        self._faiss, self.index = faiss, index

    def query(self, Q, k):
        """``(distances, indices)`` of the k nearest found, by (distance, index)."""
        k = min(k, self.data.shape[0])
        Qf = np.ascontiguousarray(Q, dtype=np.float32)
        if self.params["index"] == "hnsw":
            self.index.hnsw.efSearch = self.params["efSearch"] or max(2 * k, 64)
        with _omp_threads(self._faiss, n_threads_for(self.n_jobs)):
            sqd, idx = self.index.search(Qf, k)
        if np.any(idx < 0):
            fix = {"ivf": "nprobe", "hnsw": "efSearch"}[self.params["index"]]
            raise RuntimeError(
                f"faiss found fewer than k={k} neighbours for some queries: raise "
                f"backend_params[{fix!r}] or use backend_params={{'index': 'flat'}}"
            )
        dist = np.sqrt(np.maximum(sqd.astype(np.float64), 0.0))
        return sorted_neighbors(np.asarray(Q), self.data, self.sqnorm, idx, dist)
