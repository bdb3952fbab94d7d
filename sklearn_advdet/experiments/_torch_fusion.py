"""Authentic-density and conformal-fusion detectors as torch modules.

:class:`~sklearn_advdet.AuthenticDensityDetector` (densities ``"gaussian"``
and ``"gmm"``) and :class:`~sklearn_advdet.ConformalFusionDetector` (make_detector's
``"authentic"`` and default ``"hybrid"`` modes) end in conformal p-values:
counts of calibration scores, a step function of the input.  The modules here
compute those counts exactly (``torch.searchsorted`` on the sorted calibration
scores, float64 as numpy computes them), so ``sigmoid(output) ==
predict_proba(X)[:, 1]``; the output is the logit of that probability,
``log p_adv - log(1 - p_adv)``, with ``p_adv`` floored at :data:`_P_FLOOR`
(``p_adv = 0`` for rows that look more authentic than every calibration row).

Attacks need a gradient where the counts have none.  In surrogate mode the
forward values stay the same and the backward pass is that of the
estimator's own ``decision_function`` (straight-through, BPDA): the density's
threshold minus its log-density for the authentic detector; for the fusion,
the largest of the two components' exceedances over their thresholds, each
in units of its spread.  A supervised component without a gradient (boosted
trees) lends its gradient to a differentiable ``classifier_surrogate`` fitted
on the same features, if one is given; otherwise only the density steers.
"""

import math

import numpy as np
import torch
from torch import nn

__all__ = ["convert_final", "DENSITY_STEPS"]

#: smallest p_adv the logit is taken of (the exact value is 0 there)
_P_FLOOR = 1e-12

#: the densities of AuthenticDensityDetector that convert
DENSITY_STEPS = ("gaussian", "gmm")


