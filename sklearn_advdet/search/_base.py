"""The one interface of the k-NN search backends, and the ``"auto"`` rule.

Every backend's index is built from the reference rows and answers
``index.query(Q, k) -> (distances, indices)``: arrays of shape
``(n_queries, min(k, n_ref))``, float64 Euclidean distances and intp
reference indices, each row ordered by (distance, reference index).
:func:`make_index` is the only place that knows the backend names, checks
them and decides what ``"auto"`` means; the estimators
(:class:`~sklearn_advdet.KNNClassScorer`, :class:`~sklearn_advdet.LIDScorer`)
call it once per layer.
"""

import numpy as np
from sklearn.utils import check_random_state

from ._refine import sorted_neighbors

__all__ = [
    "BACKENDS",
    "SEARCH_PARAMS_DOC",
    "deterministic_backend",
    "make_index",
    "resolve_backend",
    "sorted_neighbors",
]

#: the backend names an estimator's ``backend`` parameter accepts
BACKENDS = ("auto", "exact", "pynndescent", "faiss")

# ---------------------------------------------------------------------------
# "auto" backend rule, from benchmarks/bench_knn.py on a shared 2-core machine
# (see benchmarks/results/bench_knn.md and docs/user_guide/knn_detector.rst;
# the 2,000,000 threshold is an extrapolation from those figures).
# Below _AUTO_ANN_MIN_REF reference samples no pynndescent index is built: an
# exact brute-force pass over the references was faster than pynndescent's
# build alone at every size measured.  Above it the index is built in fit and
# used for query batches of at least _AUTO_ANN_MIN_QUERIES rows; smaller
# batches (single queries) still go through the exact search.
_AUTO_ANN_MIN_REF = 2_000_000
_AUTO_ANN_MIN_QUERIES = 64
# faiss is never chosen by "auto": benchmarks/bench_knn.py measured its flat
# search slower than the own exact search at 50,000 x 64 and 1,000,000 x 256
# with k = 1000 on this project's 2-core machine (also single-threaded: the
# bare IndexFlatL2 search took 3.6x the exact search's CPU time), see
# benchmarks/results/bench_knn.md.


#: numpydoc text of the search parameters, shared by every estimator that searches
SEARCH_PARAMS_DOC = """\
    backend : {"auto", "exact", "pynndescent", "faiss"}, default="auto"
        Neighbour search (:mod:`sklearn_advdet.search`). ``"exact"``: this
        package's brute force (a screening GEMM per tile of at most 2^21
        query x reference entries with a rigorous rounding-error window,
        then exact float64 distances of the candidates; memory bounded
        whatever the reference size; threads over query chunks).
        ``"pynndescent"``: an approximate NN-descent graph seeded with
        ``random_state``. ``"faiss"`` (optional ``faiss`` extra): a faiss
        index in float32, exhaustive (``"flat"``, the default: the exact
        neighbours up to float32 rounding of near-ties) or approximate
        (``"ivf"``, ``"hnsw"``); it holds a float32 copy of the references.
        The flat index only screens: its candidates are re-ranked exactly, so
        it returns the exact search's answer. ``"auto"``: the exact search below 2,000,000
        references; above, a pynndescent graph for query batches of at
        least 64 rows and the exact search for smaller batches; never faiss
        (slower than the exact search where measured). The measurements
        behind the rule are in ``benchmarks/results/bench_knn.md`` and the
        kNN user guide.
    backend_params : dict, default=None
        Settings of the backend. pynndescent: ``"epsilon"`` (query search
        breadth, default 0.2) and any ``NNDescent`` argument (``n_neighbors``
        of the graph, default 30, ``n_trees``, ...). faiss: ``"index"``
        (``"flat"``, ``"ivf"`` or ``"hnsw"``), ``"nlist"`` (default
        ``min(sqrt(n_ref), n_ref / 39)``) and ``"nprobe"`` (default 16) for
        IVF, ``"M"`` (32), ``"efConstruction"`` (40) and ``"efSearch"``
        (default ``max(2 k, 64)``) for HNSW. ``backend="exact"`` takes none.
    n_jobs : int, default=None
        Threads of the search. ``None``: the exact search and faiss (its
        OpenMP pool, set around each call and restored) use as many threads
        as the BLAS thread pool has (limit it with
        ``threadpoolctl.threadpool_limits``), pynndescent its own default.
"""


