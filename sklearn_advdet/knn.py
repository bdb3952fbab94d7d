"""kNN class-score detection (Carrara et al., MTAP 2018).

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

:class:`KNNClassScorer` turns X (layer features, logits last) into one
score per selected layer; :func:`knn_evaluation` reports the paper's figures.
The search is :mod:`sklearn_advdet.search`; ``ScoreThresholdDetector`` moved
to :mod:`sklearn_advdet.thresholds` (still importable from here).
"""

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from ._layered import validate_view
from ._layout import FeatureLayout, check_layout
from ._validation import check_class_targets
from .search import BACKENDS, SEARCH_PARAMS_DOC, deterministic_backend
from .search._layers import LayerIndexMixin, fit_preprocessing, fit_preprocessing_view
from .search.exact import _ExactIndex  # noqa: F401  (sklearn_advdet._density imports it)
from .thresholds import ScoreThresholdDetector  # its former home; kept importable

__all__ = [
    "KNNClassScorer",
    "ScoreThresholdDetector",
    "knn_class_scores",
    "knn_evaluation",
]


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
            raise ValueError(f"neighbor_distances has shape {d.shape}, expected {tuple(shape)}")
        zero = d == 0.0
        has_zero = zero.any(axis=1)
        with np.errstate(divide="ignore"):
            w = 1.0 / np.square(d)
        w[has_zero] = zero[has_zero]
        return w
    raise ValueError(f"weights must be 'uniform', 'rank' or 'distance', got {weights!r}")


def _majority_scores(labels, dist, n_classes, weights):
    """Score of the neighbours' own weighted-majority class (ties: lowest class)."""
    w = _neighbor_weights(labels.shape, dist, weights)
    votes = np.zeros((labels.shape[0], n_classes))
    for c in range(n_classes):
        votes[:, c] = (w * (labels == c)).sum(axis=1)
    return votes.max(axis=1) / w.sum(axis=1)


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
class KNNClassScorer(LayerIndexMixin, TransformerMixin, BaseEstimator):
    """kNN score of the DNN-predicted class, per layer (Carrara et al., MTAP 2018).

    Fitted on the classifier's *training-set* features (the reference set)
    with their class labels; transforms any set of images to the score of the
    class the DNN predicted for each of them (argmax of the logits block of
    ``X``), one column per selected layer. Low score = the neighbours in that
    layer disagree with the prediction: do not trust it.

    Parameters
    ----------
    layer_sizes : FeatureLayout or "single", default=None
        Column layout of ``X`` (:func:`~sklearn_advdet._layout.check_layout`):
        it must have the logits block (``FeatureLayout(sizes,
        has_logits=True)``); a plain tuple (hidden layers only) or None
        raises, naming the fix. ``"single"``: ``X`` without logits, all one
        hidden layer; the prediction being unknown, the score is that of the
        neighbours' own weighted-majority class (ties: the first class) and
        ``y`` may hold any labels.
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
{search_params}
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
        The backend whose index was built in fit (``"auto"`` resolved).
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
    - *Ties*: neighbours are ordered by (distance, reference index), a tie
      at the k-th place included (exact backend), so W-kNN's ranks are
      deterministic.
    - *Zero distance under DW-kNN*: the neighbours at distance 0 share all
      the weight.  The exact backend's distances come from float64
      coordinate differences (the approximate backends': those small enough
      to be spoilt by cancellation are recomputed that way), so an exact
      duplicate gives 0.
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
        "backend": [StrOptions(set(BACKENDS))],
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

    def _preprocess(self, Z, rng):
        return fit_preprocessing(self.preprocessing, Z, rng, self.n_components, self.whiten)

    def _preprocess_view(self, view, cols, rng):
        return fit_preprocessing_view(self.preprocessing, view, cols, rng,
                                      self.n_components, self.whiten)

    # -------------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Index the reference set (the classifier's training-set features).

        Parameters
        ----------
        X : array-like of shape (n_ref, n_features), FeatureStore or LayeredView
            Reference features laid out as ``layer_sizes`` says (logits last;
            the logits are not used in fit).  A feature store (or a
            ``sklearn_advdet._layered.LayeredView`` of one) is indexed out of
            core: with ``preprocessing=None`` and the exact backend each
            layer's memory-map is searched block by block and never loaded
            (float16 stores are widened per block; the neighbours equal those
            of the in-memory fit); ``preprocessing="pca"`` is fitted from
            the layer's covariance gathered chunk by chunk (the in-memory
            PCA up to rounding and the axes' signs) and keeps only the
            projected rows (``n_components`` wide) in memory, ``"l2"`` a
            normalised copy of each layer; ``backend="faiss"`` copies each
            layer into its index.  ``layer_sizes=None`` takes the store's
            layout.
        y : array-like of shape (n_ref,)
            Class index of every reference sample (its logit column); for a
            store, its ``labels`` by default.

        Returns
        -------
        self : KNNClassScorer
        """
        view = validate_view(self, X, y, labels=True)  # a feature store: out of core
        X, y = view or validate_data(self, X, y, dtype=[np.float64, np.float32],
                                     y_numeric=False)
        sizes = self.layer_sizes
        if view and sizes is None and X.layout is not None:
            sizes = X.layout  # a store says its own layout
        single = isinstance(sizes, str) and sizes == "single"
        layout = check_layout(sizes, X.shape[1], need_logits=not single,
                              estimator="KNNClassScorer")
        if layout.has_logits:
            y = _check_class_labels(y, layout.n_logits)
            classes = np.unique(y)
            n_classes = layout.n_logits
        else:  # no logits: any labels, encoded as 0..C-1
            check_class_targets(y)
            classes, y = np.unique(y, return_inverse=True)
            n_classes = classes.size
        layers = layout.select(self.layers)
        n_ref = X.shape[0]
        k = min(self.n_neighbors, n_ref)
        rng = check_random_state(self.random_state)
        preprocessors, indexes = self._index_layers(
            X, layout, layers, rng, None if self.preprocessing is None else self._preprocess,
            None if self.preprocessing is None else self._preprocess_view)
        self.layout_ = layout
        self.layers_ = layers
        self.n_neighbors_ = int(k)
        self.backend_ = indexes[0].backend
        self.classes_ = classes
        self.n_classes_ = int(n_classes)
        self.preprocessors_ = preprocessors
        self.ref_labels_ = y
        self._indexes = indexes
        return self

    # ------------------------------------------------------------- transform
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
            dist, idx = self._query(X, pos)
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
        return np.asarray([f"knn_score_{names[i]}" for i in self.layers_], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.non_deterministic = not deterministic_backend(self.backend, self.backend_params)
        return tags


KNNClassScorer.__doc__ = KNNClassScorer.__doc__.replace("{search_params}\n", SEARCH_PARAMS_DOC)


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
    from .metrics import eer_accuracy_per_attack, eer_threshold

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
        raise ValueError(f"got {len(layer_names)} layer names for {S.shape[1]} score columns")
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
            res.update(_natural_error_figures(s, s >= t, natural, good))
        out[name] = res
    return out


def _natural_error_figures(s, flagged, natural, good):
    """knn_evaluation's natural-error entries for one signed score column."""
    from .metrics import eer_accuracy

    nan, sub = float("nan"), natural | good
    return {
        "n_natural_errors": int(natural.sum()),
        "natural_errors_caught": float(flagged[natural].mean()) if natural.any() else nan,
        "correct_flagged": float(flagged[good].mean()) if good.any() else nan,
        "natural_error_eer_accuracy": (
            eer_accuracy(natural[sub].astype(int), s[sub])
            if natural.any() and good.any() else nan
        ),
    }
