"""Peer detectors from the literature as one-column score transformers.

Every peer reads the package's feature matrix ``X`` through its
``layer_sizes`` (the one column convention) and outputs **one column,
higher = more adversarial**, so that it composes with
:class:`~sklearn_advdet.ScoreThresholdDetector` (``direction="high"``) or a
:class:`~sklearn.linear_model.LogisticRegression` in a Pipeline:

- :class:`MaxSoftmaxPeer`: ``1 - max_c softmax(z / T)_c`` (Hendrycks & Gimpel 2017);
- :class:`EnergyPeer`: ``-T logsumexp(z / T)`` (Liu et al. 2020);
- :class:`MahalanobisPeer`: Mahalanobis distance on one layer (Lee et al. 2018);
- :class:`LIDPeer`: LID of one layer (Ma et al. 2018);
- :class:`~sklearn_advdet.evaluation.DeepKNNPeer`: k-th NN distance of the
  L2-normalised penultimate features (Sun et al. 2022);
- :class:`~sklearn_advdet.evaluation.KernelDensityPeer`: ``-log`` kernel
  density of the predicted class on the last hidden layer (Feinman et al. 2017);
- :class:`~sklearn_advdet.evaluation.DkNNCredibilityPeer`: ``1 -`` the Deep
  k-NN credibility (Papernot & McDaniel 2018).

The Mahalanobis and LID peers are the package's
:class:`~sklearn_advdet.MahalanobisScorer` and
:class:`~sklearn_advdet.LIDScorer` on one layer; the logit peers reuse
:class:`~sklearn_advdet.LogitFeatures`.

Read more in the :ref:`User Guide <evaluation>`.
"""

from numbers import Integral, Real

import numpy as np
from sklearn.base import _fit_context, clone
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .._layout import FeatureLayout
from ..features.logit import LogitFeatures
from ._peer_base import PeerScorer

__all__ = ["MaxSoftmaxPeer", "EnergyPeer", "MahalanobisPeer", "LIDPeer", "PEERS"]

_LAYOUT = [FeatureLayout, "array-like", str, None]
_LAYER = [Integral, str]


class _LogitPeer(PeerScorer):
    _parameter_constraints = {
        "layer_sizes": _LAYOUT,
        "temperature": [Interval(Real, 0, None, closed="neither")],
    }
    _statistic = None

    def __init__(self, layer_sizes=None, *, temperature=1.0):
        self.layer_sizes = layer_sizes
        self.temperature = temperature

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the layout (nothing is learnt).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows with the logits as the last block.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        logit = LogitFeatures(self.layer_sizes, features=[self._statistic],
                              temperature=self.temperature).fit(X)
        self.logit_features_ = logit
        return self

    def _score(self, X):
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self._signed(self.logit_features_.transform(X)[:, 0])


class MaxSoftmaxPeer(_LogitPeer):
    """Maximum softmax probability baseline (Hendrycks & Gimpel, 2017).

    Score ``1 - max_c p_c`` with ``p = softmax(z / T)`` of the logits block:
    a confident prediction scores near 0.  No training: ``fit`` only checks
    the layout.  It sees attacks that leave the classifier unsure (DeepFool,
    CW) and is inverted on attacks run to a budget that leave it
    over-confident (PGD): see :class:`~sklearn_advdet.LogitFeatures`.

    Parameters
    ----------
    layer_sizes : FeatureLayout, tuple of int or "logits", default=None
        Column layout of ``X``; it must have a logits block.
    temperature : float, default=1.0
        Softmax temperature ``T``.

    Attributes
    ----------
    logit_features_ : LogitFeatures
        The fitted statistic.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet.evaluation import MaxSoftmaxPeer
    >>> Z = np.array([[4.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    >>> MaxSoftmaxPeer("logits").fit(Z).transform(Z).round(3)
    array([[0.035],
           [0.667]])
    """

    _statistic = "max_softmax"
    _score_name = "max_softmax_peer"

    @staticmethod
    def _signed(v):
        return 1.0 - v


class EnergyPeer(_LogitPeer):
    """Energy score (Liu et al., 2020): ``E(x) = -T logsumexp(z / T)``.

    Higher energy = less like the training data (the paper's sign: in-
    distribution samples have low energy). No training.

    Parameters
    ----------
    layer_sizes : FeatureLayout, tuple of int or "logits", default=None
        Column layout of ``X``; it must have a logits block.
    temperature : float, default=1.0
        ``T``.

    Attributes
    ----------
    logit_features_ : LogitFeatures
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet.evaluation import EnergyPeer
    >>> Z = np.array([[0.0, 0.0], [5.0, 0.0]])
    >>> EnergyPeer("logits").fit(Z).transform(Z).round(3)
    array([[-0.693],
           [-5.007]])
    """

    _statistic = "energy"
    _score_name = "energy_peer"

    @staticmethod
    def _signed(v):
        return v


class _WrappedPeer(PeerScorer):
    """A package transformer restricted to one layer (its one output column)."""

    def _inner(self):
        raise NotImplementedError

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fit the underlying scorer on the reference set.

        Parameters
        ----------
        X : array-like of shape (n_ref, n_features)
            Reference features (the classifier's training set).
        y : array-like of shape (n_ref,)
            Their classes.

        Returns
        -------
        self
        """
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=False)
        scorer = clone(self._inner()).fit(X, y)
        self.scorer_ = scorer
        return self

    def _score(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self.scorer_.transform(X)[:, 0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags


class MahalanobisPeer(_WrappedPeer):
    """Mahalanobis confidence score on one layer (Lee et al., 2018).

    :class:`~sklearn_advdet.MahalanobisScorer` on the one ``layer`` (default
    the last hidden layer, the penultimate features): distance to the
    closest class mean (the paper's ``M(x) = max_c -d_c(x)^2``, sign flipped
    so that higher = more adversarial) under the tied, shrunk covariance of
    the reference set. No input pre-processing and no layer ensemble (the
    paper's two extras): combine :class:`~sklearn_advdet.MahalanobisScorer`'s
    per-layer columns with a logistic regression for the ensemble.

    Parameters
    ----------
    layer_sizes : FeatureLayout, tuple of int or "single", default=None
    layer : int or str, default=-1
        The hidden layer scored.
    covariance : {"ledoit_wolf", "oas", "empirical"}, default="ledoit_wolf"
    class_mean : {"closest", "predicted"}, default="closest"
        ``"predicted"`` needs the logits block.

    Attributes
    ----------
    scorer_ : MahalanobisScorer
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet.evaluation import MahalanobisPeer
    >>> rng = np.random.RandomState(0)
    >>> X_ref = np.r_[rng.normal(size=(50, 2)), rng.normal(size=(50, 2)) + 5]
    >>> y_ref = np.r_[np.zeros(50), np.ones(50)]
    >>> peer = MahalanobisPeer("single").fit(X_ref, y_ref)
    >>> bool(peer.transform([[2.5, 2.5]])[0, 0] > peer.transform([[5.0, 5.0]])[0, 0])
    True
    """

    _parameter_constraints = {
        "layer_sizes": _LAYOUT,
        "layer": _LAYER,
        "covariance": [StrOptions({"ledoit_wolf", "oas", "empirical"})],
        "class_mean": [StrOptions({"closest", "predicted"})],
    }
    _score_name = "mahalanobis_peer"

    def __init__(self, layer_sizes=None, *, layer=-1, covariance="ledoit_wolf",
                 class_mean="closest"):
        self.layer_sizes = layer_sizes
        self.layer = layer
        self.covariance = covariance
        self.class_mean = class_mean

    def _inner(self):
        from ..features.mahalanobis import MahalanobisScorer

        return MahalanobisScorer(self.layer_sizes, layers=[self.layer],
                                 covariance=self.covariance, class_mean=self.class_mean)


class LIDPeer(_WrappedPeer):
    """Local intrinsic dimensionality of one layer (Ma et al., 2018).

    :class:`~sklearn_advdet.LIDScorer` on the one ``layer`` (default the
    last hidden layer): the maximum-likelihood LID estimate from the
    ``n_neighbors`` nearest reference distances. Adversarial regions have a
    higher LID. The paper's detector combines every layer with a logistic
    regression: use :class:`~sklearn_advdet.LIDScorer`'s columns for that.

    Parameters
    ----------
    layer_sizes : FeatureLayout, tuple of int or "single", default=None
    layer : int or str, default=-1
    n_neighbors : int, default=20

    Attributes
    ----------
    scorer_ : LIDScorer
    n_features_in_ : int
    """

    _parameter_constraints = {
        "layer_sizes": _LAYOUT,
        "layer": _LAYER,
        "n_neighbors": [Interval(Integral, 2, None, closed="left")],
    }
    _score_name = "lid_peer"

    def __init__(self, layer_sizes=None, *, layer=-1, n_neighbors=20):
        self.layer_sizes = layer_sizes
        self.layer = layer
        self.n_neighbors = n_neighbors

    def _inner(self):
        from ..features.lid import LIDScorer

        return LIDScorer(self.layer_sizes, layers=[self.layer], n_neighbors=self.n_neighbors)


#: peer name -> (class, what ``fit`` needs: "none", "reference" (X_ref, y_ref))
PEERS = {
    "max_softmax": ("MaxSoftmaxPeer", "none"),
    "energy": ("EnergyPeer", "none"),
    "mahalanobis": ("MahalanobisPeer", "reference"),
    "lid": ("LIDPeer", "reference"),
    "deep_knn": ("DeepKNNPeer", "reference"),
    "kernel_density": ("KernelDensityPeer", "reference"),
    "dknn_credibility": ("DkNNCredibilityPeer", "reference"),
}
