"""Density models and conformal thresholds behind :class:`AuthenticDensityDetector`.

Private machinery: the one-Gaussian and k-NN log-density estimators (the two
density options scikit-learn has no estimator for), the fit of the density
model chosen by ``density=`` on standardised features, and the conformal
order statistic that turns authentic calibration scores into a threshold
with a false-positive-rate guarantee.
"""

import math
from numbers import Integral

import numpy as np
from scipy.special import gammaln
from sklearn.base import BaseEstimator, clone
from sklearn.utils import check_random_state
from sklearn.covariance import OAS, EmpiricalCovariance, LedoitWolf
from sklearn.ensemble import IsolationForest
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler

from .search import make_index

__all__ = []

_COVARIANCES = {"ledoit_wolf": LedoitWolf, "oas": OAS, "empirical": EmpiricalCovariance}

#: density options that are log-densities of the rows (the standardisation's
#: Jacobian is added back, so the score is in the units of X)
_LOG_DENSITIES = ("gaussian", "gmm", "knn")

# floor of the k-th neighbour distance (duplicated rows), so log r stays finite
_TINY_DISTANCE = np.finfo(np.float64).tiny


class _GaussianDensity(BaseEstimator):
    """One Gaussian with a (shrunk) covariance from :mod:`sklearn.covariance`."""

    def __init__(self, covariance="ledoit_wolf"):
        self.covariance = covariance

    def fit(self, Z):
        est = _COVARIANCES[self.covariance]().fit(Z)
        sign, logdet = np.linalg.slogdet(est.covariance_)
        if sign <= 0 or not np.isfinite(logdet):
            fix = ("use covariance='ledoit_wolf' or 'oas'" if self.covariance == "empirical"
                   else "pass more authentic rows")
            raise ValueError(
                f"the {self.covariance!r} covariance of the {Z.shape[0]} authentic "
                f"rows is singular (too few rows for {Z.shape[1]} features, or "
                f"constant columns): {fix}, or drop the constant columns"
            )
        self.location_ = est.location_
        self.precision_ = np.linalg.inv(est.covariance_)
        self.logdet_ = float(logdet)
        return self

    def score_samples(self, Z):
        diff = Z - self.location_
        maha = np.einsum("ij,ij->i", diff @ self.precision_, diff)
        d = Z.shape[1]
        return -0.5 * (d * math.log(2.0 * math.pi) + self.logdet_ + maha)


class _KNNDensity(BaseEstimator):
    """k-NN log-density ``log k - log n - log V_d - d log r_k`` (exact search).

    ``r_k`` is the distance to the k-th nearest fitted row, found by the
    package's exact search (:func:`sklearn_advdet.search.make_index`,
    ``backend="exact"``);
    ``V_d`` is the volume of the unit ball in ``d`` dimensions.
    """

    def __init__(self, n_neighbors=10, n_jobs=None):
        self.n_neighbors = n_neighbors
        self.n_jobs = n_jobs

    def fit(self, Z):
        Z = np.ascontiguousarray(Z, dtype=np.float64)
        self.index_ = make_index("exact", Z, n_jobs=self.n_jobs)
        self.n_fit_ = Z.shape[0]
        return self

    def kth_distance(self, Z):
        Z = np.ascontiguousarray(Z, dtype=np.float64)
        dist, _ = self.index_.query(Z, self.n_neighbors)
        return dist[:, self.n_neighbors - 1]

    def score_samples(self, Z):
        d = Z.shape[1]
        r = np.maximum(self.kth_distance(Z), _TINY_DISTANCE)
        log_unit_ball = 0.5 * d * math.log(math.pi) - gammaln(0.5 * d + 1.0)
        k, n = self.n_neighbors, self.n_fit_
        return math.log(k) - math.log(n) - log_unit_ball - d * np.log(r)


def density_template(det, seed):
    """The unfitted density model that ``det.density`` names (a clone)."""
    density = det.density
    if not isinstance(density, str):
        return clone(density)
    if density == "gaussian":
        return _GaussianDensity(covariance=det.covariance)
    if density == "gmm":
        return GaussianMixture(n_components=det.n_components, random_state=seed)
    if density == "knn":
        return _KNNDensity(n_neighbors=det.n_neighbors, n_jobs=det.n_jobs)
    return IsolationForest(random_state=seed, n_jobs=det.n_jobs)


def min_fit_rows(det):
    """Fewest rows the chosen density model can be fitted on."""
    if det.density == "gaussian":
        return 2
    if det.density == "gmm":
        return max(2, det.n_components)
    if det.density == "knn":
        return det.n_neighbors
    return 1


