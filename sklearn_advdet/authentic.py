"""A detector fitted on authentic images only: flag what does not look authentic.

Read more in the :ref:`User Guide <authentic>`.
"""

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions, validate_params
from sklearn.utils.validation import (
    assert_all_finite,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from ._density import check_rows, conformal_pvalues, conformal_threshold, fit_and_calibrate
from ._progress import get_logger
from ._validation import check_binary_y

__all__ = ["AuthenticDensityDetector", "heldout_log_likelihood_scorer", "natural_error_report"]

_log = get_logger("authentic")


class AuthenticDensityDetector(ClassifierMixin, BaseEstimator):
    """One-class detector: a density model of authentic rows and a calibrated threshold.

    ``fit`` sees authentic rows only (no attack is needed); a row is flagged
    adversarial when its density score is lower than that of all but a
    ``target_fpr`` share of authentic rows held back for calibration. It
    works on any feature columns (use it after feature transformers such as
    :class:`~sklearn_advdet.LogitFeatures` or
    :class:`~sklearn_advdet.MahalanobisScorer` in a Pipeline) and reads no
    layout.

    Conventions (the package's, not scikit-learn's outlier detectors'):
    label 1 = adversarial, ``classes_ = [0, 1]``; ``score_samples`` is higher
    for more authentic rows; ``decision_function = threshold_ -
    score_samples`` is positive for rows predicted adversarial.

    The score is two-sided wherever the density is: a feature that attacks
    push to both tails (max softmax: PGD over-confident, DeepFool
    under-confident) is flagged at both ends, where a one-sided threshold on
    it flags one.

    Read more in the :ref:`User Guide <authentic>`.

    Parameters
    ----------
    density : {"gaussian", "gmm", "knn", "isolation_forest"} or estimator, \
            default="gaussian"
        Density model of the (standardised) authentic rows:

        - ``"gaussian"``: one Gaussian, covariance from ``covariance``;
        - ``"gmm"``: :class:`~sklearn.mixture.GaussianMixture` with
          ``n_components`` full-covariance components;
        - ``"knn"``: k-NN density estimate from the distance to the
          ``n_neighbors``-th nearest authentic training row (the package's
          exact search);
        - ``"isolation_forest"``: :class:`~sklearn.ensemble.IsolationForest`;
        - an estimator with ``fit`` and ``score_samples`` (higher = more
          typical), cloned.

        The first three give log-densities in the units of ``X`` (the
        standardisation's Jacobian is added back).
    covariance : {"ledoit_wolf", "oas", "empirical"}, default="ledoit_wolf"
        Covariance estimator of ``density="gaussian"``
        (:class:`~sklearn.covariance.LedoitWolf`,
        :class:`~sklearn.covariance.OAS` shrinkage, or the plain
        :class:`~sklearn.covariance.EmpiricalCovariance`).
    n_components : int, default=4
        Mixture components of ``density="gmm"``.
    n_neighbors : int, default=10
        ``k`` of ``density="knn"``.
    standardize : bool, default=True
        Standardise each column (mean 0, variance 1 on the density's training
        rows) before the density model.
    target_fpr : float, default=0.05
        Share of authentic rows allowed to be flagged; sets ``threshold_``.
    calibration : {"holdout", "cross"}, default="holdout"
        ``"holdout"``: the density is fitted on ``1 - calibration_size`` of
        the rows and the threshold is an order statistic of the others'
        scores, which guarantees a false-positive rate of at most
        ``target_fpr`` on new authentic rows exchangeable with them (exactly
        ``floor(target_fpr * (n_cal + 1)) / (n_cal + 1)`` on average for
        continuous scores). ``"cross"``: the threshold comes from
        out-of-fold scores of ``cv`` density models and the density is then
        refitted on all rows (no finite-sample guarantee; conservative in
        practice, as the final model has more rows).
    calibration_size : float or int, default=0.25
        For ``calibration="holdout"``: share (float in (0, 1)) or number
        (int) of rows held back for calibration.
    cv : int, default=5
        Folds for ``calibration="cross"``.
    drop_adversarial : bool, default=False
        When ``y`` marks rows adversarial (``y = 1``), drop them (their
        count is logged) instead of raising. Needed in supervised
        cross-validation, whose folds hold both kinds.
    random_state : int, RandomState instance or None, default=None
        Seeds the calibration split and folds; an int is also passed as is to
        the random density models (``"gmm"``, ``"isolation_forest"``).
    n_jobs : int, default=None
        Threads of the k-NN search and the isolation forest.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        ``[0, 1]``: authentic, adversarial.
    threshold_ : float
        Rows with ``score_samples < threshold_`` are predicted adversarial:
        the ``m``-th smallest calibration score, ``m = floor(target_fpr *
        (n_calibration_ + 1))``.
    calibration_scores_ : ndarray of shape (`n_calibration_`,)
        Sorted scores of the authentic calibration rows (out-of-fold for
        ``"cross"``).
    n_calibration_ : int
    scaler_ : StandardScaler or None
        Fitted standardisation of the final density model.
    density_ : estimator
        Fitted density model (on standardised columns).
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Column names of ``X``, when it had string column names.

    See Also
    --------
    heldout_log_likelihood_scorer : scorer for tuning without adversarial rows.
    natural_error_report : share of misclassified authentic images flagged.

    Notes
    -----
    ``predict_proba`` is not a posterior probability of being adversarial:
    column 0 is the conformal p-value ``(1 + #{calibration scores <= s}) /
    (n_calibration_ + 1)`` (the empirical tail probability of the score
    among authentic rows) and column 1 is one minus it. ``predict`` flags a
    row when that p-value is ``<= target_fpr``, not when column 1 exceeds
    one half.

    ``score(X, y=None)`` is the mean ``score_samples`` of the authentic rows
    of ``X`` (all rows when ``y`` is None), a held-out log-likelihood for the
    log-density options, so ``GridSearchCV`` tunes on authentic rows alone.
    Training rows score higher than new rows under ``"knn"`` (each is its own
    neighbour): score new data.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet import AuthenticDensityDetector
    >>> rng = np.random.RandomState(0)
    >>> X_authentic = rng.normal(size=(400, 2))
    >>> det = AuthenticDensityDetector(target_fpr=0.1, random_state=0).fit(X_authentic)
    >>> det.n_calibration_, det.classes_
    (100, array([0, 1]))
    >>> det.predict([[0.0, 0.1], [4.0, -4.0]])
    array([0, 1])
    >>> bool(det.decision_function([[4.0, -4.0]])[0] > 0)
    True
    """

    _parameter_constraints = {
        "density": [
            StrOptions({"gaussian", "gmm", "knn", "isolation_forest"}),
            HasMethods(["fit", "score_samples"]),
        ],
        "covariance": [StrOptions({"ledoit_wolf", "oas", "empirical"})],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "standardize": ["boolean"],
        "target_fpr": [Interval(Real, 0, 1, closed="neither")],
        "calibration": [StrOptions({"holdout", "cross"})],
        "calibration_size": [
            Interval(Real, 0, 1, closed="neither"),
            Interval(Integral, 1, None, closed="left"),
        ],
        "cv": [Interval(Integral, 2, None, closed="left")],
        "drop_adversarial": ["boolean"],
        "random_state": ["random_state"],
        "n_jobs": [Integral, None],
    }

    def __init__(
        self,
        density="gaussian",
        *,
        covariance="ledoit_wolf",
        n_components=4,
        n_neighbors=10,
        standardize=True,
        target_fpr=0.05,
        calibration="holdout",
        calibration_size=0.25,
        cv=5,
        drop_adversarial=False,
        random_state=None,
        n_jobs=None,
    ):
        self.density = density
        self.covariance = covariance
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.standardize = standardize
        self.target_fpr = target_fpr
        self.calibration = calibration
        self.calibration_size = calibration_size
        self.cv = cv
        self.drop_adversarial = drop_adversarial
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _authentic_rows(self, X, y):
        """X without the rows y marks adversarial (or an error saying what to do)."""
        if y is None:
            return X
        y = column_or_1d(y, warn=True)
        if y.dtype.kind == "f":
            assert_all_finite(y, input_name="y")
        check_consistent_length(X, y)
        adversarial = check_binary_y(y) == 1
        n_adv = int(adversarial.sum())
        if n_adv == 0:
            return X
        if not self.drop_adversarial:
            raise ValueError(
                f"y marks {n_adv} of {len(adversarial)} rows adversarial (y=1) but "
                "AuthenticDensityDetector fits on authentic rows only: pass only "
                "authentic rows (y=None or all 0), or drop_adversarial=True to "
                "drop the adversarial rows"
            )
        if n_adv == len(adversarial):
            raise ValueError(
                f"y marks all {n_adv} sample(s) adversarial: AuthenticDensityDetector "
                "needs authentic rows (y=0) to fit"
            )
        _log.info("drop_adversarial=True: dropped %d adversarial row(s) of %d; "
                  "fitting on %d authentic row(s)", n_adv, len(adversarial),
                  len(adversarial) - n_adv)
        return X[~adversarial]

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the density on authentic rows and calibrate ``threshold_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Authentic rows (features, e.g. from a transformer before this
            step in a Pipeline).
        y : array-like of shape (n_samples,), default=None
            ``None`` or detection labels; rows with ``y = 1`` raise a
            ValueError unless ``drop_adversarial=True``, which drops them.

        Returns
        -------
        self : AuthenticDensityDetector
        """
        X = validate_data(self, X, dtype=np.float64)
        X = self._authentic_rows(X, y)
        n = X.shape[0]
        check_rows(self, n)
        model, cal, where = fit_and_calibrate(self, X)
        if not np.all(np.isfinite(cal)):
            raise ValueError(
                "the density model gave non-finite scores to authentic calibration "
                "rows: check for constant or duplicated columns, or choose another "
                "density"
            )
        threshold, m = conformal_threshold(cal, float(self.target_fpr), where, n)
        _log.info("threshold at the %d-th smallest of %d calibration scores "
                  "(expected false-positive rate %.4f)", m, cal.size, m / (cal.size + 1))
        self.scaler_ = model.scaler
        self.density_ = model.density
        self._model = model
        self.calibration_scores_ = np.sort(cal)
        self.n_calibration_ = int(cal.size)
        self.threshold_ = threshold
        self.classes_ = np.array([0, 1])
        return self

    def score_samples(self, X):
        """Density score of each row: higher = more authentic.

        A log-density in the units of ``X`` for ``"gaussian"``, ``"gmm"``
        and ``"knn"``; the estimator's own ``score_samples`` otherwise.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self._model.score_samples(X)

    def decision_function(self, X):
        """``threshold_ - score_samples(X)``: positive = predicted adversarial.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        decision : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        return self.threshold_ - self.score_samples(X)

    def predict(self, X):
        """1 (adversarial) where ``score_samples(X) < threshold_``, else 0.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        return (self.decision_function(X) > 0).astype(self.classes_.dtype)

    def predict_proba(self, X):
        """Conformal p-value (column 0) and its complement (column 1).

        Not a calibrated posterior: column 0 is the empirical tail
        probability ``(1 + #{calibration scores <= s}) / (n_calibration_ + 1)``
        of the row's score ``s`` among authentic calibration rows. For a new
        authentic row it is (super-)uniform, so ``column 0 <= target_fpr``
        is exactly what ``predict`` flags.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, 2)
        """
        check_is_fitted(self)
        p = conformal_pvalues(self.calibration_scores_, self.score_samples(X))
        return np.column_stack([p, 1.0 - p])

    def score(self, X, y=None, sample_weight=None):
        """Mean ``score_samples`` of the authentic rows of ``X``.

        A held-out log-likelihood (per row) for the log-density options, so
        ``GridSearchCV(det, grid).fit(X_authentic)`` tunes with no
        adversarial rows. Scores of different density families are on
        different scales: compare settings within one family (or the three
        log-densities).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None
            When given, only the rows with ``y = 0`` are scored.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the mean.

        Returns
        -------
        score : float
        """
        s = self.score_samples(X)
        keep = np.ones(s.size, dtype=bool)
        if y is not None:
            check_consistent_length(s, y)
            keep = check_binary_y(y) == 0
            if not keep.any():
                raise ValueError("y marks every row adversarial: score needs authentic rows (y=0)")
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)[keep]
        return float(np.average(s[keep], weights=w))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.classifier_tags.poor_score = True
        tags.target_tags.required = False
        return tags


