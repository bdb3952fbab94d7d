"""Nearest-neighbour peers: deep kNN distance (Sun et al. 2022), DkNN credibility (Papernot & McDaniel 2018).

Both search the reference set with the package's k-NN backends
(:func:`sklearn_advdet.search.make_index`), not a search of their own.

Read more in the :ref:`User Guide <evaluation>`.
"""

from numbers import Integral, Real

import numpy as np
from sklearn.base import _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .._layout import FeatureLayout, check_layout
from .._validation import check_class_targets
from ..search import BACKENDS, make_index
from ..search._layers import l2_normalize
from ._peer_base import PeerScorer

__all__ = ["DeepKNNPeer", "DkNNCredibilityPeer"]

_LAYOUT = [FeatureLayout, "array-like", str, None]


class DeepKNNPeer(PeerScorer):
    """Deep nearest-neighbour distance (Sun et al., 2022).

    On one hidden layer (default the last, the penultimate features), rows
    are L2-normalised, ``z = phi(x) / ||phi(x)||``; the score is the
    Euclidean distance from ``z`` to its ``n_neighbors``-th nearest
    normalised reference row (the paper's ``k = 50``). Far from every
    training image = higher = more adversarial.

    Parameters
    ----------
    layer_sizes : FeatureLayout, tuple of int or "single", default=None
        Column layout of ``X``; only the chosen hidden layer is read.
    layer : int or str, default=-1
        The hidden layer searched.
    n_neighbors : int, default=50
        ``k``; capped at the number of reference rows.
    backend : {"auto", "exact", "pynndescent"}, default="auto"
        Search backend (:func:`sklearn_advdet.search.make_index`).
    n_jobs : int, default=None
        Threads of the search.

    Attributes
    ----------
    layout_ : FeatureLayout
    layer_ : int
        Index of the searched layer.
    n_neighbors_ : int
        ``k`` used (at most the number of reference rows).
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet.evaluation import DeepKNNPeer
    >>> X_ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> peer = DeepKNNPeer("single", n_neighbors=1).fit(X_ref)
    >>> peer.transform([[2.0, 0.0], [-1.0, 0.0]]).round(3)
    array([[0.   ],
           [1.414]])
    """

    _parameter_constraints = {
        "layer_sizes": _LAYOUT,
        "layer": [Integral, str],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "backend": [StrOptions(set(BACKENDS))],
        "n_jobs": [Integral, None],
    }
    _score_name = "deep_knn_peer"

    def __init__(self, layer_sizes=None, *, layer=-1, n_neighbors=50, backend="auto",
                 n_jobs=None):
        self.layer_sizes = layer_sizes
        self.layer = layer
        self.n_neighbors = n_neighbors
        self.backend = backend
        self.n_jobs = n_jobs

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Index the normalised reference rows of the layer.

        Parameters
        ----------
        X : array-like of shape (n_ref, n_features)
            Reference features (the classifier's training set).
        y : None
            Ignored.

        Returns
        -------
        self : DeepKNNPeer
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        layout = check_layout(self.layer_sizes, X.shape[1], estimator="DeepKNNPeer")
        layer = layout.select(self.layer)[0]
        Z = l2_normalize(np.ascontiguousarray(X[:, layout.slice_of(layer)]))
        index = make_index(self.backend, np.ascontiguousarray(Z), n_jobs=self.n_jobs)
        self.layout_ = layout
        self.layer_ = layer
        self.n_neighbors_ = min(self.n_neighbors, X.shape[0])
        self._index = index
        return self

    def _score(self, X):
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        Z = l2_normalize(np.ascontiguousarray(X[:, self.layout_.slice_of(self.layer_)]))
        dist, _ = self._index.query(np.ascontiguousarray(Z), self.n_neighbors_)
        return dist[:, -1]


def _calibration_split(n, calibration_size, rng):
    n_cal = (int(np.floor(calibration_size * n)) if isinstance(calibration_size, Real)
             and not isinstance(calibration_size, Integral) else int(calibration_size))
    if not 1 <= n_cal <= n - 1:
        raise ValueError(
            f"calibration_size={calibration_size!r} gives {n_cal} calibration rows "
            f"out of {n}: DkNN needs at least one calibration row and one "
            "training row; pass a larger reference set or another calibration_size"
        )
    perm = rng.permutation(n)
    return np.sort(perm[n_cal:]), np.sort(perm[:n_cal])


class DkNNCredibilityPeer(PeerScorer):
    """Deep k-Nearest Neighbours credibility (Papernot & McDaniel, 2018).

    ``fit(X_ref, y_ref)`` holds out ``calibration_size`` of the reference
    rows as the calibration set and indexes the rest, per hooked layer. For
    a row ``x`` and a class ``j``, the nonconformity is

    .. math::

        \\alpha(x, j) = \\sum_{l} |\\{i \\in \\Omega_l(x) : y_i \\ne j\\}|

    with ``Omega_l(x)`` the ``n_neighbors`` nearest training rows in layer
    ``l``. The calibration nonconformities are ``A = {alpha(x_c, y_c)}``
    (true labels); ``p_j(x) = |{a in A : a >= alpha(x, j)}| / |A|``; the
    DkNN predicts ``argmax_j p_j`` and its **credibility** is ``max_j p_j``.
    The score is ``1 - credibility`` (low credibility = more adversarial).

    Parameters
    ----------
    layer_sizes : FeatureLayout, tuple of int or "single", default=None
        Column layout of ``X``; hidden layers only are read.
    layers : "all", int, str or list of them, default="all"
        Hidden layers whose neighbours vote.
    n_neighbors : int, default=75
        ``k`` per layer (the paper's 75); capped at the training rows.
    calibration_size : float or int, default=0.1
        Share (float in (0, 1)) or number (int) of reference rows held out
        for calibration.
    backend : {"auto", "exact", "pynndescent"}, default="auto"
    n_jobs : int, default=None
    random_state : int, RandomState instance or None, default=None
        Seeds the calibration split.

    Attributes
    ----------
    layout_ : FeatureLayout
    layers_ : list of int
    classes_ : ndarray of shape (n_classes,)
    calibration_scores_ : ndarray of shape (n_calibration,)
        Sorted nonconformities of the calibration rows.
    n_neighbors_ : int
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet.evaluation import DkNNCredibilityPeer
    >>> rng = np.random.RandomState(0)
    >>> X_ref = np.r_[rng.normal(size=(40, 2)), rng.normal(size=(40, 2)) + 6]
    >>> y_ref = np.r_[np.zeros(40), np.ones(40)]
    >>> peer = DkNNCredibilityPeer("single", n_neighbors=5, random_state=0)
    >>> s = peer.fit(X_ref, y_ref).transform([[0.0, 0.0], [3.0, 3.0]])[:, 0]
    >>> bool(s[0] < s[1])
    True
    """

    _parameter_constraints = {
        "layer_sizes": _LAYOUT,
        "layers": [StrOptions({"all"}), Integral, str, "array-like"],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "calibration_size": [Interval(Real, 0, 1, closed="neither"),
                             Interval(Integral, 1, None, closed="left")],
        "backend": [StrOptions(set(BACKENDS))],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
    }
    _score_name = "dknn_credibility_peer"

    def __init__(self, layer_sizes=None, *, layers="all", n_neighbors=75,
                 calibration_size=0.1, backend="auto", n_jobs=None, random_state=None):
        self.layer_sizes = layer_sizes
        self.layers = layers
        self.n_neighbors = n_neighbors
        self.calibration_size = calibration_size
        self.backend = backend
        self.n_jobs = n_jobs
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Index the training part, score the calibration part.

        Parameters
        ----------
        X : array-like of shape (n_ref, n_features)
            Reference features (the classifier's training set).
        y : array-like of shape (n_ref,)
            Their classes.

        Returns
        -------
        self : DkNNCredibilityPeer
        """
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=False)
        check_class_targets(y)
        layout = check_layout(self.layer_sizes, X.shape[1], estimator="DkNNCredibilityPeer")
        layers = layout.select(self.layers)
        classes, codes = np.unique(y, return_inverse=True)
        if classes.size < 2:
            raise ValueError(
                f"y holds 1 class ({classes[0]!r}) only: DkNN votes between classes, "
                "pass the reference labels of at least 2 classes"
            )
        rng = check_random_state(self.random_state)
        train, cal = _calibration_split(X.shape[0], self.calibration_size, rng)
        indexes = [make_index(self.backend,
                              np.ascontiguousarray(X[train][:, layout.slice_of(i)]),
                              n_jobs=self.n_jobs, random_state=rng) for i in layers]
        k = min(self.n_neighbors, train.size)
        counts = self._counts(X[cal], layout, layers, indexes, codes[train], classes.size, k)
        alpha_cal = len(layers) * k - counts[np.arange(cal.size), codes[cal]]
        self.layout_ = layout
        self.layers_ = layers
        self.classes_ = classes
        self.n_neighbors_ = k
        self.calibration_scores_ = np.sort(alpha_cal)
        self._indexes = indexes
        self._train_codes = codes[train]
        return self

    @staticmethod
    def _counts(X, layout, layers, indexes, train_codes, n_classes, k):
        """Neighbours of each class summed over layers, shape (n, n_classes)."""
        counts = np.zeros((X.shape[0], n_classes), dtype=np.int64)
        rows = np.repeat(np.arange(X.shape[0]), k)
        for i, index in zip(layers, indexes):
            _, idx = index.query(np.ascontiguousarray(X[:, layout.slice_of(i)]), k)
            np.add.at(counts, (rows, train_codes[idx].ravel()), 1)
        return counts

    def p_values(self, X):
        """Empirical p-value ``p_j(x)`` of every class, shape (n_samples, n_classes)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        counts = self._counts(X, self.layout_, self.layers_, self._indexes,
                              self._train_codes, self.classes_.size, self.n_neighbors_)
        alpha = len(self.layers_) * self.n_neighbors_ - counts
        A = self.calibration_scores_
        n_ge = A.size - np.searchsorted(A, alpha, side="left")
        return n_ge / A.size

    def _score(self, X):
        return 1.0 - self.p_values(X).max(axis=1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
