"""Kernel density peer on the last hidden layer (Feinman et al., 2017).

Read more in the :ref:`User Guide <evaluation>`.
"""

from numbers import Integral, Real

import numpy as np
from scipy.special import logsumexp
from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .._layout import FeatureLayout, check_layout
from .._validation import check_class_targets
from ..features.mahalanobis import predicted_class_rows
from ..knn import _check_class_labels
from ._peer_base import PeerScorer

__all__ = ["KernelDensityPeer"]

# query rows x reference rows of one squared-distance block (16 MiB of float64)
_BLOCK_ENTRIES = 2**21


def _log_kernel_sums(Q, R, r_sq, bandwidth):
    """``log sum_i exp(-||q - r_i||^2 / sigma^2)`` for every row of ``Q``."""
    out = np.empty(Q.shape[0])
    step = max(1, _BLOCK_ENTRIES // max(R.shape[0], 1))
    for a in range(0, Q.shape[0], step):
        q = Q[a : a + step]
        d2 = np.einsum("ij,ij->i", q, q)[:, None] - 2.0 * (q @ R.T) + r_sq[None, :]
        np.maximum(d2, 0.0, out=d2)
        out[a : a + step] = logsumexp(-d2 / bandwidth**2, axis=1)
    return out


class KernelDensityPeer(PeerScorer):
    """Kernel density of the predicted class on the last hidden layer (Feinman et al., 2017).

    For a row ``x`` with features ``phi(x)`` of the chosen hidden layer and
    the class ``c`` the DNN predicted (argmax of the logits block), the
    paper's density estimate over the reference rows ``X_c`` of that class is

    .. math::

        KD(x) = \\frac{1}{|X_c|} \\sum_{x_i \\in X_c}
                \\exp\\left(-\\frac{\\|\\phi(x) - \\phi(x_i)\\|^2}{\\sigma^2}\\right)

    and the score is ``-log KD(x)`` (low density = higher = more
    adversarial). ``classes="max"`` takes the largest density over classes
    instead (no logits needed). The paper's Bayesian-uncertainty feature
    (dropout at test time) needs the network and is not part of this peer.

    Parameters
    ----------
    layer_sizes : FeatureLayout, tuple of int or "single", default=None
        Column layout of ``X``; ``classes="predicted"`` needs the logits block.
    layer : int or str, default=-1
        The hidden layer (the paper: the last hidden layer).
    bandwidth : float, default=1.0
        ``sigma`` of the kernel, in the units of the layer's features (the
        paper tuned it per data set: 1.20 on MNIST, 0.26 on CIFAR-10).
    classes : {"predicted", "max"}, default="predicted"
        Density of the predicted class, or the largest over classes.

    Attributes
    ----------
    layout_ : FeatureLayout
    layer_ : int
    classes_ : ndarray of shape (n_classes,)
        Classes of the reference rows.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet import FeatureLayout
    >>> from sklearn_advdet.evaluation import KernelDensityPeer
    >>> layout = FeatureLayout([1, 2], has_logits=True)
    >>> X_ref = np.array([[0.0, 5, 0], [0.0, 5, 0], [3.0, 0, 5]])
    >>> peer = KernelDensityPeer(layout).fit(X_ref, [0, 0, 1])
    >>> peer.transform([[0.0, 5, 0], [1.0, 5, 0]]).round(3)
    array([[-0.],
           [ 1.]])
    """

    _parameter_constraints = {
        "layer_sizes": [FeatureLayout, "array-like", str, None],
        "layer": [Integral, str],
        "bandwidth": [Interval(Real, 0, None, closed="neither")],
        "classes": [StrOptions({"predicted", "max"})],
    }
    _score_name = "kernel_density_peer"

    def __init__(self, layer_sizes=None, *, layer=-1, bandwidth=1.0, classes="predicted"):
        self.layer_sizes = layer_sizes
        self.layer = layer
        self.bandwidth = bandwidth
        self.classes = classes

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Keep the reference rows of the layer, per class.

        Parameters
        ----------
        X : array-like of shape (n_ref, n_features)
            Reference features (the classifier's training set).
        y : array-like of shape (n_ref,)
            Class of every reference row (its logit column when the layout
            has logits).

        Returns
        -------
        self : KernelDensityPeer
        """
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=False)
        need = self.classes == "predicted"
        layout = check_layout(self.layer_sizes, X.shape[1], need_logits=need,
                              estimator="KernelDensityPeer")
        if layout.has_logits:
            y = _check_class_labels(y, layout.n_logits)
        else:
            check_class_targets(y)
        classes, codes = np.unique(y, return_inverse=True)
        layer = layout.select(self.layer)[0]
        Z = np.asarray(X[:, layout.slice_of(layer)], dtype=np.float64)
        refs = [np.ascontiguousarray(Z[codes == c]) for c in range(classes.size)]
        self.layout_ = layout
        self.layer_ = layer
        self.classes_ = classes
        self._refs = refs
        self._ref_sq = [np.einsum("ij,ij->i", R, R) for R in refs]
        return self

    def log_density(self, X):
        """``log KD(x)`` of every row for every class, shape (n_samples, n_classes)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        Q = np.asarray(X[:, self.layout_.slice_of(self.layer_)], dtype=np.float64)
        return np.column_stack([
            _log_kernel_sums(Q, R, sq, float(self.bandwidth)) - np.log(R.shape[0])
            for R, sq in zip(self._refs, self._ref_sq)
        ])

    def _score(self, X):
        logd = self.log_density(X)
        if self.classes == "max":
            return -logd.max(axis=1)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        col = predicted_class_rows(X, self.layout_, self.classes_, "classes='max'")
        return -logd[np.arange(X.shape[0]), col]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