def deterministic_backend(backend, params=None):
    """Whether ``backend`` (with ``params``) gives the same neighbours on every fit."""
    if backend == "faiss":
        return (params or {}).get("index", "flat") != "hnsw"
    return backend in ("exact", "auto")


def resolve_backend(backend, n_ref):
    """The concrete backend that ``backend`` means for ``n_ref`` references.

    Parameters
    ----------
    backend : str
        One of :data:`BACKENDS`.
    n_ref : int
        Number of reference rows.

    Returns
    -------
    str
        ``"exact"``, ``"pynndescent"`` or ``"faiss"`` (``"auto"`` resolved).
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown search backend {backend!r}: pick one of {list(BACKENDS)}"
        )
    if backend != "auto":
        return backend
    return "pynndescent" if n_ref >= _AUTO_ANN_MIN_REF else "exact"


def make_index(backend, data, *, n_jobs=None, random_state=None, params=None):
    """Build a k-NN index of the reference rows ``data``.

    Parameters
    ----------
    backend : {"auto", "exact", "pynndescent", "faiss"}
        ``"exact"``: :class:`~sklearn_advdet.search.exact.ExactIndex`;
        ``"pynndescent"``: :class:`~sklearn_advdet.search.pynndescent.PynndescentIndex`;
        ``"faiss"``: :class:`~sklearn_advdet.search.faiss.FaissIndex`;
        ``"auto"``: the exact search below 2,000,000 references, above it a
        pynndescent graph for query batches of at least 64 rows and the exact
        search for smaller batches.
    data : ndarray of shape (n_ref, n_dims)
        Reference rows (float32 or float64, C-contiguous), kept by reference.
    n_jobs : int, default=None
        Threads of the search (see the backends).
    random_state : int, RandomState instance or None, default=None
        Seeds an approximate index's build (one draw, only for such a backend).
    params : dict, default=None
        Settings of the approximate backend (ignored when ``"auto"`` picks
        the exact search; refused by ``backend="exact"``).

    Returns
    -------
    index
        With ``.query(Q, k) -> (distances, indices)`` and ``.backend`` (the
        concrete backend name).
    """
    from .exact import ExactIndex

    name = resolve_backend(backend, data.shape[0])
    if params is not None and not isinstance(params, dict):
        raise TypeError(f"backend_params must be a dict or None, got {params!r}")
    if name == "exact":
        if params and backend == "exact":
            raise ValueError(
                f"backend='exact' takes no backend_params, got {sorted(params)}: "
                "drop them or pick an approximate backend"
            )
        return ExactIndex(data, n_jobs)
    seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    if name == "faiss":
        from .faiss import FaissFlatScreen, FaissIndex, check_faiss_params

        if check_faiss_params(params)["index"] != "flat":
            return FaissIndex(data, seed, n_jobs, params)
        index = ExactIndex(data, n_jobs, screen=FaissFlatScreen)
        index.backend = "faiss"
        return index
    from .pynndescent import PynndescentIndex

    index = PynndescentIndex(data, seed, n_jobs, params)
    if backend == "auto":
        return _AutoIndex(index, ExactIndex(data, n_jobs))
    return index


class _AutoIndex:
    """``"auto"`` above the size rule: approximate for batches, exact for a few rows."""

    def __init__(self, approximate, exact):
        self.approximate = approximate
        self.exact = exact
        self.backend = approximate.backend
        self.data = exact.data

    def query(self, Q, k):
        if Q.shape[0] < _AUTO_ANN_MIN_QUERIES:
            return self.exact.query(Q, k)
        return self.approximate.query(Q, k)
