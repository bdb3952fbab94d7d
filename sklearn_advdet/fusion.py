"""Flag what a supervised detector *or* an authentic-only density flags.

Read more in the :ref:`User Guide <authentic>`.
"""

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context, clone
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from ._validation import check_binary_y, check_sample_weight, require_both_classes

__all__ = ["ConformalFusionDetector", "default_density"]


def _classifier_scores(est, X):
    """The supervised component's score: higher = more adversarial."""
    if hasattr(est, "decision_function"):
        return np.asarray(est.decision_function(X), dtype=np.float64).ravel()
    return np.asarray(est.predict_proba(X)[:, 1], dtype=np.float64)


def _density_scores(est, X):
    """The density component's score: minus ``score_samples`` (higher = less authentic)."""
    return -np.asarray(est.score_samples(X), dtype=np.float64).ravel()


def _spread(c):
    """Robust scale of calibration scores: IQR, else std, else 1."""
    q1, q3 = np.percentile(c, [25, 75])
    for s in (q3 - q1, np.std(c)):
        if np.isfinite(s) and s > 0:
            return float(s)
    return 1.0


def default_density(n_jobs=None):
    """The density component used when none is given.

    :class:`~sklearn_advdet.AuthenticDensityDetector` (Gaussian, Ledoit-Wolf)
    fitted on all the rows it gets: only its ``score_samples`` is used (the
    fusion calibrates on its own held-back rows), so its own threshold is
    cross-fitted cheaply (``cv=2``) at a loose ``target_fpr`` rather than
    holding rows back.
    """
    from .authentic import AuthenticDensityDetector

    return AuthenticDensityDetector(calibration="cross", cv=2, target_fpr=0.5, n_jobs=n_jobs)


