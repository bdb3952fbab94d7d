"""Statistics of the classifier's logits as detection features.

Read more in the :ref:`User Guide <features>`.
"""

from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import (
    _check_feature_names_in,
    check_is_fitted,
    validate_data,
)

from .._layout import FeatureLayout, check_layout

__all__ = ["LogitFeatures", "LOGIT_FEATURES"]

#: every feature :class:`LogitFeatures` computes, in its default column order
LOGIT_FEATURES = ("max_softmax", "margin", "energy", "entropy", "max_logit")


def _logit_statistics(Z, temperature):
    """All of :data:`LOGIT_FEATURES` for logits ``Z`` (float64), as a dict."""
    S = Z / temperature
    s_max = S.max(axis=1)
    E = np.exp(S - s_max[:, None])
    total = E.sum(axis=1)
    lse = s_max + np.log(total)  # logsumexp(z / T), computed stably
    P = E / total[:, None]
    # H = -sum p log p with log p = s - lse: H = lse - sum p s
    entropy = np.maximum(lse - np.einsum("ij,ij->i", P, S), 0.0)
    top2 = -np.partition(-Z, 1, axis=1)[:, :2]
    return {
        "max_softmax": 1.0 / total,  # exp(s_max - lse)
        "margin": top2[:, 0] - top2[:, 1],
        "energy": -temperature * lse,
        "entropy": entropy,
        "max_logit": top2[:, 0],
    }


class LogitFeatures(TransformerMixin, BaseEstimator):
    """Confidence statistics of the logits block, one column per statistic.

    For the logits ``z`` of a row (the last block of ``X``) and the
    temperature ``T``, with ``p = softmax(z / T)``:

    - ``max_softmax``: ``max_c p_c`` (Hendrycks & Gimpel 2017);
    - ``margin``: top-1 minus top-2 logit, ``z_(1) - z_(2)`` (raw logits);
    - ``energy``: ``-T * logsumexp(z / T)`` (Liu et al. 2020);
    - ``entropy``: ``-sum_c p_c log p_c`` in nats;
    - ``max_logit``: ``max_c z_c`` (raw logits).

    The rule: the temperature scales the softmax, so every statistic read
    from the softmax (max softmax, entropy, energy) uses it, and the two
    read from the raw logits (margin, max logit) do not.

    Read more in the :ref:`User Guide <features>`.

    Parameters
    ----------
    layer_sizes : FeatureLayout, tuple of int or "logits", default=None
        Column layout of ``X`` (the package's one rule, see
        :func:`~sklearn_advdet._layout.check_layout`). It must have a logits
        block: ``FeatureLayout(sizes, has_logits=True)`` or ``"logits"``
        (all of ``X`` is the logits). Hidden layers are never read.
    features : sequence of str, default=None
        Statistics to output, by name, in the given column order. ``None``
        outputs all of ``("max_softmax", "margin", "energy", "entropy",
        "max_logit")`` in that order.
    temperature : float, default=1.0
        ``T > 0`` of the softmax (see the table).

    Attributes
    ----------
    layout_ : FeatureLayout
        Layout of ``X`` (with its logits block).
    features_ : tuple of str
        Output statistics, in column order.
    n_features_in_ : int
        Number of columns of ``X``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Column names of ``X``, when it had string column names.

    Notes
    -----
    These statistics are adversarial **on both sides**: gradient attacks
    run to a fixed budget (PGD, BIM) leave the classifier over-confident
    (max softmax near 1, low entropy, large margin) while minimal-perturbation
    attacks (DeepFool, CW-L2) stop just past the decision boundary and leave
    it under-confident (margin near 0, high entropy).  A one-sided threshold
    on max softmax therefore inverts on PGD (an AUC near 0 was measured).
    Feed them to a model that can use both tails: a supervised non-linear
    detector (e.g. gradient boosting) or a density model of authentic rows
    (:class:`~sklearn_advdet.AuthenticDensityDetector`).

    ``fit`` learns nothing: it checks the layout against the width of ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet import LogitFeatures
    >>> logits = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    >>> lf = LogitFeatures("logits", features=["margin", "max_softmax"]).fit(logits)
    >>> lf.transform(logits).round(3)
    array([[2.   , 0.787],
           [0.   , 0.422]])
    >>> lf.get_feature_names_out()
    array(['margin', 'max_softmax'], dtype=object)
    """

    _parameter_constraints = {
        "layer_sizes": [FeatureLayout, "array-like", str, None],
        "features": ["array-like", None],
        "temperature": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, layer_sizes=None, *, features=None, temperature=1.0):
        self.layer_sizes = layer_sizes
        self.features = features
        self.temperature = temperature

    def _check_features(self):
        if self.features is None:
            return LOGIT_FEATURES
        names = tuple(self.features)
        if not names:
            raise ValueError(
                "features selects nothing: pass None (all statistics) or some "
                f"of {list(LOGIT_FEATURES)}"
            )
        unknown = [f for f in names if f not in LOGIT_FEATURES]
        if unknown:
            raise ValueError(
                f"unknown logit features {unknown!r}: choose among "
                f"{list(LOGIT_FEATURES)}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"features lists a statistic twice: {list(names)!r}")
        return names

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the layout against ``X`` (nothing is learnt).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows laid out as ``layer_sizes`` says, logits last.
        y : None
            Ignored.

        Returns
        -------
        self : LogitFeatures
        """
        features = self._check_features()
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        layout = check_layout(self.layer_sizes, X.shape[1], need_logits=True,
                              need_layers=False, estimator="LogitFeatures")
        if layout.n_logits < 2:
            raise ValueError(
                f"the logits block has {layout.n_logits} feature(s) but the "
                "statistics compare classes: pass the layout of a classifier "
                "with at least 2 logits"
            )
        self.layout_ = layout
        self.features_ = features
        return self

    def transform(self, X):
        """Compute the selected statistics of every row's logits.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        F : ndarray of shape (n_samples, `len(features_)`), float64
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        Z = np.asarray(X[:, self.layout_.logits_slice], dtype=np.float64)
        stats = _logit_statistics(Z, float(self.temperature))
        return np.column_stack([stats[f] for f in self.features_])

    def get_feature_names_out(self, input_features=None):
        """The statistics' names, in column order.

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
        return np.asarray(self.features_, dtype=object)
