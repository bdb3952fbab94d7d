"""Local intrinsic dimensionality per hooked layer (Ma et al., ICLR 2018).

The maximum-likelihood estimate of the local intrinsic dimensionality of a
point from the distances ``d_1 <= ... <= d_k`` to its ``k`` nearest reference
points (Amsaleg et al. 2015, used by Ma et al. to characterise adversarial
subspaces) is

.. math::

    \\widehat{\\mathrm{LID}} = -\\left(\\frac{1}{k} \\sum_{i=1}^{k}
        \\log \\frac{d_i}{d_k}\\right)^{-1}

:class:`LIDScorer` computes it in every selected hidden layer of ``X``,
searching with the same backends as :class:`~sklearn_advdet.KNNClassScorer`
(:mod:`sklearn_advdet.search`).
"""

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .._layered import validate_view
from .._layout import FeatureLayout, check_layout
from ..search import BACKENDS, SEARCH_PARAMS_DOC, deterministic_backend
from ..search._layers import LayerIndexMixin

__all__ = ["LIDScorer", "lid_mle"]


def lid_mle(distances):
    """Maximum-likelihood LID from sorted positive neighbour distances.

    Parameters
    ----------
    distances : array-like of shape (n_queries, k)
        Distances to the ``k`` nearest neighbours, non-decreasing along each
        row, all positive.

    Returns
    -------
    lid : ndarray of shape (n_queries,)
        ``-k / sum_i log(d_i / d_k)``; ``inf`` where all ``k`` distances are
        equal (the sum is 0: the estimate diverges).

    Examples
    --------
    >>> from sklearn_advdet.features.lid import lid_mle
    >>> lid_mle([[1.0, 2.0, 4.0]])  # -3 / (log(1/4) + log(2/4) + 0) = 3 / log(8)
    array([1.44269504])
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] == 0:
        raise ValueError(f"distances must be (n_queries, k) with k >= 1, got shape {d.shape}")
    if np.any(d <= 0):
        raise ValueError("distances must be positive: drop the neighbours at distance 0")
    s = np.log(d / d[:, -1:]).sum(axis=1)
    out = np.full(d.shape[0], np.inf)
    neg = s < 0
    out[neg] = -d.shape[1] / s[neg]
    return out


class LIDScorer(LayerIndexMixin, TransformerMixin, BaseEstimator):
    """Local intrinsic dimensionality of every selected hidden layer (Ma et al., 2018).

    Fitted on a reference set (the classifier's training-set features);
    ``transform`` gives, for every row and selected layer, the
    maximum-likelihood LID of the row's features among that layer's reference
    features, from the distances to its ``n_neighbors`` nearest reference
    points at a positive distance (:func:`lid_mle`). Adversarial examples
    tend to lie in regions of higher LID than authentic images. The logits
    block is never used.

    Parameters
    ----------
    layer_sizes : FeatureLayout, tuple of int or "single", default=None
        Column layout of ``X`` (:func:`~sklearn_advdet._layout.check_layout`):
        a plain tuple means hidden layers only; a ``FeatureLayout`` may have
        a logits block (it is skipped). None raises, naming the fix.
    layers : "all", int, str or list of them, default="all"
        Hidden layers to score, by index or name; one output column each.
    n_neighbors : int, default=20
        ``k`` of the estimate (Ma et al. used 20). Capped at ``n_ref - 1`` so
        that scoring the reference set itself works; the effective value is
        ``n_neighbors_``.
{search_params}
    Attributes
    ----------
    layout_ : FeatureLayout
    layers_ : list of int
        Indices of the scored hidden layers.
    n_neighbors_ : int
        Effective ``k``: ``min(n_neighbors, n_ref - 1)``.
    backend_ : str
        The backend whose index was built in fit (``"auto"`` resolved).
    n_features_in_ : int

    Notes
    -----
    *Zero distances.* The logarithm of a zero distance is ``-inf``, which
    would give a LID of 0 whatever the other neighbours. A reference point at
    distance exactly 0 is a copy of the query and tells nothing about the
    dimension of its neighbourhood, so it is skipped: the estimate uses the
    ``n_neighbors_`` nearest reference points at a *positive* distance (the
    search is widened as far as needed). Distances near 0 are exact
    (computed from coordinate differences in float64), so only true copies
    are skipped.

    *Scoring the reference set itself* (``fit_transform(X_ref)`` or
    ``transform(X_ref)``): each reference point is at distance 0 from
    itself, so by the rule above it is left out of its own neighbourhood, as
    Ma et al. leave a point out of its own minibatch; its exact duplicates
    are left out too. ``fit_transform`` equals ``fit(X).transform(X)``.

    *Degenerate rows*: when the nearest positive distances are all equal
    (or fewer than two references lie at a positive distance) the sum of
    logarithms is 0 and the LID is ``inf``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet import LIDScorer
    >>> rng = np.random.RandomState(0)
    >>> flat = np.hstack([rng.normal(size=(500, 2)), np.zeros((500, 8))])
    >>> full = rng.normal(size=(500, 10))
    >>> X_ref = np.hstack([flat, full])       # two hidden layers of 10 columns
    >>> lid = LIDScorer((10, 10), n_neighbors=20).fit(X_ref)
    >>> scores = lid.transform(X_ref[:200])
    >>> bool(np.median(scores[:, 0]) < 3 < np.median(scores[:, 1]))  # 2-D vs 10-D data
    True
    >>> lid.get_feature_names_out()
    array(['lid_layer0', 'lid_layer1'], dtype=object)
    """

    _parameter_constraints = {
        "layer_sizes": [FeatureLayout, "array-like", StrOptions({"single"}), None],
        "layers": [StrOptions({"all"}), Integral, str, list, tuple],
        "n_neighbors": [Interval(Integral, 2, None, closed="left")],
        "backend": [StrOptions(set(BACKENDS))],
        "backend_params": [dict, None],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
    }

    def __init__(self, layer_sizes=None, *, layers="all", n_neighbors=20, backend="auto",
                 backend_params=None, n_jobs=None, random_state=None):
        self.layer_sizes = layer_sizes
        self.layers = layers
        self.n_neighbors = n_neighbors
        self.backend = backend
        self.backend_params = backend_params
        self.n_jobs = n_jobs
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Index the reference features of every selected layer.

        Parameters
        ----------
        X : array-like of shape (n_ref, n_features), FeatureStore or LayeredView
            Reference features laid out as ``layer_sizes`` says; a feature
            store is indexed out of core as by :meth:`KNNClassScorer.fit`
            (``layer_sizes=None`` takes its layout).
        y : None
            Ignored (the estimate uses no labels).

        Returns
        -------
        self : LIDScorer
        """
        view = validate_view(self, X)  # a feature store: out of core
        if view:
            X = view[0]
            if X.shape[0] < 3:
                raise ValueError(f"Found array with {X.shape[0]} sample(s) while a "
                                 "minimum of 3 is required by LIDScorer.")
        else:
            X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=3)
        sizes = self.layer_sizes
        if view and sizes is None and X.layout is not None:
            sizes = X.layout  # a store says its own layout
        layout = check_layout(sizes, X.shape[1], estimator="LIDScorer")
        layers = layout.select(self.layers)
        rng = check_random_state(self.random_state)
        _, indexes = self._index_layers(X, layout, layers, rng)
        self.layout_ = layout
        self.layers_ = layers
        self.n_neighbors_ = int(min(self.n_neighbors, X.shape[0] - 1))
        self.backend_ = indexes[0].backend
        self._indexes = indexes
        return self

    def transform(self, X):
        """LID of every row in every selected layer.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        lid : ndarray of shape (n_samples, n_selected_layers)
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        out = np.empty((X.shape[0], len(self.layers_)), dtype=np.float64)
        for pos in range(len(self.layers_)):
            out[:, pos] = self._layer_lid(X, pos)
        return out

    def _layer_lid(self, X, pos):
        """LID of the rows of ``X`` in one layer, skipping zero distances."""
        k = self.n_neighbors_
        n_ref = self._indexes[pos].data.shape[0]
        dist, _ = self._query(X, pos, k)
        out = np.empty(X.shape[0])
        todo = np.arange(X.shape[0])
        while True:
            zeros = (dist == 0).sum(axis=1)  # sorted rows: the zeros come first
            width = dist.shape[1]
            full = width - zeros >= k
            done = full | (width == n_ref)
            rows = np.flatnonzero(full)
            cols = zeros[rows, None] + np.arange(k)
            out[todo[rows]] = lid_mle(np.take_along_axis(dist[rows], cols, axis=1))
            for r in np.flatnonzero(done & ~full):  # fewer than k references left
                rest = dist[r, zeros[r]:]
                out[todo[r]] = lid_mle(rest[None])[0] if rest.size else np.inf
            todo, zeros = todo[~done], zeros[~done]
            if not todo.size:
                return out
            # widen the search past the copies of the remaining rows
            dist, _ = self._query(X[todo], pos, min(n_ref, k + int(zeros.max())))

    def get_feature_names_out(self, input_features=None):
        """``lid_<layer name>`` for every scored layer."""
        check_is_fitted(self)
        names = self.layout_.layer_names
        return np.asarray([f"lid_{names[i]}" for i in self.layers_], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = not deterministic_backend(self.backend, self.backend_params)
        return tags


LIDScorer.__doc__ = LIDScorer.__doc__.replace("{search_params}\n", SEARCH_PARAMS_DOC
                                              + """    random_state : int, RandomState instance or None, default=None
        Seeds an approximate backend's build.
""")
