"""Mahalanobis distance to the class means, per hooked layer (Lee et al., 2018).

Read more in the :ref:`User Guide <features>`.
"""

from numbers import Integral

import numpy as np
from scipy import linalg
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.covariance import OAS, EmpiricalCovariance, LedoitWolf
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import (
    _check_feature_names_in,
    check_is_fitted,
    validate_data,
)

from .._layout import FeatureLayout, check_layout
from .._validation import check_class_targets
from ..knn import _check_class_labels

__all__ = ["MahalanobisScorer", "predicted_class_rows"]

_COVARIANCES = {"ledoit_wolf": LedoitWolf, "oas": OAS, "empirical": EmpiricalCovariance}
# rows x width entries whitened at once (16 MiB of float64)
_CHUNK_ENTRIES = 2**21


def _tied_covariance(Zc, kind):
    """Covariance of class-centred rows ``Zc`` and its shrinkage (0 for empirical)."""
    est = _COVARIANCES[kind](assume_centered=True).fit(Zc)
    return est.covariance_, float(getattr(est, "shrinkage_", 0.0))


def _precision_cholesky(cov, layer_name, kind):
    """Upper-triangular ``U`` with ``inv(cov) = U @ U.T``; clear error if singular."""
    try:
        L = linalg.cholesky(cov, lower=True)
    except linalg.LinAlgError:
        L = None
    if L is None or not np.all(np.diag(L) > 0) or not np.all(np.isfinite(L)):
        fix = ("use covariance='ledoit_wolf' or 'oas' (shrinkage keeps it "
               "invertible)" if kind == "empirical" else
               "check that the layer's reference features are not all constant")
        raise ValueError(
            f"the tied covariance of layer {layer_name!r} is singular: {fix}"
        )
    eye = np.eye(cov.shape[0])
    return linalg.solve_triangular(L, eye, lower=True).T


def predicted_class_rows(X, layout, classes, alternative):
    """Index into ``classes`` of each row's predicted class (argmax of the logits).

    ``classes`` holds the class indices (logit columns) present in a
    reference set; a row predicted as a class outside it raises a ValueError
    naming the class and suggesting ``alternative`` (e.g. another option of
    the estimator) besides refitting with every class.
    """
    pred = np.argmax(X[:, layout.logits_slice], axis=1)
    lookup = np.full(layout.n_logits, -1, dtype=np.intp)
    lookup[np.asarray(classes).astype(np.intp)] = np.arange(len(classes))
    rows = lookup[pred]
    if np.any(rows < 0):
        missing = np.unique(pred[rows < 0]).tolist()
        raise ValueError(
            f"the DNN predicted class(es) {missing} for some rows, but the "
            "reference set given to fit has no sample of them, so there is "
            "nothing to compare with: refit on a reference set holding every "
            f"class (the classifier's training set), or use {alternative}"
        )
    return rows


