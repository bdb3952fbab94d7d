"""Pivot-distance embedding of deep features (Carrara et al., ECCV-W 2018).

For every embedded hidden layer ``l`` a sample's pooled activation ``o(l)`` is
replaced by its distances to ``C`` class pivots ``p(l)_1 .. p(l)_C``, the
per-class centroids or medoids of the classifier's *training-set*
activations.  The ``L x C`` result is the input of the sequence detectors.
"""

from numbers import Integral

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import (
    check_array,
    check_is_fitted,
    check_memory,
    validate_data,
)
from threadpoolctl import threadpool_limits

from ._layered import LayeredView, chunked_class_means, validate_view
from ._layout import check_layout
from ._medoid import _cosine_medoid, _euclidean_medoid
from ._parallel import blas_num_threads
from ._reference import load_reference
from ._validation import check_class_targets

__all__ = ["PivotEmbedder"]

_PIVOTS = ("centroid", "medoid")
_METRICS = ("euclidean", "cosine", "cosine_similarity")
_MEDOID_METRICS = ("euclidean", "cosine")


def _class_pivot(X, pivots, medoid_metric, block_size, n_threads=1):
    """Pivot of one class in one layer: (centroid, -1) or (None, medoid row)."""
    if pivots == "centroid":
        return np.asarray(X, dtype=np.float64).mean(axis=0), -1
    if medoid_metric == "euclidean":
        return None, _euclidean_medoid(X, block_size, n_threads)
    return None, _cosine_medoid(X)


def _compute_pivots(X, y, slices, pivots, medoid_metric, block_size, n_jobs):
    """Pivots of every (layer, class): the expensive part of ``fit``.

    Parameters
    ----------
    X : ndarray of shape (n_reference, n_features)
    y : ndarray of shape (n_reference,)
        Class labels.
    slices : tuple of (start, stop)
        Columns of each embedded layer.

    Returns
    -------
    classes : ndarray of shape (n_classes,)
    pivot_list : list of ndarray of shape (n_classes, d_l)
    medoid_indices : ndarray of shape (n_layers, n_classes) or None
        Rows of X chosen as medoids.
    """
    classes, y_idx = np.unique(y, return_inverse=True)
    if pivots == "centroid" and isinstance(X, LayeredView):
        # out of core: one chunked pass per layer, no class block read whole;
        # equal bit for bit to the in-memory means
        means = Parallel(n_jobs=n_jobs, prefer="threads")(
            delayed(chunked_class_means)(X, y_idx, len(classes), slice(*s)) for s in slices
        )
        return classes, list(means), None
    members = [np.flatnonzero(y_idx == k) for k in range(len(classes))]
    tasks = [(l, k) for l in range(len(slices)) for k in range(len(classes))]
    # one joblib task per (layer, class): threads by default, and a joblib
    # backend (Dask, Ray) spreads them over a cluster
    parallel = Parallel(n_jobs=n_jobs, prefer="threads")
    # parallel over (layer, class): one thread per task; otherwise a
    # medoid's tiles run on as many threads as BLAS would use
    n_threads = 1 if effective_n_jobs(n_jobs) > 1 else blas_num_threads()
    jobs = (
        delayed(_class_pivot)(
            X[members[k], slice(*slices[l])],
            pivots,
            medoid_metric,
            block_size,
            n_threads,
        )
        for l, k in tasks
    )
    if effective_n_jobs(n_jobs) > 1:
        # one BLAS thread per task, or the tasks' BLAS thread pools
        # oversubscribe the cores
        with threadpool_limits(limits=1, user_api="blas"):
            results = parallel(jobs)
    else:
        results = parallel(jobs)
    C = len(classes)
    if pivots == "centroid":
        pivot_list = [
            np.stack([results[l * C + k][0] for k in range(C)])
            for l in range(len(slices))
        ]
        return classes, pivot_list, None
    medoid_indices = np.array(
        [[members[k][results[l * C + k][1]] for k in range(C)] for l in range(len(slices))],
        dtype=np.intp,
    )
    pivot_list = [
        np.asarray(X[medoid_indices[l], slice(*slices[l])], dtype=np.float64)
        for l in range(len(slices))
    ]
    return classes, pivot_list, medoid_indices


def _cached_pivots(X, y, slices, pivots, medoid_metric, block_size, n_jobs):
    # Thin wrapper so that joblib.Memory keys the cache on the data, the
    # layer slices and the pivot settings only (block_size and n_jobs do not
    # change the result and are ignored), while tests can count the calls to
    # ``_compute_pivots``.
    return _compute_pivots(X, y, slices, pivots, medoid_metric, block_size, n_jobs)


# -------------------------------------------------------------- distances
def _distances(X, P, metric):
    """Distances (or similarities) of the rows of X to the rows of P, float64."""
    X = np.asarray(X, dtype=np.float64)
    if metric == "euclidean":
        # centring on the pivots' mean shrinks the cancellation error of the
        # GEMM form |x|^2 + |p|^2 - 2 x.p
        shift = P.mean(axis=0)
        Xs, Ps = X - shift, P - shift
        D = Xs @ Ps.T
        D *= -2.0
        D += np.einsum("ij,ij->i", Xs, Xs)[:, None]
        D += np.einsum("ij,ij->i", Ps, Ps)
        np.maximum(D, 0.0, out=D)
        return np.sqrt(D, out=D)
    xn = np.sqrt(np.einsum("ij,ij->i", X, X))
    pn = np.sqrt(np.einsum("ij,ij->i", P, P))
    S = X @ P.T
    S /= np.where(xn > 0, xn, 1.0)[:, None]
    S /= np.where(pn > 0, pn, 1.0)
    if metric == "cosine_similarity":
        return S
    return 1.0 - S


# ------------------------------------------------------------- estimator
class PivotEmbedder(TransformerMixin, BaseEstimator):
    """Embed each layer's features as their distances to per-class pivots.

    For every embedded hidden layer ``l`` of ``X`` (see ``layer_sizes``), a
    row's block ``o(l)`` becomes ``[d(o(l), p(l)_1), ..., d(o(l), p(l)_C)]``
    where ``p(l)_c`` is the pivot of class ``c``: the centroid (mean) or the
    medoid of that class's reference features in layer ``l``.  The output is
    the layer-major concatenation, shape ``(n_samples, L * C)``, ready for
    :class:`~sklearn_advdet.SequenceLSTMDetector` (a sequence of ``L`` steps
    of ``C`` values) or :class:`~sklearn_advdet.MLPDetector`.

    The reference set (pivots' source) is the classifier's training-set
    features with their class labels.  Two ways to give it:

    - ``fit(X_ref, y_class)`` with ``reference=None``; the fitted embedder
      can then be frozen inside a detection pipeline with
      :class:`sklearn.frozen.FrozenEstimator`;
    - ``reference=(X_ref, y_ref)`` (or a feature-store path): ``fit(X, y)``
      then ignores ``y`` (the *detection* labels) and uses ``X`` only to check
      its width, so the embedder can be tuned inside a detection pipeline by
      :class:`~sklearn.model_selection.GridSearchCV`.  With ``memory`` set,
      each distinct pivot set is computed once and reused by every fold and
      every candidate.

    Parameters
    ----------
    layer_sizes : FeatureLayout, tuple of int or "single", default=None
        Column layout of ``X`` (the package's one rule): the
        :class:`~sklearn_advdet.FeatureLayout` of the feature store (its
        logits block is never embedded), or the width of each hidden-layer
        block in column order (a plain tuple has no logits block), or
        ``"single"`` for one hidden layer spanning all columns.  ``None``
        takes the layout of the ``reference`` feature store when there is
        one, and otherwise raises.
    layers : "all", int, str or list of them, default="all"
        Hidden layers to embed, by index or name.  ``"all"`` embeds every
        hidden layer; the logits block is never embedded.
    pivots : {"centroid", "medoid"}, default="centroid"
        Class pivot: the mean of the class, or its medoid (the member with
        the smallest summed distance to the other members, computed exactly).
    metric : {"euclidean", "cosine", "cosine_similarity"}, default="euclidean"
        ``"cosine"`` is the cosine *distance* ``1 - cos`` as in the paper;
        ``"cosine_similarity"`` (``cos``, larger is closer) reproduces the
        authors' code.  All-zero vectors have cosine similarity 0.
    medoid_metric : {"euclidean", "cosine"}, default="euclidean"
        Distance that defines the medoid.  Euclidean by default, whatever
        ``metric`` is: the paper defines the medoid with Euclidean distances
        and the authors' code used Euclidean medoids for cosine runs too.
        Ignored for centroids.
    reference : tuple (X_ref, y_ref), Bunch, str or path-like, default=None
        Reference set to take the pivots from instead of ``fit``'s arguments:
        arrays, a Bunch/dict with ``X`` and ``y``, or the directory of a
        feature store (:mod:`sklearn_advdet.deep.store`; its ``X`` and
        ``labels`` are used, so ``X`` passed to fit/transform must have the
        store's layout).  A store is read out of core: its layer files stay
        memory-mapped (see ``fit``).  Arrays given here are copied whenever
        the estimator is cloned (as by ``GridSearchCV``); for large sets
        prefer a path.
    memory : str, joblib.Memory or None, default=None
        Cache of the pivot computation.  The key is the reference data, its
        labels, the embedded columns, ``pivots`` and ``medoid_metric``;
        ``metric``, ``block_size`` and ``n_jobs`` do not change the pivots
        and are not part of it.
    block_size : int, default=512
        Side of the square float32 distance tiles of the medoid computation
        (memory about ``4 * block_size * (2 * block_size + 4 * d)`` bytes per
        running thread, ``d`` the layer size), and the number of rows
        transformed at once.
    n_jobs : int, default=None
        Parallel medoid computations over (layer, class) pairs, with joblib
        (threads by default; a ``joblib.parallel_config`` backend such as
        Dask or Ray takes over when set).  ``None`` means 1.  With more than
        one job each task runs single-threaded (BLAS limited via
        threadpoolctl) so that the tasks do not oversubscribe the cores; with
        one, a medoid's distance tiles run on as many threads as the BLAS
        thread pool has (``threadpoolctl.threadpool_limits`` bounds both).

    Attributes
    ----------
    pivots_ : list of ndarray of shape (n_classes, d_l)
        Pivots of each embedded layer, in ``layer_indices_`` order (float64).
    classes_ : ndarray of shape (n_classes,)
        Class labels of the reference set, in pivot order.
    layout_ : FeatureLayout
        Layout of ``X``.
    layer_indices_ : list of int
        Embedded layers, as indices into ``layout_``.
    medoid_indices_ : ndarray of shape (n_layers, n_classes) or None
        Row of the reference set chosen as each medoid (None for centroids).
    n_features_in_ : int
        Number of columns of ``X`` seen in ``fit``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Column names of ``X``, when it had string column names.

    See Also
    --------
    sklearn_advdet.FeatureLayout : column layout of the deep-feature matrix.

    Notes
    -----
    Medoids are exact: blocked matrix products with symmetric square tiles
    (never an ``n x n`` matrix), plus an exact re-summation of the rows whose
    blocked sum is within the rounding-error bound of the smallest one.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet import PivotEmbedder
    >>> rng = np.random.RandomState(0)
    >>> X_ref = rng.rand(30, 5)           # two layers of 2 and 3 features
    >>> y_ref = np.repeat([0, 1, 2], 10)  # the classifier's training labels
    >>> emb = PivotEmbedder(layer_sizes=(2, 3), pivots="medoid").fit(X_ref, y_ref)
    >>> [p.shape for p in emb.pivots_]
    [(3, 2), (3, 3)]
    >>> Z = emb.transform(rng.rand(4, 5))
    >>> Z.shape, Z.dtype
    ((4, 6), dtype('float32'))
    >>> emb.get_feature_names_out()[:4]
    array(['layer0_class0', 'layer0_class1', 'layer0_class2', 'layer1_class0'],
          dtype=object)
    """

    def __init__(
        self,
        layer_sizes=None,
        *,
        layers="all",
        pivots="centroid",
        metric="euclidean",
        medoid_metric="euclidean",
        reference=None,
        memory=None,
        block_size=512,
        n_jobs=None,
    ):
        self.layer_sizes = layer_sizes
        self.layers = layers
        self.pivots = pivots
        self.metric = metric
        self.medoid_metric = medoid_metric
        self.reference = reference
        self.memory = memory
        self.block_size = block_size
        self.n_jobs = n_jobs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = self.reference is None
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    # ------------------------------------------------------------- checks
    def _check_params(self):
        for name, value, allowed in (
            ("pivots", self.pivots, _PIVOTS),
            ("metric", self.metric, _METRICS),
            ("medoid_metric", self.medoid_metric, _MEDOID_METRICS),
        ):
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(
                    f"{name} must be one of {list(allowed)}, got {value!r}"
                )
        bs = self.block_size
        if not isinstance(bs, Integral) or isinstance(bs, bool) or bs < 1:
            raise ValueError(
                f"block_size must be a positive integer (rows per block), got {bs!r}"
            )

    # ---------------------------------------------------------------- fit
    def fit(self, X, y=None):
        """Compute the class pivots of every embedded layer.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), FeatureStore or LayeredView
            Reference features (``reference=None``), or the detection
            features whose width is checked (``reference`` given).  A
            feature store (or a ``sklearn_advdet._layered.LayeredView``) is
            read out of core, never concatenated: centroids by a chunked
            pass per layer, medoids one class of one layer at a time; the
            pivots equal those of the in-memory fit exactly.  Only the
            embedded layers are read (and checked for NaN).
        y : array-like of shape (n_samples,)
            Class labels of the reference set when ``reference=None`` (for
            a store, its ``labels`` by default); ignored otherwise (they
            are detection labels then).

        Returns
        -------
        self : PivotEmbedder
            Fitted embedder.  When fit raises, the estimator keeps the
            fitted state it had before (or stays unfitted).
        """
        saved = {k: v for k, v in vars(self).items() if _is_fitted_attr(k)}
        try:
            return self._fit(X, y)
        except BaseException:
            for k in [k for k in vars(self) if _is_fitted_attr(k)]:
                delattr(self, k)
            vars(self).update(saved)
            raise

    def _fit(self, X, y):
        self._check_params()
        float_dtypes = [np.float64, np.float32]
        if self.reference is None:
            view = validate_view(self, X, y, labels=True)  # out of core: no copy
            X, y = view or validate_data(self, X, y, dtype=float_dtypes)
            X_ref, y_ref, store_layout = X, y, getattr(X, "layout", None)
        else:
            # y holds detection labels here: never used as classes
            view = validate_view(self, X)
            X = view[0] if view else validate_data(self, X, dtype=float_dtypes)
            X_ref, y_ref, store_layout = load_reference(self.reference)
            if not isinstance(X_ref, LayeredView):
                X_ref = check_array(X_ref, dtype=float_dtypes, input_name="X_ref")
            y_ref = check_array(
                y_ref, ensure_2d=False, dtype=None, input_name="y_ref"
            )
            if y_ref.ndim != 1 or len(y_ref) != len(X_ref):
                raise ValueError(
                    f"reference labels have shape {y_ref.shape} for {len(X_ref)} "
                    "reference rows: pass one class label per reference row"
                )
            if X_ref.shape[1] != X.shape[1]:
                raise ValueError(
                    f"X has {X.shape[1]} columns but the reference set has "
                    f"{X_ref.shape[1]}: both must come from the same layers of "
                    "the same model"
                )
        check_class_targets(y_ref, "y_ref")
        if self.layer_sizes is None and store_layout is not None:
            layout = check_layout(store_layout, X.shape[1])
        else:
            layout = check_layout(self.layer_sizes, X.shape[1], estimator="PivotEmbedder")
        layer_indices = layout.select(self.layers)
        classes = np.unique(y_ref)
        if len(classes) < 2:
            raise ValueError(
                f"y has 1 class ({classes[0]!r}): pivots are per class, so the "
                "reference set needs the class labels of at least 2 classes "
                "(with reference=..., check the reference labels)"
            )
        slices = tuple(
            (layout.slice_of(i).start, layout.slice_of(i).stop) for i in layer_indices
        )
        medoid_metric = self.medoid_metric if self.pivots == "medoid" else None
        memory = check_memory(self.memory)
        compute = memory.cache(_cached_pivots, ignore=["block_size", "n_jobs"])
        classes, pivot_list, medoid_indices = compute(
            X_ref,
            np.asarray(y_ref),
            slices,
            self.pivots,
            medoid_metric,
            int(self.block_size),
            self.n_jobs,
        )
        self.layout_ = layout
        self.layer_indices_ = list(layer_indices)
        self.classes_ = classes
        self.pivots_ = pivot_list
        self.medoid_indices_ = medoid_indices
        return self

    # ---------------------------------------------------------- transform
    def transform(self, X):
        """Distances of every embedded layer's block to that layer's pivots.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        Z : ndarray of shape (n_samples, n_layers * n_classes), float32
            Layer-major: columns ``l * C .. (l + 1) * C - 1`` hold layer
            ``l``'s distances to the ``C`` class pivots.
        """
        check_is_fitted(self, "pivots_")
        view = validate_view(self, X, reset=False)
        X = view[0] if view else validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        C = len(self.classes_)
        Z = np.empty((X.shape[0], len(self.pivots_) * C), dtype=np.float32)
        step = int(self.block_size)
        for start in range(0, X.shape[0], step):
            rows = slice(start, start + step)
            for j, (i, P) in enumerate(zip(self.layer_indices_, self.pivots_)):
                block = X[rows, self.layout_.slice_of(i)]
                Z[rows, j * C : (j + 1) * C] = _distances(block, P, self.metric)
        return Z

    def get_feature_names_out(self, input_features=None):
        """Output names ``<layer name>_class<label>``, layer-major.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Only checked against the input seen in ``fit``.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self, "pivots_")
        if input_features is not None:
            input_features = np.asarray(input_features, dtype=object)
            if len(input_features) != self.n_features_in_:
                raise ValueError(
                    f"input_features has {len(input_features)} names but X had "
                    f"{self.n_features_in_} columns in fit"
                )
            seen = getattr(self, "feature_names_in_", None)
            if seen is not None and not np.array_equal(input_features, seen):
                raise ValueError(
                    "input_features is not equal to feature_names_in_"
                )
        names = self.layout_.names
        return np.asarray(
            [
                f"{names[i]}_class{c}"
                for i in self.layer_indices_
                for c in self.classes_
            ],
            dtype=object,
        )


def _is_fitted_attr(name):
    return name.endswith("_") and not name.startswith("_")