def _f64(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _logit_of(p_adv):
    p_adv = p_adv.clamp(min=_P_FLOOR)
    return (torch.log(p_adv) - torch.log1p(-p_adv)).to(torch.float32)


def _straight_through(value, smooth):
    """``value`` forward, the gradient of ``smooth`` backward."""
    return value.detach() + (smooth - smooth.detach()).to(value.dtype)


class _LogDensity(nn.Module):
    """``score_samples`` of a fitted AuthenticDensityDetector, in float64."""

    def __init__(self, det):
        super().__init__()
        model = det._model
        density = model.density
        kind = type(density).__name__
        scaler = model.scaler
        d = det.n_features_in_
        mean = np.zeros(d) if scaler is None else scaler.mean_
        scale = np.ones(d) if scaler is None else scaler.scale_
        self.register_buffer("mean", _f64(mean))
        self.register_buffer("scale", _f64(scale))
        if kind == "_GaussianDensity":
            self.register_buffer("location", _f64(density.location_)[None])
            # P = L L^T: ||(z - mu) L||^2 is the Mahalanobis distance, one GEMM
            self.register_buffer("chol", _f64(np.linalg.cholesky(density.precision_))[None])
            self.register_buffer("log_weight", _f64([0.0]))
            const = -0.5 * (d * math.log(2.0 * math.pi) + density.logdet_)
            self.register_buffer("const", _f64([const]))
        elif kind == "GaussianMixture" and density.covariance_type == "full":
            self.register_buffer("location", _f64(density.means_))
            self.register_buffer("chol", _f64(density.precisions_cholesky_))
            self.register_buffer("log_weight", _f64(np.log(density.weights_)))
            logdet = np.log(np.diagonal(density.precisions_cholesky_, axis1=1, axis2=2)).sum(1)
            self.register_buffer("const", _f64(-0.5 * d * math.log(2.0 * math.pi) + logdet))
        else:
            what = (f"density={det.density!r}" if isinstance(det.density, str)
                    else f"the density estimator {kind}")
            raise TypeError(
                f"cannot convert AuthenticDensityDetector with {what} to torch: the "
                f"guarded model converts the densities {', '.join(DENSITY_STEPS)} "
                "(full covariance); refit it with density='gaussian'")
        self.log_jacobian = float(model.log_jacobian)

    def forward(self, X):
        Z = (X.to(torch.float64) - self.mean) / self.scale
        # (n, components, d): each component's whitened difference
        W = torch.einsum("nd,kde->nke", Z, self.chol) - torch.einsum(
            "kd,kde->ke", self.location, self.chol)
        log_prob = self.const - 0.5 * (W * W).sum(dim=2)
        return torch.logsumexp(log_prob + self.log_weight, dim=1) + self.log_jacobian


def _check_authentic(det):
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(det)
    if not hasattr(det, "_model"):
        raise TypeError(f"{type(det).__name__} is not a fitted AuthenticDensityDetector")


class _AuthenticHead(nn.Module):
    """AuthenticDensityDetector as a last step: ``predict_proba[:, 1]`` as a logit.

    ``p = (1 + #{calibration scores <= s}) / (n + 1)`` of the log-density
    ``s``; ``p_adv = 1 - p``.
    """

    def __init__(self, det, surrogate):
        super().__init__()
        _check_authentic(det)
        self.density = _LogDensity(det)
        self.register_buffer("calibration", _f64(det.calibration_scores_))
        self.threshold = float(det.threshold_)
        self.surrogate = bool(surrogate)

    def forward(self, X):
        s = self.density(X)
        n = self.calibration.shape[0]
        below = torch.searchsorted(self.calibration, s.detach().contiguous(), right=True)
        z = _logit_of(1.0 - (1.0 + below.to(torch.float64)) / (n + 1.0))
        if self.surrogate:
            z = _straight_through(z, self.threshold - s)
        return z


class _FusionHead(nn.Module):
    """ConformalFusionDetector as a last step: ``predict_proba[:, 1]`` as a logit."""

    def __init__(self, det, surrogate, convert_classifier, classifier_surrogate=None):
        super().__init__()
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(det)
        self.classifier = convert_classifier(det.classifier_)
        density = det.density_
        if type(density).__name__ != "AuthenticDensityDetector":
            raise TypeError(
                f"cannot convert ConformalFusionDetector's density "
                f"{type(density).__name__} to torch: the guarded model converts "
                "AuthenticDensityDetector (density='gaussian' or 'gmm'), the default")
        _check_authentic(density)
        self.density = _LogDensity(density)
        self.register_buffer("calibration", _f64(det.calibration_scores_.T.copy()))
        self.register_buffer("thresholds", _f64(det.thresholds_))
        self.register_buffer("scales", _f64(det.scales_))
        self.classifier_surrogate = classifier_surrogate
        self.surrogate = bool(surrogate)

    def forward(self, X):
        s_cls = self.classifier(X).to(torch.float64)
        if self.surrogate and self.classifier_surrogate is not None:
            s_cls = _straight_through(s_cls, self.classifier_surrogate(X).to(torch.float64))
        S = torch.stack([s_cls, -self.density(X)])  # (2, n): higher = more adversarial
        n = self.calibration.shape[1]
        at_least = n - torch.searchsorted(self.calibration, S.detach().contiguous(),
                                          right=False)
        p_k = (1.0 + at_least.to(torch.float64)) / (n + 1.0)
        p = torch.clamp(2.0 * p_k.min(dim=0).values, max=1.0)
        z = _logit_of(1.0 - p)
        if self.surrogate:
            decision = ((S - self.thresholds[:, None]) / self.scales[:, None]).max(dim=0).values
            z = _straight_through(z, decision)
        return z


def convert_final(est, convert_classifier, surrogate=False, classifier_surrogate=None):
    """AuthenticDensityDetector or ConformalFusionDetector (last step) as a torch module.

    ``convert_classifier(est)`` converts the fusion's supervised component to
    a module giving its score (decision function or logit), in float64 where
    it is a sum (boosted trees); ``classifier_surrogate``: a converted module
    on the fusion's features whose gradient stands in for that component's
    in surrogate mode.
    """
    if type(est).__name__ == "AuthenticDensityDetector":
        return _AuthenticHead(est, surrogate)
    return _FusionHead(est, surrogate, convert_classifier, classifier_surrogate)