class ConformalFusionDetector(ClassifierMixin, BaseEstimator):
    """A supervised detector and an authentic-only density, fused by conformal p-values.

    Supervised detectors learn the cues of the attacks they were trained on
    and miss the others (trained on FGSM + PGD, the default detector's AUC on
    DeepFool falls to about 0.65 on CIFAR ResNet-20); a density model of
    authentic rows flags whatever does not look authentic but is weaker on
    the attacks a supervised detector knows. This estimator runs both on the
    same features and flags a row when **either** flags it:

    1. ``calibration_size`` of the authentic rows are held back;
    2. ``classifier`` is fitted on the other rows (authentic and
       adversarial), ``density`` on the other authentic rows;
    3. each component's score (higher = more adversarial: the classifier's
       ``decision_function`` or ``predict_proba[:, 1]``, minus the density's
       ``score_samples``) gets a conformal p-value against the held-back
       rows, ``p_k = (1 + #{calibration scores >= s}) / (n_calibration_ + 1)``;
    4. the fused p-value is Bonferroni's, ``min(1, 2 * min_k p_k)``, and a
       row is predicted adversarial when it is ``<= target_fpr``: on new
       authentic rows exchangeable with the held-back ones the false-positive
       rate is at most ``target_fpr``, whatever either component does.

    ``decision_function`` is the largest of the components' exceedances over
    their own thresholds, each in units of its calibration scores' spread
    (interquartile range): positive exactly where ``predict`` is 1, and a
    continuous ranking score for ROC curves.

    Read more in the :ref:`User Guide <authentic>`.

    Parameters
    ----------
    classifier : estimator, default=None
        Supervised binary classifier (cloned); None means
        ``HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05)``.
    density : estimator, default=None
        Density model fitted on authentic rows with ``score_samples`` (higher
        = more authentic), cloned; None means :func:`default_density`
        (:class:`~sklearn_advdet.AuthenticDensityDetector`'s Gaussian density,
        fitted on every authentic row it gets).
    target_fpr : float, default=0.05
        Largest share of authentic rows flagged by ``predict``.
    calibration_size : float or int, default=0.25
        Share (float in (0, 1)) or number (int) of the authentic rows held
        back for the p-values.
    random_state : int, RandomState instance or None, default=None
        Seeds the held-back draw; an int is also given to the components
        that take one (when their own is None).

    Attributes
    ----------
    classifier_ : estimator
        The fitted supervised component.
    density_ : estimator
        The fitted density component.
    calibration_scores_ : ndarray of shape (`n_calibration_`, 2)
        The held-back rows' scores of each component (columns: classifier,
        density), each column sorted.
    n_calibration_ : int
    thresholds_ : ndarray of shape (2,)
        Per component, the score above which its p-value is at most
        ``target_fpr / 2`` (the ``j``-th largest calibration score,
        ``j = floor(target_fpr / 2 * (n_calibration_ + 1))``, at least 1).
    scales_ : ndarray of shape (2,)
        Per component, the spread of its calibration scores.
    classes_ : ndarray of shape (2,)
        ``[0, 1]``: authentic, adversarial.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Column names of ``X``, when it had string column names.

    See Also
    --------
    AuthenticDensityDetector : the density component alone (no attack needed).
    make_detector : ``mode="hybrid"`` builds this on the default features.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet import ConformalFusionDetector
    >>> rng = np.random.RandomState(0)
    >>> authentic = rng.normal(size=(400, 2))
    >>> seen = rng.normal(size=(200, 2)) + [4.0, 0.0]     # the attack trained on
    >>> X, y = np.vstack([authentic, seen]), np.r_[np.zeros(400), np.ones(200)]
    >>> det = ConformalFusionDetector(random_state=0).fit(X, y)
    >>> unseen = [[0.0, -6.0]]                            # another direction
    >>> det.predict(unseen), det.predict([[4.0, 0.0]]), det.predict([[0.0, 0.0]])
    (array([1]), array([1]), array([0]))
    """

    _parameter_constraints = {
        "classifier": [HasMethods(["fit"]), None],
        "density": [HasMethods(["fit", "score_samples"]), None],
        "target_fpr": [Interval(Real, 0, 1, closed="neither")],
        "calibration_size": [
            Interval(Real, 0, 1, closed="neither"),
            Interval(Integral, 1, None, closed="left"),
        ],
        "random_state": ["random_state"],
    }

    def __init__(self, classifier=None, density=None, *, target_fpr=0.05,
                 calibration_size=0.25, random_state=None):
        self.classifier = classifier
        self.density = density
        self.target_fpr = target_fpr
        self.calibration_size = calibration_size
        self.random_state = random_state

    def _components(self, seed):
        from sklearn.ensemble import HistGradientBoostingClassifier

        cls = (HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05)
               if self.classifier is None else clone(self.classifier))
        den = default_density() if self.density is None else clone(self.density)
        for est in (cls, den):
            if "random_state" in est.get_params() and est.get_params()["random_state"] is None:
                est.set_params(random_state=seed)
        return cls, den

    def _split(self, authentic, rng):
        n = authentic.size
        size = self.calibration_size
        n_cal = int(np.floor(size * n)) if isinstance(size, Real) and size < 1 else int(size)
        if n_cal < 1 or n - n_cal < 2:
            raise ValueError(
                f"{n} authentic rows cannot give {n_cal} held-back calibration rows and "
                "at least 2 to fit the density: pass more authentic rows (y=0) or "
                "another calibration_size"
            )
        cal = rng.choice(authentic, size=n_cal, replace=False)
        return np.sort(cal)

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, sample_weight=None):
        """Fit both components and calibrate them on held-back authentic rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            1 adversarial, 0 authentic; both are needed.
        sample_weight : array-like of shape (n_samples,), default=None
            Passed to the classifier for its rows (e.g.
            :func:`~sklearn_advdet.balanced_sample_weight`).

        Returns
        -------
        self : ConformalFusionDetector
        """
        X, y = validate_data(self, X, y, dtype=np.float64)
        y = check_binary_y(y).astype(int)
        require_both_classes(y, "y")
        if sample_weight is not None:
            sample_weight = check_sample_weight(sample_weight, X.shape[0])
        rng = check_random_state(self.random_state)
        seed = self.random_state if isinstance(self.random_state, Integral) else None
        cal = self._split(np.flatnonzero(y == 0), rng)
        rest = np.setdiff1d(np.arange(X.shape[0]), cal)
        require_both_classes(y[rest], "y without the held-back authentic rows")
        classifier, density = self._components(seed)
        kwargs = {} if sample_weight is None else {"sample_weight": sample_weight[rest]}
        classifier.fit(X[rest], y[rest], **kwargs)
        density.fit(X[rest][y[rest] == 0])
        scores = np.column_stack([_classifier_scores(classifier, X[cal]),
                                  _density_scores(density, X[cal])])
        if not np.all(np.isfinite(scores)):
            raise ValueError("a component gave non-finite scores to authentic calibration "
                             "rows: check the features for constant or huge columns")
        scores = np.sort(scores, axis=0)
        n = scores.shape[0]
        # p_k <= target/2  <=>  fewer than j calibration scores >= s  <=>  s > j-th largest
        j = int(np.floor(self.target_fpr / 2 * (n + 1)))
        if j < 1:
            raise ValueError(
                f"{n} held-back calibration rows cannot give a p-value of "
                f"target_fpr / 2 = {self.target_fpr / 2:g}: it needs at least "
                f"{int(np.ceil(2 / self.target_fpr)) - 1}; pass more authentic rows, a "
                "larger calibration_size or a larger target_fpr"
            )
        thresholds = scores[n - j].copy()
        self.classifier_, self.density_ = classifier, density
        self.calibration_scores_ = scores
        self.n_calibration_ = n
        self.thresholds_ = thresholds
        self.scales_ = np.array([_spread(scores[:, 0]), _spread(scores[:, 1])])
        self.classes_ = np.array([0, 1])
        return self

    def _scores(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return np.column_stack([_classifier_scores(self.classifier_, X),
                                _density_scores(self.density_, X)])

    def p_values(self, X):
        """Per-component conformal p-values, shape (n_samples, 2)."""
        S = self._scores(X)
        n = self.n_calibration_
        out = np.empty_like(S)
        for k in range(2):
            at_least = n - np.searchsorted(self.calibration_scores_[:, k], S[:, k], side="left")
            out[:, k] = (1.0 + at_least) / (n + 1.0)
        return out

    def predict_proba(self, X):
        """Fused conformal p-value (column 0) and its complement (column 1).

        Column 0 is Bonferroni's ``min(1, 2 * min_k p_k)``, not a posterior
        probability of being authentic.
        """
        p = np.minimum(1.0, 2.0 * self.p_values(X).min(axis=1))
        return np.column_stack([p, 1.0 - p])

    def decision_function(self, X):
        """Largest exceedance of a component over its threshold, in units of its spread.

        Positive where :meth:`predict` is 1.
        """
        return ((self._scores(X) - self.thresholds_) / self.scales_).max(axis=1)

    def predict(self, X):
        """1 where the fused p-value is at most ``target_fpr``, else 0."""
        return (self.decision_function(X) > 0).astype(self.classes_.dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags
