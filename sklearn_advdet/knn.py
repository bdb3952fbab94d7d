"""kNN class-score detection (Carrara et al., MTAP 2018) and a threshold detector.

The DNN's prediction for an image is trusted as much as the image's deep
features agree with it: the hidden-layer features of the image are searched
among the features of the classifier's *training set* (the reference set),
and the score of the class ``c`` that the DNN predicted is

.. math::

    s = \\frac{\\sum_{i=1}^{k} w_i [c_i = c]}{\\sum_{i=1}^{k} w_i}

over the ``k`` nearest reference samples, with ``w_i = 1`` (kNN), ``1 / i``
(W-kNN, ``i`` the 1-based rank) or ``1 / d_i^2`` (DW-kNN). A low score means
"do not trust this prediction" — a possible adversarial example or a natural
error.

:class:`KNNClassScorer` turns X (pooled layer features followed by the
logits block, see :mod:`sklearn_advdet._layout`) into one score per selected
layer; :class:`ScoreThresholdDetector` thresholds one score column at the
equal-error rate or at a target false-positive rate; :func:`knn_evaluation`
reports the paper's figures.
"""

import math
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from ._layout import FeatureLayout, check_layout
from ._parallel import n_threads_for, thread_map
from ._rounding import safe_gamma

__all__ = [
    "KNNClassScorer",
    "ScoreThresholdDetector",
    "knn_class_scores",
    "knn_evaluation",
]

# ---------------------------------------------------------------------------
# "auto" backend rule, from benchmarks/bench_knn.py on a shared 2-core machine
# (see benchmarks/results/bench_knn.md and the KNNClassScorer docstring;
# the 2,000,000 threshold is an extrapolation from those figures).
# Below _AUTO_ANN_MIN_REF reference samples no pynndescent index is built: an
# exact brute-force pass over the references was faster than pynndescent's
# build alone at every size measured.  Above it the index is built in fit and
# used for query batches of at least _AUTO_ANN_MIN_QUERIES rows; smaller
# batches (single queries) still go through the exact search.
_AUTO_ANN_MIN_REF = 2_000_000
_AUTO_ANN_MIN_QUERIES = 64

# squared distances below this fraction of |q|^2 + |r|^2 may be dominated by
# the cancellation of the |q|^2 - 2 q.r + |r|^2 expansion; they are recomputed
# from the coordinates (which gives an exact 0 for identical vectors).
_RECOMPUTE_RTOL = 1e-6
# exact search: references whose largest squared norm exceeds this many times
# the largest one about their mean are screened as a centred copy
_CENTRE_RATIO = 4.0
# exact search: a screening tile holds at most this many query x reference
# entries (8 MiB in float32, plus 16 MiB of argpartition indices), and a
# thread takes at most this many queries at a time.  Measured in
# benchmarks/bench_knn.py's setting: 2^21 x 128 was as fast as 2^22 x 256
# at 50,000 x 64 and 1,000,000 x 256 with 40-45 % less extra memory.
_SCREEN_ENTRIES = 2**21
_QUERY_CHUNK = 128


# ---------------------------------------------------------------- scoring core
def knn_class_scores(neighbor_labels, neighbor_distances, predicted, weights="uniform"):
    """Weighted share of the neighbours that vote for the predicted class.

    Parameters
    ----------
    neighbor_labels : array-like of shape (n_queries, k)
        Class labels of the ``k`` nearest reference samples of each query,
        nearest first.
    neighbor_distances : array-like of shape (n_queries, k)
        Their Euclidean distances (non-decreasing along each row). Only used
        when ``weights="distance"``.
    predicted : array-like of shape (n_queries,)
        Class the DNN predicted for each query.
    weights : {"uniform", "rank", "distance"}, default="uniform"
        ``w_i = 1`` (kNN), ``1 / i`` with ``i`` the 1-based rank (W-kNN) or
        ``1 / d_i^2`` (DW-kNN). Under ``"distance"``, when some neighbours lie
        at distance exactly 0 they take all the weight, shared equally (the
        limit of ``1 / d^2`` as those distances go to 0); the others get none.

    Returns
    -------
    scores : ndarray of shape (n_queries,)
        Values in [0, 1]; 0 when no neighbour has the predicted class (in
        particular when that class is absent from the reference set).

    Examples
    --------
    >>> from sklearn_advdet.knn import knn_class_scores
    >>> labels = [[3, 3, 1, 3]]
    >>> dist = [[1.0, 2.0, 2.0, 4.0]]
    >>> knn_class_scores(labels, dist, [3], "uniform")
    array([0.75])
    >>> knn_class_scores(labels, dist, [3], "rank")  # (1 + 1/2 + 1/4) / (1 + 1/2 + 1/3 + 1/4)
    array([0.84])
    >>> knn_class_scores(labels, dist, [3], "distance")  # (1 + 1/4 + 1/16) / (1 + 1/4 + 1/4 + 1/16)
    array([0.84])
    """
    labels = np.asarray(neighbor_labels)
    predicted = np.asarray(predicted)
    if labels.ndim != 2 or predicted.shape != labels.shape[:1]:
        raise ValueError(
            "neighbor_labels must be (n_queries, k) and predicted (n_queries,), got "
            f"{labels.shape} and {predicted.shape}"
        )
    match = labels == predicted[:, None]
    if labels.shape[1] == 0:
        return np.zeros(labels.shape[0])
    w = _neighbor_weights(labels.shape, neighbor_distances, weights)
    return (w * match).sum(axis=1) / w.sum(axis=1)