def heldout_log_likelihood_scorer(estimator, X, y=None):
    """Scorer: mean ``score_samples`` of the authentic rows (``y == 0``) of ``X``.

    For ``GridSearchCV(..., scoring=heldout_log_likelihood_scorer)`` on a
    detector (or a Pipeline ending in one) with ``score_samples``, higher =
    more authentic; it needs no adversarial rows and, with ``y`` given, ignores
    them (so it can sit beside ``"roc_auc"`` in a multi-metric search).

    Parameters
    ----------
    estimator : fitted estimator with ``score_samples``
        The detector, or a Pipeline ending in one.
    X : array-like of shape (n_samples, n_features)
        Held-out rows.
    y : array-like of shape (n_samples,), default=None
        Detection labels; the rows with ``y = 1`` are left out. ``None``
        scores every row.

    Returns
    -------
    score : float
        Mean score of the authentic rows (higher = better fit).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet import AuthenticDensityDetector, heldout_log_likelihood_scorer
    >>> X = np.random.RandomState(0).normal(size=(200, 2))
    >>> det = AuthenticDensityDetector(random_state=0).fit(X[:100])
    >>> bool(heldout_log_likelihood_scorer(det, X[100:]) < 0)
    True
    """
    s = np.asarray(estimator.score_samples(X), dtype=np.float64)
    if y is not None:
        check_consistent_length(s, y)
        s = s[check_binary_y(y) == 0]
        if s.size == 0:
            raise ValueError("y marks every row adversarial: the scorer needs authentic rows (y=0)")
    return float(s.mean())


