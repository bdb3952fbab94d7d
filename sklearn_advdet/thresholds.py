"""Thresholding one detection score: :class:`ScoreThresholdDetector`.

Turns a score column (a kNN class score, an LID, a Mahalanobis distance,
...) into an adversarial / authentic decision at the equal-error rate or at
a target false-positive rate chosen on validation data.
"""

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from ._validation import check_label_types
from .metrics import eer_threshold

__all__ = ["ScoreThresholdDetector"]


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
        :class:`~sklearn_advdet.KNNClassScorer`'s output).
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

    @_fit_context(prefer_skip_nested_validation=True)
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
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_label_types(y)
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