def _neighbor_weights(shape, neighbor_distances, weights):
    """(n_queries, k) weights of the neighbours, nearest first."""
    n, k = shape
    if weights == "uniform":
        return np.ones(shape)
    if weights == "rank":
        return np.broadcast_to(1.0 / np.arange(1, k + 1, dtype=float), shape)
    if weights == "distance":
        d = np.asarray(neighbor_distances, dtype=float)
        if d.shape != tuple(shape):
            raise ValueError(
                f"neighbor_distances has shape {d.shape}, expected {tuple(shape)}"
            )
        zero = d == 0.0
        has_zero = zero.any(axis=1)
        with np.errstate(divide="ignore"):
            w = 1.0 / np.square(d)
        w[has_zero] = zero[has_zero]
        return w
    raise ValueError(
        f"weights must be 'uniform', 'rank' or 'distance', got {weights!r}"
    )


def _majority_scores(labels, dist, n_classes, weights):
    """Score of the neighbours' own weighted-majority class (ties: lowest class)."""
    w = _neighbor_weights(labels.shape, dist, weights)
    votes = np.zeros((labels.shape[0], n_classes))
    for c in range(n_classes):
        votes[:, c] = (w * (labels == c)).sum(axis=1)
    return votes.max(axis=1) / w.sum(axis=1)


def _sorted_neighbors(Q, R, r_sqnorm, idx, dist):
    """Make distances trustworthy and order each row by (distance, index).

    Squared distances small enough to suffer from cancellation are recomputed
    from the coordinates in float64; the rest are kept. Rows are then sorted
    by distance, ties broken by reference index.
    """
    dist = np.asarray(dist, dtype=np.float64)
    idx = np.asarray(idx, dtype=np.intp)
    q_sqnorm = np.einsum("ij,ij->i", Q, Q, dtype=np.float64)
    tol = _RECOMPUTE_RTOL * (q_sqnorm[:, None] + r_sqnorm[idx])
    rows, cols = np.nonzero(np.square(dist) <= tol)
    if rows.size:
        diff = R[idx[rows, cols]].astype(np.float64) - Q[rows].astype(np.float64)
        dist = dist.copy()
        dist[rows, cols] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    order = np.lexsort((idx, dist), axis=-1)
    return (
        np.take_along_axis(idx, order, axis=1),
        np.take_along_axis(dist, order, axis=1),
    )


def _exact_row(q, R, sqnorm, k):
    """k nearest references of one query, exact float64, ties by index.

    A GEMV in the data's precision finds every reference that can be among
    the k nearest (within a rounding-error bound of the k-th value); only
    those are recomputed exactly from the coordinates.
    """
    q64 = q.astype(np.float64)
    qn = float(q64 @ q64)
    approx = sqnorm - 2.0 * (R @ q.astype(R.dtype)).astype(np.float64) + qn
    eps = np.finfo(R.dtype).eps
    bound = 4.0 * R.shape[1] * eps * (np.sqrt(sqnorm.max() * qn) + sqnorm.max() + qn) + 1e-300
    kth = np.partition(approx, k - 1)[k - 1]
    cand = np.flatnonzero(approx <= kth + 2.0 * bound)
    diff = R[cand].astype(np.float64) - q64
    d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    order = np.lexsort((cand, d))[:k]
    return cand[order], d[order]