@validate_params(
    {"detector": [HasMethods(["predict"])], "X": ["array-like"], "true_class": ["array-like"],
     "pred_class": ["array-like"]},
    prefer_skip_nested_validation=True,
)
def natural_error_report(detector, X, true_class, pred_class):
    """Share of authentic images flagged, split by whether the classifier was right.

    The classifier's natural errors (authentic images it misclassifies) are
    not adversarial, but a detector that flags them warns of a wrong
    prediction all the same (the kNN paper reports this share).

    Parameters
    ----------
    detector : fitted estimator with ``predict``
        Any detector of the package (``predict`` gives 1 = adversarial).
    X : array-like of shape (n_samples, n_features)
        Authentic rows, as the detector takes them.
    true_class, pred_class : array-like of shape (n_samples,)
        True and predicted class of each image (e.g. from the logits).

    Returns
    -------
    report : dict
        ``n_correct``, ``n_errors``, ``flagged_correct`` (share of correctly
        classified images flagged: the realised false-positive rate) and
        ``flagged_errors`` (share of natural errors flagged; NaN with no
        error).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet import AuthenticDensityDetector, natural_error_report
    >>> rng = np.random.RandomState(0)
    >>> det = AuthenticDensityDetector(random_state=0).fit(rng.normal(size=(400, 2)))
    >>> X = np.array([[0.0, 0.0], [0.1, 0.2], [5.0, 5.0]])
    >>> natural_error_report(det, X, true_class=[3, 1, 2], pred_class=[3, 1, 7])
    {'n_correct': 2, 'n_errors': 1, 'flagged_correct': 0.0, 'flagged_errors': 1.0}
    """
    true_class, pred_class = np.asarray(true_class), np.asarray(pred_class)
    for name, labels in (("true_class", true_class), ("pred_class", pred_class)):
        if labels.ndim != 1:
            raise ValueError(f"{name} must hold one class per row of X (1-D), got shape "
                             f"{labels.shape}")
    if (true_class.dtype.kind in "biuf") != (pred_class.dtype.kind in "biuf"):
        raise TypeError(
            f"true_class ({true_class.dtype}) and pred_class ({pred_class.dtype}) must "
            "be labels of the same kind, both class indices or both names: they "
            "are compared row by row"
        )
    check_consistent_length(X, true_class, pred_class)
    flagged = np.asarray(detector.predict(X)) == 1
    wrong = true_class != pred_class
    n_err = int(wrong.sum())
    return {
        "n_correct": int((~wrong).sum()),
        "n_errors": n_err,
        "flagged_correct": float(flagged[~wrong].mean()) if (~wrong).any() else float("nan"),
        "flagged_errors": float(flagged[wrong].mean()) if n_err else float("nan"),
    }