class MahalanobisScorer(TransformerMixin, BaseEstimator):
    """Mahalanobis distance of each hooked layer's features to the class means.

    Lee et al. (2018), on pooled deep features: for each selected hidden
    layer ``l``, ``fit(X_ref, y_ref)`` takes the class means ``mu_c`` of the
    reference features (the classifier's training set) and one covariance
    ``Sigma`` tied across classes, estimated on the rows centred by their own
    class mean (``x - mu_{y}``) with shrinkage through
    :mod:`sklearn.covariance` (``assume_centered=True``). A row ``x`` of a
    layer is scored by

    .. math::

        d(x) = \\sqrt{(x - \\mu_c)^\\top \\Sigma^{-1} (x - \\mu_c)}

    with ``c`` the class the DNN predicted (argmax of the logits block,
    ``class_mean="predicted"``) or the class that minimises it
    (``class_mean="closest"``, the paper's confidence score). Large = far from what the class looks
    like in that layer. No input pre-processing (the paper's noise step) is
    applied: it needs gradients of the network.

    Read more in the :ref:`User Guide <features>`.

    Parameters
    ----------
    layer_sizes : FeatureLayout, tuple of int or "single", default=None
        Column layout of ``X`` (the package's one rule, see
        :func:`~sklearn_advdet._layout.check_layout`). ``class_mean="predicted"``
        needs the logits block (``FeatureLayout(sizes, has_logits=True)``);
        ``class_mean="closest"`` also works on a layout without logits (a
        plain tuple, or ``"single"``), and then ``y`` may hold any labels.
        The logits block is never scored.
    layers : "all", int, str or list of them, default="all"
        Hidden layers to score, by index or name; one output column each.
    covariance : {"ledoit_wolf", "oas", "empirical"}, default="ledoit_wolf"
        Estimator of the tied covariance: :class:`~sklearn.covariance.LedoitWolf`,
        :class:`~sklearn.covariance.OAS` (both shrink towards a scaled
        identity, so the covariance stays invertible when a layer is wider
        than the reference set) or :class:`~sklearn.covariance.EmpiricalCovariance`
        (maximum likelihood, no shrinkage).
    class_mean : {"predicted", "closest"}, default="predicted"
        Distance to the mean of the class the DNN predicted, or to the
        closest class mean (the minimum over classes, Lee et al.'s score).
    log : bool, default=False
        Output ``log1p(d)`` instead of ``d``: a monotone map (trees are
        unaffected) that tames the long right tail for linear and Gaussian
        models.

    Attributes
    ----------
    layout_ : FeatureLayout
        Layout of ``X``.
    layers_ : list of int
        Indices of the scored hidden layers (``layout_``'s numbering).
    classes_ : ndarray of shape (n_classes,)
        Class labels of the reference set, in the row order of ``means_``.
        With logits they are the classifier's class indices (logit columns).
    means_ : list of ndarray of shape (n_classes, d_l)
        Class means of each scored layer, in ``layers_`` order (float64).
    covariances_ : list of ndarray of shape (d_l, d_l)
        Tied (shrunk) covariance of each scored layer.
    precision_cholesky_ : list of ndarray of shape (d_l, d_l)
        Upper-triangular ``U`` with ``inv(covariances_[j]) = U @ U.T``, so
        that ``d(x)^2 = ||(x - mu_c) @ U||^2`` (the convention of
        :class:`sklearn.mixture.GaussianMixture`'s ``precisions_cholesky_``).
    shrinkage_ : ndarray of shape (n_scored_layers,)
        Shrinkage coefficient chosen per layer (0 for ``"empirical"``).
    n_features_in_ : int
        Number of columns of ``X``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Column names of ``X``, when it had string column names.

    Notes
    -----
    - *Predicted class absent from the reference set*: ``transform`` raises a
      ValueError naming the class (no distance to a mean that does not
      exist); refit on a reference set holding every class, or use
      ``class_mean="closest"``.
    - Each layer is whitened once (``X @ U``, in row chunks of bounded
      memory); distances are then exact differences of whitened rows and
      whitened means, with no cancellation-prone expansion.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet import FeatureLayout, MahalanobisScorer
    >>> rng = np.random.RandomState(0)
    >>> y_ref = np.repeat([0, 1], 50)
    >>> feats = rng.normal(size=(100, 3)) + 4 * y_ref[:, None]
    >>> X_ref = np.hstack([feats, np.eye(2)[y_ref]])        # features | logits
    >>> layout = FeatureLayout([3, 2], has_logits=True)
    >>> maha = MahalanobisScorer(layout).fit(X_ref, y_ref)
    >>> X = np.array([[4., 4, 4, 0, 1],    # at class 1's mean, predicted 1
    ...               [4., 4, 4, 1, 0]])   # same features, predicted 0
    >>> d = maha.transform(X)
    >>> bool(d[0, 0] < 1 < d[1, 0])
    True
    >>> maha.get_feature_names_out()
    array(['mahalanobis_layer0'], dtype=object)
    """

    _parameter_constraints = {
        "layer_sizes": [FeatureLayout, "array-like", str, None],
        "layers": [StrOptions({"all"}), Integral, str, list, tuple],
        "covariance": [StrOptions(set(_COVARIANCES))],
        "class_mean": [StrOptions({"predicted", "closest"})],
        "log": ["boolean"],
    }

    def __init__(self, layer_sizes=None, *, layers="all", covariance="ledoit_wolf",
                 class_mean="predicted", log=False):
        self.layer_sizes = layer_sizes
        self.layers = layers
        self.covariance = covariance
        self.class_mean = class_mean
        self.log = log

    def _layout(self, n_features):
        return check_layout(self.layer_sizes, n_features,
                            need_logits=self.class_mean == "predicted",
                            estimator="MahalanobisScorer")

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Class means and tied covariance of every scored layer.

        Parameters
        ----------
        X : array-like of shape (n_ref, n_features)
            Reference features (the classifier's training set), laid out as
            ``layer_sizes`` says; the logits are not used in fit.
        y : array-like of shape (n_ref,)
            Class of every reference row: its class index (logit column)
            when the layout has logits, any labels otherwise.

        Returns
        -------
        self : MahalanobisScorer
        """
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32],
                             y_numeric=False)
        layout = self._layout(X.shape[1])
        if layout.has_logits:
            y = _check_class_labels(y, layout.n_logits)
            classes, codes = np.unique(y, return_inverse=True)
        else:
            check_class_targets(y)
            classes, codes = np.unique(y, return_inverse=True)
        if classes.size < 2:
            raise ValueError(
                f"y holds 1 class ({classes[0]!r}) only: the Mahalanobis score "
                "compares class means, so pass the reference labels of at least "
                "2 classes (the classifier's training-set labels)"
            )
        if X.shape[0] <= classes.size:
            raise ValueError(
                f"{X.shape[0]} reference rows for {classes.size} classes: the tied "
                "covariance needs more rows than classes"
            )
        counts = np.bincount(codes, minlength=classes.size).astype(np.float64)
        layers = layout.select(self.layers)
        means, covs, chols, shrink = [], [], [], []
        for i in layers:
            Z = np.asarray(X[:, layout.slice_of(i)], dtype=np.float64)
            mu = np.zeros((classes.size, Z.shape[1]))
            np.add.at(mu, codes, Z)
            mu /= counts[:, None]
            cov, s = _tied_covariance(Z - mu[codes], self.covariance)
            chols.append(_precision_cholesky(cov, layout.names[i], self.covariance))
            means.append(mu)
            covs.append(cov)
            shrink.append(s)
        self.layout_ = layout
        self.layers_ = layers
        self.classes_ = classes
        self.means_ = means
        self.covariances_ = covs
        self.precision_cholesky_ = chols
        self.shrinkage_ = np.asarray(shrink)
        return self

    def transform(self, X):
        """Mahalanobis distance of every row in every scored layer.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Same layout as in fit.

        Returns
        -------
        D : ndarray of shape (n_samples, `len(layers_)`), float64
            One column per scored layer, in ``layers_`` order (``log1p`` of
            the distance when ``log=True``).
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        rows = None
        if self.class_mean == "predicted":
            rows = predicted_class_rows(X, self.layout_, self.classes_,
                                        "class_mean='closest'")
        out = np.empty((X.shape[0], len(self.layers_)))
        for j, i in enumerate(self.layers_):
            U = self.precision_cholesky_[j]
            Mw = self.means_[j] @ U
            sl = self.layout_.slice_of(i)
            step = max(1, _CHUNK_ENTRIES // U.shape[0])
            for start in range(0, X.shape[0], step):
                chunk = slice(start, start + step)
                Xw = np.asarray(X[chunk, sl], dtype=np.float64) @ U
                if rows is not None:
                    diff = Xw - Mw[rows[chunk]]
                    sq = np.einsum("ij,ij->i", diff, diff)
                else:
                    sq = np.full(Xw.shape[0], np.inf)
                    for m in Mw:
                        diff = Xw - m
                        np.minimum(sq, np.einsum("ij,ij->i", diff, diff), out=sq)
                out[chunk, j] = np.sqrt(sq)
        return np.log1p(out) if self.log else out

    def get_feature_names_out(self, input_features=None):
        """``mahalanobis_<layer name>`` for every scored layer.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Only checked against the input seen in ``fit``.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self)
        _check_feature_names_in(self, input_features)
        names = self.layout_.names
        return np.asarray([f"mahalanobis_{names[i]}" for i in self.layers_],
                          dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