class _ExactIndex:
    """Exact brute-force k-NN: screening GEMM, then exact re-ranking.

    For a chunk of queries and a block of references, one GEMM in the data's
    precision gives ``v = |r|^2 - 2 q.r`` (the squared distance minus the
    query's constant ``|q|^2``); ``argpartition`` keeps the ``M = k + k/4``
    (at least ``k + 32``) smallest per query, merged block by block, so a
    screening tile never exceeds ``_SCREEN_ENTRIES`` entries (memory bounded
    whatever the reference size).  The error of every ``v`` is at most
    ``b = gamma_{d+2} (max|r|^2 + 2 |q| max|r|)`` (with the margins of
    :func:`._rounding.safe_gamma`: the GEMM, the stored squared norms, the
    queries cast to the data's precision), so
    the true k nearest all lie within ``2 b`` of the k-th smallest ``v``.
    Those candidates (usually ``k`` plus a few) get exact float64 distances
    from coordinate differences and are ordered by (distance, reference
    index).  A query with ``M`` candidates inside the window (too many ties
    for the margin) is redone by a full exact scan (:func:`_exact_row`).
    References far from the origin are screened as a centred copy (memory:
    one more copy of the references), which keeps the window narrow.

    Query chunks run on ``n_jobs`` threads (single-threaded BLAS each; by
    default as many as the BLAS thread pool has, see :mod:`._parallel`).
    ``benchmarks/bench_knn.py`` measured this faster than scikit-learn's
    ``NearestNeighbors(algorithm="brute")``, whose float64 reduction keeps a
    heap of ``k`` per query.
    """

    def __init__(self, data, n_jobs=None):
        self.data = data
        self.sqnorm = np.einsum("ij,ij->i", data, data, dtype=np.float64)
        self.n_jobs = n_jobs
        # The screening window grows with the largest norm: references far
        # from the origin (their mean dwarfs their spread) are screened as a
        # centred copy, which narrows it (distances do not change).
        self._shift, screen = None, data
        if data.shape[0]:
            # any centre gives the same distances: the mean by one BLAS GEMV,
            # and the centred norms from |x|^2 - 2 x.mu + |mu|^2 (only to
            # decide; their rounding does not matter)
            mu = np.ones(data.shape[0], dtype=data.dtype) @ data / data.dtype.type(data.shape[0])
            centred = self.sqnorm - 2.0 * (data @ mu) + float(mu @ mu)
            if self.sqnorm.max() > _CENTRE_RATIO * max(float(centred.max()), 0.0):
                self._shift = mu
                screen = data - mu
        self._screen_data = screen
        if screen is data:
            sq = self.sqnorm
        else:
            sq = np.einsum("ij,ij->i", screen, screen, dtype=np.float64)
        self._sq = sq.astype(data.dtype)
        self._rmax = math.sqrt(float(sq.max())) if data.shape[0] else 0.0

    def query(self, Q, k):
        n_ref = self.data.shape[0]
        k = min(k, n_ref)
        margin = min(n_ref, k + max(32, k // 4))
        n_threads = n_threads_for(self.n_jobs)
        rows = max(1, min(_QUERY_CHUNK, -(-Q.shape[0] // n_threads)))

        def chunk(start):
            return self._query_chunk(Q[start : start + rows], k, margin)

        parts = list(thread_map(chunk, range(0, Q.shape[0], rows), n_threads))
        if not parts:
            return np.empty((0, k), dtype=np.intp), np.empty((0, k))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _screen(self, Qw, M):
        """The M smallest ``|r|^2 - 2 q.r`` per query (values, indices), unsorted."""
        R = self._screen_data
        n_ref = R.shape[0]
        block = min(n_ref, max(2 * M, _SCREEN_ENTRIES // max(Qw.shape[0], 1)))
        Qm2 = Qw * Qw.dtype.type(-2.0)  # exact: a power-of-2 scaling
        best_v = best_i = None
        for start in range(0, n_ref, block):
            V = Qm2 @ R[start : start + block].T
            V += self._sq[start : start + block]
            vals, idx = _smallest(V, M)
            idx = idx + start
            if best_v is not None:
                vals = np.concatenate([best_v, vals], axis=1)
                idx = np.concatenate([best_i, idx], axis=1)
                vals, keep = _smallest(vals, M)
                idx = _take_rows(idx, keep)
            best_v, best_i = vals, idx
        return best_v, best_i

    def _query_chunk(self, Q, k, M):
        R = self.data
        n_ref, d = R.shape
        Qw = np.asarray(Q, dtype=R.dtype)
        if self._shift is not None:
            Qw = Qw - self._shift
        vals, cand = self._screen(Qw, M)
        order = np.argsort(vals, axis=1)
        vals = _take_rows(vals, order).astype(np.float64)
        cand = _take_rows(cand, order)
        q_norm = np.sqrt(np.einsum("ij,ij->i", Qw, Qw, dtype=np.float64))
        bound = safe_gamma(d + 2, R.dtype) * (self._rmax**2 + 2.0 * q_norm * self._rmax)
        inside = (vals <= (vals[:, k - 1] + 2.0 * bound)[:, None]).sum(axis=1)
        width = int(inside.max())
        cand = cand[:, :width]
        # exact float64 distances of the candidates, a few queries at a time
        Q64 = np.asarray(Q, dtype=np.float64)
        dist = np.empty(cand.shape)
        step = max(1, 2**20 // max(width * d, 1))
        for a in range(0, len(Q), step):
            diff = np.subtract(R[cand[a : a + step]], Q64[a : a + step, None, :], dtype=np.float64)
            dist[a : a + step] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        order = np.argsort(dist, axis=1)[:, : k + 1]
        idx, out = _take_rows(cand, order), _take_rows(dist, order)
        # equal distances among the kept: order those rows by (distance, index)
        tied = np.flatnonzero((out[:, 1:] == out[:, :-1]).any(axis=1))
        for r in tied:
            o = np.lexsort((cand[r], dist[r]))[: k + 1]
            idx[r], out[r] = cand[r, o], dist[r, o]
        idx, out = idx[:, :k], out[:, :k]
        # a window filled to the margin may hide candidates: full exact scan
        if M < n_ref:
            for r in np.flatnonzero(inside >= M):
                idx[r], out[r] = _exact_row(Q[r], R, self.sqnorm, k)
        return idx, out


def _smallest(V, M):
    """The M smallest entries of every row of V (values, column indices), unsorted."""
    if V.shape[1] <= M:
        return V, np.broadcast_to(np.arange(V.shape[1]), V.shape)
    part = np.argpartition(V, M - 1, axis=1)[:, :M]
    return _take_rows(V, part), part


def _take_rows(A, idx):
    """``np.take_along_axis(A, idx, axis=1)`` through flat indices (faster)."""
    flat = idx + (np.arange(A.shape[0]) * A.shape[1])[:, None]
    return np.take(A, flat) if A.flags.c_contiguous else np.take(np.ascontiguousarray(A), flat)


class _PynndescentIndex:
    """pynndescent NNDescent graph; imported lazily (numba compiles on first use)."""

    _QUERY_KEYS = ("epsilon",)

    def __init__(self, data, random_state, n_jobs=None, params=None):
        try:
            from pynndescent import NNDescent
        except ImportError as exc:  # pragma: no cover - pynndescent is a dependency
            raise ImportError(
                "backend='pynndescent' needs the pynndescent package: "
                "pip install pynndescent, or use backend='exact'"
            ) from exc
        params = dict(params or {})
        self.epsilon = float(params.pop("epsilon", 0.2))
        params.setdefault("n_neighbors", 30)
        self.data = data
        self.sqnorm = np.einsum("ij,ij->i", data, data, dtype=np.float64)
        self.index = NNDescent(
            data,
            metric="euclidean",
            random_state=random_state,
            n_jobs=n_jobs,
            **params,
        )
        self.index.prepare()

    def query(self, Q, k):
        idx, dist = self.index.query(Q, k=k, epsilon=self.epsilon)
        if not (np.all(np.isfinite(dist)) and np.all(idx >= 0)):
            raise RuntimeError(
                "pynndescent returned missing or non-finite neighbours "
                f"(k={k}, {self.data.shape[0]} references): raise "
                "backend_params['epsilon'] or use backend='exact'"
            )
        return _sorted_neighbors(Q, self.data, self.sqnorm, idx, dist)


def _check_class_labels(y, n_logits):
    """y must hold the classifier's class indices (logit columns) 0..C-1."""
    y = column_or_1d(y, warn=True)
    if y.dtype.kind in "fc":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(
                "y must hold the classifier's class indices (the logit column of "
                "each reference sample's class), got non-integer values"
            )
        y = y.astype(np.int64)
    elif y.dtype.kind not in "iub":
        raise ValueError(
            "y must hold the classifier's class indices 0..C-1 (the logit column "
            f"of each class), got values of dtype {y.dtype}: encode the labels "
            "in the order of the classifier's outputs"
        )
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"y holds a negative class index ({y.min()}): pass 0..C-1")
    if n_logits is not None and y.size and y.max() >= n_logits:
        raise ValueError(
            f"y holds class index {y.max()} but the logits block has {n_logits} "
            "columns: the reference labels must be the classifier's class indices "
            "(0..n_logits-1)"
        )
    return y


# ------------------------------------------------------------------- scorer
class KNNClassScorer(TransformerMixin, BaseEstimator):
    """kNN score of the DNN-predicted class, per layer (Carrara et al., MTAP 2018).

    Fitted on the classifier's *training-set* features (the reference set)
    with their class labels; transforms any set of images to the score of the
    class the DNN predicted for each of them (argmax of the logits block of
    ``X``), one column per selected layer. Low score = the neighbours in that
    layer disagree with the prediction: do not trust it.

    Parameters
    ----------
    layer_sizes : FeatureLayout or "single", default=None
        Column layout of ``X`` (the package's one rule, see
        :func:`~sklearn_advdet._layout.check_layout`): the layout must have
        the logits block (``FeatureLayout(sizes, has_logits=True)``); a plain
        tuple means hidden layers only and so raises, naming the fix, as does None.
        ``"single"`` is an explicit fallback for ``X`` without logits: all
        columns are one hidden layer and, the DNN's prediction being unknown, the score is that of the
        neighbours' own weighted-majority class (the kNN's confidence; ties go
        to the first class); ``y`` may then hold any labels. The paper's
        method needs the logits: pass the layout.
    layers : "all", int, str or list of them, default=-1
        Hidden layers to score, by index or name; one output column each.
        The default, the last hidden layer, is the paper's set-up (one layer
        at a time); pass ``"all"`` for a per-layer score trajectory.
    n_neighbors : int, default=1000
        ``k`` (the paper's value). When the reference set is smaller, all of
        it is used (no warning); the effective value is ``n_neighbors_``.
    weights : {"uniform", "rank", "distance"}, default="uniform"
        ``w_i = 1`` (kNN), ``1 / i`` (W-kNN, ``i`` the 1-based rank) or
        ``1 / d_i^2`` (DW-kNN). See :func:`knn_class_scores` for a distance of
        exactly 0 (such neighbours take all the weight, shared equally).
    preprocessing : {None, "l2", "pca"}, default=None
        Per-layer preprocessing, fitted on the reference features of that
        layer: none, L2 normalisation of each row (zero rows stay zero), or
        PCA to ``n_components`` dimensions.
    n_components : int, default=256
        PCA dimensions, capped at the layer width and at ``n_ref - 1``.
    whiten : bool, default=True
        Whether the PCA whitens (the paper's setting).
    backend : {"auto", "exact", "pynndescent"}, default="auto"
        Neighbour search. ``"exact"`` is this package's brute force: one
        GEMM per tile (at most 2^21 query x reference entries, so memory is
        bounded whatever the reference size) screens the candidates in the
        data's precision with a rigorous rounding-error window, and the
        candidates are re-ranked with exact float64 distances; threads over
        query chunks. ``"pynndescent"`` builds an approximate NN-descent graph
        (seeded with ``random_state``) and queries it with ``k``. ``"auto"``
        builds the pynndescent index only for reference sets of at least
        2,000,000 samples and, when built, uses it only for query batches of
        at least 64 rows (single queries stay exact). Measured with k=1000 on
        this project's 2-core machine (``benchmarks/results/bench_knn.md``):
        on the real ResNet-20 CIFAR-10 features (50,000 x 64) the exact
        search answered 1,000 queries in 0.22-0.31 s (scikit-learn's
        ``NearestNeighbors(algorithm="brute")``: 0.49 s) at recall 1, while
        pynndescent took 18 s to build (plus about 26 s of numba
        compilation once per process) and then 0.89 s for the same 1,000
        queries: it never pays its build back. At 1,000,000 x 256
        (synthetic clusters) the exact search took 0.5 s to build and
        4.6 s per 1,000 queries (scikit-learn: 7.1 s) and 29 ms per single
        query (145 ms);
        pynndescent was not run at that size (its build grows faster than
        linearly). The 2,000,000 threshold is therefore an extrapolation:
        below it, "auto" is the exact search.
    backend_params : dict, default=None
        Extra pynndescent settings: ``"epsilon"`` (query search breadth,
        default 0.2) and any ``NNDescent`` argument (``n_neighbors`` of the
        graph, default 30, ``n_trees``, ...).
    n_jobs : int, default=None
        Threads for the exact search (over query chunks) and for the
        pynndescent build/query.  ``None``: the exact search uses as many
        threads as the BLAS thread pool has (limit it with
        ``threadpoolctl.threadpool_limits``), pynndescent its own default.
    random_state : int, RandomState instance or None, default=None
        Seeds the pynndescent build and a randomized PCA solver.

    Attributes
    ----------
    layout_ : FeatureLayout
        Layout of ``X`` (with the logits block).
    layers_ : list of int
        Indices of the scored hidden layers.
    n_neighbors_ : int
        Effective ``k``: ``min(n_neighbors, n_ref)``.
    backend_ : str
        ``"exact"`` or ``"pynndescent"``: index built in fit.
    classes_ : ndarray
        Class indices present in the reference set (labels, without logits).
    n_classes_ : int
        Width of the logits block (number of classes of the DNN); without
        logits, the number of reference classes.
    preprocessors_ : list
        Fitted per-layer preprocessing (``None``, ``"l2"`` or a ``PCA``).
    n_features_in_ : int
        Number of columns of ``X``.

    Notes
    -----
    Defined behaviour in corner cases:

    - *k larger than the reference set*: all references are used.
    - *Ties*: neighbours are ordered by distance, then by reference index
      (the exact backend also breaks a tie at the k-th place that way: the
      k kept are the first k in that order), so W-kNN's ranks are
      deterministic.
    - *Zero distance under DW-kNN*: the neighbours at distance 0 share all
      the weight.  The exact backend's distances come from float64
      coordinate differences (pynndescent's: those small enough to be spoilt
      by cancellation are recomputed that way), so an exact duplicate gives
      0.
    - *Predicted class absent from the reference set* (a logit column with
      no reference sample): no neighbour can vote for it, the score is 0.
    - The logits decide the predicted class only; they are never searched.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet import FeatureLayout, KNNClassScorer
    >>> rng = np.random.RandomState(0)
    >>> y_ref = np.repeat([0, 1], 50)
    >>> feats = rng.normal(size=(100, 4)) + 3 * y_ref[:, None]
    >>> X_ref = np.hstack([feats, np.eye(2)[y_ref]])  # features | logits
    >>> layout = FeatureLayout([4, 2], has_logits=True)
    >>> scorer = KNNClassScorer(layer_sizes=layout, n_neighbors=10).fit(X_ref, y_ref)
    >>> X = np.array([[3., 3, 3, 3, 0, 1],    # near class 1, predicted 1
    ...               [3., 3, 3, 3, 1, 0]])   # near class 1, predicted 0
    >>> scorer.transform(X)
    array([[1.],
           [0.]])
    >>> scorer.get_feature_names_out()
    array(['knn_score_layer0'], dtype=object)
    """

    _parameter_constraints = {
        "layer_sizes": [FeatureLayout, "array-like", StrOptions({"single"}), None],
        "layers": [StrOptions({"all"}), Integral, str, list, tuple],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "weights": [StrOptions({"uniform", "rank", "distance"})],
        "preprocessing": [StrOptions({"l2", "pca"}), None],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "whiten": ["boolean"],
        "backend": [StrOptions({"auto", "exact", "pynndescent"})],
        "backend_params": [dict, None],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        layer_sizes=None,
        *,
        layers=-1,
        n_neighbors=1000,
        weights="uniform",
        preprocessing=None,
        n_components=256,
        whiten=True,
        backend="auto",
        backend_params=None,
        n_jobs=None,
        random_state=None,
    ):
        self.layer_sizes = layer_sizes
        self.layers = layers
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.preprocessing = preprocessing
        self.n_components = n_components
        self.whiten = whiten
        self.backend = backend
        self.backend_params = backend_params
        self.n_jobs = n_jobs
        self.random_state = random_state

    # ----------------------------------------------------------------- layout
    def _resolve_layout(self, n_features):
        if isinstance(self.layer_sizes, str) and self.layer_sizes == "single":
            return check_layout("single", n_features)
        return check_layout(self.layer_sizes, n_features, need_logits=True,
                            estimator="KNNClassScorer")

    def _preprocess_fit(self, Z, rng):
        if self.preprocessing is None:
            return None, Z
        if self.preprocessing == "l2":
            return "l2", _l2_normalize(Z)
        n_comp = min(self.n_components, Z.shape[1], max(Z.shape[0] - 1, 1))
        pca = PCA(n_components=n_comp, whiten=self.whiten, random_state=rng)
        Zt = pca.fit_transform(Z)
        if not np.all(np.isfinite(Zt)):
            raise ValueError(
                "PCA whitening produced non-finite values (a component with zero "
                "variance in the reference set): lower n_components, use "
                "whiten=False or preprocessing='l2'"
            )
        return pca, Zt.astype(Z.dtype, copy=False)

    @staticmethod
    def _preprocess_apply(pre, Z):
        if pre is None:
            return Z
        if isinstance(pre, str):  # "l2"
            return _l2_normalize(Z)
        return pre.transform(Z).astype(Z.dtype, copy=False)

    # -------------------------------------------------------------------- fit
    def fit(self, X, y):
        """Index the reference set (the classifier's training-set features).

        Parameters
        ----------
        X : array-like of shape (n_ref, n_features)
            Reference features laid out as ``layer_sizes`` says (logits last;
            the logits are not used in fit).
        y : array-like of shape (n_ref,)
            Class index of every reference sample (its logit column).

        Returns
        -------
        self : KNNClassScorer
        """
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=False)
        layout = self._resolve_layout(X.shape[1])
        if layout.has_logits:
            y = _check_class_labels(y, layout.n_logits)
            classes = np.unique(y)
            n_classes = layout.n_logits
        else:  # no logits: any labels, encoded as 0..C-1
            check_classification_targets(y)
            classes, y = np.unique(y, return_inverse=True)
            n_classes = classes.size
        layers = layout.select(self.layers)
        n_ref = X.shape[0]
        k = min(self.n_neighbors, n_ref)
        rng = check_random_state(self.random_state)
        if self.backend == "auto":
            backend = "pynndescent" if n_ref >= _AUTO_ANN_MIN_REF else "exact"
        else:
            backend = self.backend
        preprocessors, indexes = [], []
        for layer in layers:
            Z = np.ascontiguousarray(X[:, layout.slice_of(layer)])
            pre, Z = self._preprocess_fit(Z, rng)
            Z = np.ascontiguousarray(Z)
            if backend == "pynndescent":
                seed = int(rng.randint(np.iinfo(np.int32).max))
                index = _PynndescentIndex(Z, seed, self.n_jobs, self.backend_params)
            else:
                index = _ExactIndex(Z, self.n_jobs)
            preprocessors.append(pre)
            indexes.append(index)
        self.layout_ = layout
        self.layers_ = layers
        self.n_neighbors_ = int(k)
        self.backend_ = backend
        self.classes_ = classes
        self.n_classes_ = int(n_classes)
        self.preprocessors_ = preprocessors
        self.ref_labels_ = y
        self._indexes = indexes
        if self.backend == "auto" and backend == "pynndescent":
            self._exact_fallback = [_ExactIndex(ix.data, self.n_jobs) for ix in indexes]
        else:
            self._exact_fallback = None
        return self

    # ------------------------------------------------------------- transform
    def kneighbors(self, X, layer=None):
        """Nearest reference samples of each row of ``X`` in one scored layer.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        layer : int or str, default=None
            A hidden layer among the scored ones (default: the first scored).

        Returns
        -------
        distances : ndarray of shape (n_samples, `n_neighbors_`)
        indices : ndarray of shape (n_samples, `n_neighbors_`)
            Reference row indices, ordered by (distance, index).
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        pos = 0
        if layer is not None:
            li = self.layout_._block_index(layer)
            if li not in self.layers_:
                raise ValueError(
                    f"layer {layer!r} is not scored by this fitted scorer "
                    f"(layers_={self.layers_}): refit with it in `layers`"
                )
            pos = self.layers_.index(li)
        idx, dist = self._query(X, pos)
        return dist, idx

    def _query(self, X, pos):
        layer = self.layers_[pos]
        Z = np.ascontiguousarray(X[:, self.layout_.slice_of(layer)])
        Z = np.ascontiguousarray(self._preprocess_apply(self.preprocessors_[pos], Z))
        index = self._indexes[pos]
        if self._exact_fallback is not None and Z.shape[0] < _AUTO_ANN_MIN_QUERIES:
            index = self._exact_fallback[pos]
        return index.query(Z, self.n_neighbors_)

    def transform(self, X):
        """Score the DNN-predicted class of every row in every selected layer.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Same layout as in fit; the argmax of the logits block is the
            predicted class (the first maximum on a tie). Without logits
            (``layer_sizes="single"``) see ``layer_sizes``.

        Returns
        -------
        scores : ndarray of shape (n_samples, n_selected_layers)
            Values in [0, 1]; low = do not trust the prediction.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        out = np.empty((X.shape[0], len(self.layers_)), dtype=np.float64)
        if self.layout_.has_logits:
            predicted = np.argmax(X[:, self.layout_.logits_slice], axis=1)
        for pos in range(len(self.layers_)):
            idx, dist = self._query(X, pos)
            if self.layout_.has_logits:
                out[:, pos] = knn_class_scores(
                    self.ref_labels_[idx], dist, predicted, self.weights
                )
            else:
                out[:, pos] = _majority_scores(
                    self.ref_labels_[idx], dist, self.n_classes_, self.weights
                )
        return out

    def get_feature_names_out(self, input_features=None):
        """``knn_score_<layer name>`` for every scored layer."""
        check_is_fitted(self)
        names = self.layout_.layer_names
        return np.asarray(
            [f"knn_score_{names[i]}" for i in self.layers_], dtype=object
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.non_deterministic = self.backend == "pynndescent"
        return tags


def _l2_normalize(Z):
    norms = np.sqrt(np.einsum("ij,ij->i", Z, Z, dtype=np.float64))
    norms[norms == 0] = 1.0
    return (Z / norms[:, None]).astype(Z.dtype, copy=False)


# ------------------------------------------------------------ threshold detector
class ScoreThresholdDetector(ClassifierMixin, BaseEstimator):
    """Adversarial / authentic decision by thresholding one score column.

    ``decision_function`` is higher for "more likely adversarial": with
    ``direction="low"`` (kNN class scores, where a low score means "do not
    trust the prediction") it is ``-score - threshold_``, with
    ``direction="high"`` it is ``score - threshold_``; ``predict`` says
    adversarial (the larger class label, normally 1) where the signed score
    is ``>= threshold_``.
    The threshold is chosen on the data given to ``fit`` (validation data):
    at the equal-error rate (:func:`sklearn_advdet.metrics.eer_threshold`) or
    at the lowest threshold whose false-positive rate on the authentic rows
    does not exceed ``target_fpr``.

    No ``predict_proba``: a thresholded score is not a probability; wrap the
    detector in ``CalibratedClassifierCV`` (it uses ``decision_function``) if
    probabilities are needed.

    Parameters
    ----------
    column : int, default=0
        Column of ``X`` holding the score (e.g. one layer of
        :class:`KNNClassScorer`'s output).
    direction : {"low", "high"}, default="low"
        Whether a low (kNN class scores) or a high score means adversarial.
    method : {"eer", "fpr"}, default="eer"
        How the threshold is chosen.
    target_fpr : float, default=0.05
        Largest allowed false-positive rate on the authentic rows of the fit
        data, for ``method="fpr"``.

    Attributes
    ----------
    threshold_ : float
        Threshold on the signed score (``-score`` for ``direction="low"``).
    classes_ : ndarray of shape (2,)
        ``[authentic, adversarial]`` labels (sorted; normally ``[0, 1]``).
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet import ScoreThresholdDetector
    >>> scores = np.array([[0.9], [0.8], [0.7], [0.2], [0.3], [0.75]])
    >>> y = np.array([0, 0, 0, 1, 1, 1])
    >>> det = ScoreThresholdDetector().fit(scores, y)
    >>> det.threshold_
    -0.7
    >>> det.predict([[0.1], [0.95]])
    array([1, 0])
    """

    _parameter_constraints = {
        "column": [Interval(Integral, 0, None, closed="left")],
        "direction": [StrOptions({"low", "high"})],
        "method": [StrOptions({"eer", "fpr"})],
        "target_fpr": [Interval(Real, 0, 1, closed="both")],
    }

    def __init__(self, column=0, direction="low", method="eer", target_fpr=0.05):
        self.column = column
        self.direction = direction
        self.method = method
        self.target_fpr = target_fpr

    def _signed(self, X):
        if self.column >= X.shape[1]:
            raise ValueError(
                f"column={self.column} but X has {X.shape[1]} column(s): pick the "
                "score column to threshold"
            )
        s = X[:, self.column].astype(np.float64)
        return -s if self.direction == "low" else s

    def fit(self, X, y):
        """Choose the threshold on validation scores ``X`` with labels ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_scores)
        y : array-like of shape (n_samples,)
            Two classes; the larger label is "adversarial".

        Returns
        -------
        self : ScoreThresholdDetector
        """
        from .metrics import eer_threshold

        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        target_type = type_of_target(y, input_name="y", raise_unknown=True)
        classes = np.unique(y)
        if classes.size < 2:
            raise ValueError(
                "y holds 1 class: ScoreThresholdDetector needs both authentic and "
                "adversarial rows to choose its threshold"
            )
        if target_type != "binary":
            raise ValueError(
                "Only binary classification is supported. The type of the target "
                f"is {target_type}: y must hold exactly two classes (authentic, "
                "adversarial)"
            )
        s = self._signed(X)
        y01 = (y == classes[1]).astype(int)
        if self.method == "eer":
            threshold = eer_threshold(y01, s)[0]
        else:
            s0 = np.sort(s[y01 == 0])[::-1]
            m = int(np.floor(self.target_fpr * s0.size + 1e-9))
            if m >= s0.size:
                threshold = float(s.min())
            else:
                # strictly above the (m+1)-th largest authentic score: at most
                # m authentic rows reach the threshold
                threshold = float(np.nextafter(s0[m], np.inf))
        self.threshold_ = float(threshold)
        self.classes_ = classes
        return self

    def decision_function(self, X):
        """Signed score minus threshold: ``> 0`` means adversarial.

        The threshold is inclusive (signed score ``>= threshold_`` is
        adversarial), so the value subtracted is the float just below
        ``threshold_``: a score exactly at the threshold gives a tiny
        positive value, as scikit-learn's ``decision_function > 0`` rule needs.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self._signed(X) - np.nextafter(self.threshold_, -np.inf)

    def predict(self, X):
        """Class label: ``classes_[1]`` (adversarial) where the score reaches the threshold."""
        d = self.decision_function(X)
        return self.classes_[(d > 0).astype(int)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags


# ----------------------------------------------------------------- evaluation
def knn_evaluation(scores, y, attack, *, correct=None, layer_names=None, direction="low"):
    """The kNN paper's figures for one or several score columns.

    Parameters
    ----------
    scores : array-like of shape (n_samples,) or (n_samples, n_layers)
        Class scores, e.g. ``KNNClassScorer(...).transform(X)`` (any
        weighting, preprocessing and layer).
    y : array-like of shape (n_samples,)
        1 = adversarial, 0 = authentic.
    attack : array-like of shape (n_samples,)
        Attack name of every row (ignored on authentic rows).
    correct : array-like of bool of shape (n_samples,), default=None
        For every row, whether the DNN classified the *authentic* image
        correctly (predicted class == true class); only read on authentic
        rows. Needed for the natural-error figures.
    layer_names : list of str, default=None
        One name per column (default ``layer0``, ...; a
        ``KNNClassScorer.get_feature_names_out()`` fits).
    direction : {"low", "high"}, default="low"
        Whether a low score means adversarial (kNN class scores).

    Returns
    -------
    dict
        One entry per column, each a dict with

        - ``"eer_accuracy"``: :func:`~sklearn_advdet.metrics.eer_accuracy_per_attack`
          (each attack against all authentic rows at its own EER threshold,
          and ``"all"``: every attack pooled, one threshold);
        - ``"threshold"``: the pooled EER threshold, in score units (a row is
          flagged when its score is ``<= threshold`` for ``direction="low"``);
        - with ``correct`` given: ``"natural_errors_caught"``, the share of
          authentic images the DNN got wrong that the pooled EER threshold
          flags; ``"correct_flagged"``, the share of correctly classified
          authentic images it flags (false alarms); ``"n_natural_errors"``;
          and ``"natural_error_eer_accuracy"``, the EER accuracy of
          separating natural errors from correctly classified authentic
          images (NaN when one of the two groups is empty).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet.knn import knn_evaluation
    >>> s = np.array([0.9, 0.8, 0.3, 0.1, 0.2, 0.6])
    >>> y = np.array([0, 0, 0, 1, 1, 1])
    >>> attack = np.array(["", "", "", "fgsm", "fgsm", "pgd"])
    >>> correct = np.array([True, True, False, True, True, True])
    >>> r = knn_evaluation(s, y, attack, correct=correct)["layer0"]
    >>> r["eer_accuracy"]
    {'fgsm': 1.0, 'pgd': 0.833..., 'all': 0.666...}
    >>> r["natural_errors_caught"], r["correct_flagged"]
    (1.0, 0.0)
    """
    from .metrics import eer_accuracy, eer_accuracy_per_attack, eer_threshold

    S = np.asarray(scores, dtype=np.float64)
    if S.ndim == 1:
        S = S[:, None]
    if S.ndim != 2:
        raise ValueError(f"scores must be 1-D or 2-D, got shape {S.shape}")
    y = column_or_1d(y)
    if S.shape[0] != y.shape[0]:
        raise ValueError(
            f"scores has {S.shape[0]} rows but y has {y.shape[0]}: pass one label per row"
        )
    if direction not in ("low", "high"):
        raise ValueError(f"direction must be 'low' or 'high', got {direction!r}")
    if layer_names is None:
        layer_names = [f"layer{i}" for i in range(S.shape[1])]
    layer_names = [str(n) for n in layer_names]
    if len(layer_names) != S.shape[1]:
        raise ValueError(
            f"got {len(layer_names)} layer names for {S.shape[1]} score columns"
        )
    sign = -1.0 if direction == "low" else 1.0
    authentic = y == 0
    if correct is not None:
        correct = column_or_1d(correct).astype(bool)
        if correct.shape != y.shape:
            raise ValueError("correct must have one entry per row of scores")
        natural = authentic & ~correct
        good = authentic & correct
    out = {}
    for j, name in enumerate(layer_names):
        s = sign * S[:, j]
        t, _ = eer_threshold(y, s)
        res = {
            "eer_accuracy": eer_accuracy_per_attack(y, s, attack),
            "threshold": float(sign * t),
        }
        if correct is not None:
            flagged = s >= t
            res["n_natural_errors"] = int(natural.sum())
            res["natural_errors_caught"] = (
                float(flagged[natural].mean()) if natural.any() else float("nan")
            )
            res["correct_flagged"] = (
                float(flagged[good].mean()) if good.any() else float("nan")
            )
            if natural.any() and good.any():
                sub = natural | good
                res["natural_error_eer_accuracy"] = eer_accuracy(
                    natural[sub].astype(int), s[sub]
                )
            else:
                res["natural_error_eer_accuracy"] = float("nan")
        out[name] = res
    return out