class DensityModel:
    """A fitted (scaler, density) pair and how to read its score."""

    def __init__(self, template, standardize, log_density):
        self.template = template
        self.standardize = standardize
        self.log_density = log_density

    def fit(self, X):
        self.scaler = StandardScaler().fit(X) if self.standardize else None
        Z = X if self.scaler is None else self.scaler.transform(X)
        if isinstance(self.template, GaussianMixture):
            # fewer distinct rows than components: k-means would start from
            # fewer clusters (a ConvergenceWarning), the mixture be degenerate
            k, distinct = self.template.n_components, len(np.unique(Z, axis=0))
            if distinct < k:
                raise ValueError(
                    f"the authentic rows fitted by the density hold {distinct} "
                    f"distinct point(s), fewer than n_components={k} of "
                    "density='gmm': pass more distinct authentic rows, lower "
                    "n_components, or use density='gaussian'"
                )
        self.density = clone(self.template).fit(Z)
        # log|det dZ/dX|: a log-density of Z becomes one of X
        if self.scaler is not None and self.log_density:
            self.log_jacobian = -float(np.sum(np.log(self.scaler.scale_)))
        else:
            self.log_jacobian = 0.0
        return self

    def score_samples(self, X):
        Z = X if self.scaler is None else self.scaler.transform(X)
        return np.asarray(self.density.score_samples(Z), dtype=np.float64) + self.log_jacobian


def holdout_sizes(det, n):
    """(rows for the density, rows for calibration) of ``calibration="holdout"``."""
    size = det.calibration_size
    n_cal = int(size) if isinstance(size, Integral) else int(math.ceil(size * n))
    return n - n_cal, n_cal


def check_rows(det, n):
    """Raise a ValueError saying what to do when ``n`` authentic rows are too few."""
    need = min_fit_rows(det)
    if det.calibration == "holdout":
        n_fit, n_cal = holdout_sizes(det, n)
        if n_fit < need or n_cal < 1:
            raise ValueError(
                f"AuthenticDensityDetector got {n} sample(s) ({n} authentic): "
                f"with calibration_size={det.calibration_size!r} that leaves "
                f"{n_fit} row(s) for the density (it needs at least {need}) and "
                f"{n_cal} for calibration: pass more authentic rows"
            )
    elif n < det.cv or n - math.ceil(n / det.cv) < need:
        raise ValueError(
            f"AuthenticDensityDetector got {n} sample(s) ({n} authentic): "
            f"cv={det.cv} folds need at least {det.cv} rows and each fold's "
            f"density at least {need}: pass more authentic rows or a smaller cv"
        )


def _new_model(det, seed):
    log_density = isinstance(det.density, str) and det.density in _LOG_DENSITIES
    return DensityModel(density_template(det, seed), det.standardize, log_density)


def fit_and_calibrate(det, X):
    """The fitted DensityModel, the authentic calibration scores, and their origin.

    ``"holdout"``: the model of the first ``n_fit`` rows of a random
    permutation scores the others. ``"cross"``: out-of-fold scores of ``cv``
    models, then the model of every row.
    """
    rng = check_random_state(det.random_state)
    seed = (int(det.random_state) if isinstance(det.random_state, Integral)
            else int(rng.randint(np.iinfo(np.int32).max)))
    if det.calibration == "holdout":
        n_fit, _ = holdout_sizes(det, X.shape[0])
        perm = rng.permutation(X.shape[0])
        model = _new_model(det, seed).fit(X[perm[:n_fit]])
        return model, model.score_samples(X[perm[n_fit:]]), (
            f"calibration_size={det.calibration_size!r}")
    cal = np.empty(X.shape[0])
    folds = KFold(det.cv, shuffle=True, random_state=rng.randint(np.iinfo(np.int32).max))
    for train, test in folds.split(X):
        cal[test] = _new_model(det, seed).fit(X[train]).score_samples(X[test])
    return _new_model(det, seed).fit(X), cal, f"cross-fitting with cv={det.cv}"


def conformal_rank(target_fpr, n_cal):
    """``m = floor(target_fpr * (n_cal + 1))``: the threshold's order statistic.

    A new authentic row is flagged when its score is below the m-th smallest
    of ``n_cal`` exchangeable calibration scores: with continuous scores that
    happens with probability exactly ``m / (n_cal + 1) <= target_fpr``.
    """
    return int(math.floor(target_fpr * (n_cal + 1) + 1e-9))


def conformal_threshold(cal_scores, target_fpr, where, n_rows):
    """The m-th smallest calibration score (see :func:`conformal_rank`)."""
    n_cal = cal_scores.size
    m = conformal_rank(target_fpr, n_cal)
    if m < 1:
        need = math.ceil(1.0 / target_fpr - 1.0 - 1e-9)
        raise ValueError(
            f"target_fpr={target_fpr} needs at least {need} authentic calibration "
            f"rows but {where} gives {n_cal} (from {n_rows} sample(s)): pass more "
            "authentic rows, a larger calibration_size, calibration='cross', or a "
            "larger target_fpr"
        )
    return float(np.partition(cal_scores, m - 1)[m - 1]), m


def conformal_pvalues(sorted_cal, scores):
    """``(1 + #{calibration scores <= s}) / (n_cal + 1)`` for every score."""
    below = np.searchsorted(sorted_cal, scores, side="right")
    return (1.0 + below) / (sorted_cal.size + 1.0)
