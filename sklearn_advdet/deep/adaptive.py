"""White-box attacks on a classifier *and* its detector (adaptive attacks).

They attack any :class:`torch.nn.Module` whose forward returns
``(logits, p_adv)`` -- such as :class:`sklearn_advdet.experiments.guarded.GuardedModel`
-- at an L-inf budget, and succeed on an image when the classifier is wrong
**and** the detector lets it through (``p_adv <= threshold``, the guard's
rule: it rejects where ``p_adv > threshold``).  When the module has a
``scores(x) -> (logits, detector_logit)`` method its logit is used (no
saturated sigmoid); otherwise ``logit(p_adv)``.

- :func:`adaptive_pgd`: PGD on ``CE(logits, y) - lam * detector_logit``
  (Carlini & Wagner 2017; Tramer et al. 2020), both gradients scaled to the
  same size per image so that ``lam`` is their relative weight, ``lam``
  searched over a grid,
  random restarts, and per image the best iterate kept: misclassified and
  undetected first, then the lowest ``p_adv``.
- :func:`orthogonal_pgd`: Bryniarski et al. (2022): while the classifier is
  still right, step along its gradient projected orthogonal to the
  detector's; once it is wrong, along the detector's gradient projected
  orthogonal to the classifier's.
- :func:`check_input_gradients`: both gradients must reach the input, finite
  and non-zero; a piecewise-constant step (the exact kNN class score) needs
  its surrogate (``GuardedModel(..., surrogate=True)``: soft kNN, BPDA).

This module imports no estimator: it needs only the module's outputs.
"""

import math

import torch
import torch.nn.functional as F

from ._checks import check_images, check_labels
from .attacks import AttackResult
# the attacks' shared machinery (the same eps/step checks, generator, eval-mode
# context, eps-ball and 8-bit rounding as every other attack)
from .attacks._base import (_attack_mode, _ball, _check_eps, _check_positive_int,
                            _check_step, _make_generator, _model_device_dtype, _quantize)

__all__ = ["adaptive_pgd", "orthogonal_pgd", "check_input_gradients",
           "evaluate_guarded", "GradientError"]


class GradientError(ValueError):
    """The input gradient of the classifier or of the detector is unusable."""


def _scores(guarded, x):
    """``(logits, detector_logit, p_adv)`` of a batch."""
    fn = getattr(guarded, "scores", None)
    if callable(fn):
        logits, z = fn(x)
        z = z.reshape(-1)
        return logits, z, torch.sigmoid(z)
    out = guarded(x)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError("the guarded module must return (logits, p_adv), got "
                        f"{type(out).__name__}")
    logits, p = out[0], out[1].reshape(-1)
    tiny = torch.finfo(p.dtype).tiny
    z = torch.log(p.clamp_min(tiny)) - torch.log1p(-p.clamp(max=1 - 1e-7))
    return logits, z, p


def _threshold(guarded, threshold):
    if threshold is None:
        threshold = getattr(guarded, "threshold", None)
    t = float("nan") if threshold is None else float(threshold)
    if math.isnan(t):
        raise ValueError("no detection threshold: pass threshold= or calibrate the "
                         "guarded model first (GuardedModel.calibrate)")
    return t


@torch.no_grad()
def evaluate_guarded(guarded, images, labels, threshold=None):
    """``(success, misclassified, p_adv)`` of images under the guard.

    ``success`` = misclassified and ``p_adv <= threshold`` (not rejected).
    """
    t = _threshold(guarded, threshold)
    x_in = check_images(images)
    device, dtype = _model_device_dtype(guarded, x_in)
    x = x_in.detach().to(device=device, dtype=dtype)
    labels = check_labels(labels, x.shape[0])
    with _attack_mode(guarded):
        logits, _, p = _scores(guarded, x)
    mis = logits.argmax(dim=1) != labels.to(logits.device)
    return mis & (p <= t), mis, p


def _gradients(guarded, x, y):
    """Per-image input gradients of the CE and of ``-detector_logit``, and the outputs."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits, z, p = _scores(guarded, x)
        ce = F.cross_entropy(logits, y, reduction="sum")
        # an output with no path to the input (a piecewise-constant step) has
        # a zero gradient, which check_input_gradients reports
        g_cls = (torch.autograd.grad(ce, x, retain_graph=True)[0] if ce.requires_grad
                 else torch.zeros_like(x))
        g_det = (torch.autograd.grad(-z.sum(), x)[0] if z.requires_grad
                 else torch.zeros_like(x))
    return g_cls, g_det, logits.detach(), p.detach()


def check_input_gradients(guarded, images, labels):
    """Check that both gradients reach the input, finite and non-zero.

    Returns
    -------
    dict
        ``"classifier"`` and ``"detector"``: the share of images whose
        gradient is non-zero.

    Raises
    ------
    GradientError
        A non-finite gradient, or one that is zero on every image (a step
        without a useful gradient: use the surrogate, e.g.
        ``GuardedModel(..., surrogate=True)`` for kNN class scores).
    """
    x_in = check_images(images)
    device, dtype = _model_device_dtype(guarded, x_in)
    x = x_in.detach().to(device=device, dtype=dtype)
    y = check_labels(labels, x.shape[0])
    with _attack_mode(guarded):
        g_cls, g_det, _, _ = _gradients(guarded, x, y.to(x.device))
    out = {}
    for name, g in (("classifier", g_cls), ("detector", g_det)):
        if not bool(torch.isfinite(g).all()):
            raise GradientError(
                f"the {name}'s input gradient holds NaN or inf: a step divides by a "
                "zero distance or norm; check the guarded model's steps")
        nonzero = g.flatten(1).abs().amax(dim=1) > 0
        if not bool(nonzero.any()):
            fix = ("use the differentiable surrogate (GuardedModel(..., surrogate=True): "
                   "soft kNN as BPDA) or, for a tree ensemble, a differentiable last "
                   "step (logistic regression, MLP) to attack through"
                   if name == "detector" else "check that the model is differentiable")
            raise GradientError(
                f"the {name}'s input gradient is zero on every image: a step is "
                f"piecewise constant (e.g. the exact kNN class score, gradient-boosted "
                f"trees); {fix}")
        out[name] = float(nonzero.float().mean())
    return out


class _Best:
    """Per image the best iterate: success, then misclassified, then lowest p_adv."""

    def __init__(self, x, logits, p, y, t):
        self.images = x.clone()
        self.tier, self.p = self._tier(logits, p, y, t), p.clone()
        self.y, self.t = y, t

    @staticmethod
    def _tier(logits, p, y, t):
        mis = logits.argmax(dim=1) != y
        return mis.long() + (mis & (p <= t)).long()

    def update(self, x, logits, p):
        tier = self._tier(logits, p, self.y, self.t)
        better = (tier > self.tier) | ((tier == self.tier) & (p < self.p))
        self.images[better] = x[better].detach()
        self.tier = torch.where(better, tier, self.tier)
        self.p = torch.where(better, p, self.p)


def _prepare(guarded, images, labels, eps, alpha, n_iter, n_restarts, threshold):
    eps = _check_eps(eps, attack="adaptive attack")
    n_iter = _check_positive_int(n_iter, "n_iter")
    _check_positive_int(n_restarts, "n_restarts")
    alpha = 2.5 * eps / n_iter if alpha is None else _check_step(alpha, "alpha")
    t = _threshold(guarded, threshold)
    x_in = check_images(images)
    device, dtype = _model_device_dtype(guarded, x_in)
    x = x_in.detach().to(device=device, dtype=dtype)
    y = check_labels(labels, x_in.shape[0]).to(device)
    return eps, n_iter, alpha, t, x_in, x, y


def _random_start(x, eps, generator):
    noise = (torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2.0 - 1.0) * eps
    return (x + noise.to(x.device)).clamp(0.0, 1.0)


def _finish(guarded, best, x, x_in, y, eps, t, quantize):
    adv = best.images
    if quantize:
        adv = _quantize(adv, x, eps)
    with torch.no_grad():
        logits, _, p = _scores(guarded, adv)
    pred = logits.argmax(dim=1)
    success = (pred != y) & (p <= t)
    return AttackResult(images=adv.to(device=x_in.device, dtype=x_in.dtype),
                        success=success.to(x_in.device), predictions=pred.to(x_in.device))


def _run(guarded, x, y, eps, alpha, n_iter, best, start, direction):
    """``n_iter`` signed steps from ``start`` along ``direction(g_cls, g_det, ...)``."""
    lo, hi = _ball(x, eps)
    adv = start
    for _ in range(n_iter):
        g_cls, g_det, logits, p = _gradients(guarded, adv, y)
        best.update(adv, logits, p)
        step = direction(g_cls, g_det, logits, p)
        adv = torch.minimum(torch.maximum(adv + alpha * step.sign(), lo), hi).detach()
    with torch.no_grad():
        logits, _, p = _scores(guarded, adv)
    best.update(adv, logits, p)


def adaptive_pgd(guarded, images, labels, eps, *, lam=(0.1, 1.0, 10.0), n_iter=50,
                 alpha=None, n_restarts=1, random_state=None, quantize=False,
                 threshold=None):
    """L-inf PGD on the classifier's CE minus ``lam`` times the detector's logit.

    Each step follows the sign of ``u(grad CE) - lam * u(grad detector_logit)``,
    where ``u`` divides a gradient by its mean absolute value per image, so
    that ``lam`` is the relative weight of the two terms whatever their
    scales (the CE gradient of a confidently classified image can be 10^5
    times smaller than the detector's).

    Parameters
    ----------
    guarded : torch.nn.Module
        Forward returns ``(logits, p_adv)`` (e.g. a GuardedModel).
    images : Tensor of shape (N, C, H, W)
        Float images in [0, 1] (on the module's device).
    labels : Tensor of shape (N,)
        True classes.
    eps : float
        L-inf budget in [0, 1] units (``eps_from_255(8)``).
    lam : float or sequence of float, default=(0.1, 1.0, 10.0)
        Weights of the detector term searched; per image the best run wins.
    n_iter : int, default=50
        Steps per run.
    alpha : float, default=None
        Step size; None means ``2.5 * eps / n_iter``.
    n_restarts : int, default=1
        Random starts per ``lam``.
    random_state : int, RandomState, torch.Generator or None, default=None
        Seeds the random starts.
    quantize : bool, default=False
        Round the result to 8-bit levels inside the ball (success recomputed).
    threshold : float, default=None
        Detection threshold; None reads ``guarded.threshold``.

    Returns
    -------
    AttackResult
        ``success``: misclassified and ``p_adv <= threshold``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep.adaptive import adaptive_pgd
    >>> class Toy(torch.nn.Module):   # a linear classifier, its detector reads x[0]
    ...     def forward(self, x):
    ...         f = x.flatten(1)
    ...         logits = torch.stack([f[:, 0] - f[:, 1], f[:, 1] - f[:, 0]], dim=1)
    ...         return logits, torch.sigmoid(20 * (f[:, 2] - 0.5))
    >>> x = torch.tensor([[0.6, 0.4, 0.45, 0.5]]).reshape(1, 1, 2, 2)
    >>> r = adaptive_pgd(Toy(), x, torch.tensor([0]), 0.2, threshold=0.5, random_state=0)
    >>> r.success
    tensor([True])
    """
    eps, n_iter, alpha, t, x_in, x, y = _prepare(guarded, images, labels, eps, alpha,
                                                 n_iter, n_restarts, threshold)
    lams = [float(lam)] if isinstance(lam, (int, float)) else [float(v) for v in lam]
    if not lams or any(not math.isfinite(v) or v < 0 for v in lams):
        raise ValueError(f"lam must be a non-negative float or a non-empty list of them, "
                         f"got {lam!r}")
    generator = _make_generator(random_state)
    with _attack_mode(guarded):
        with torch.no_grad():
            logits, _, p = _scores(guarded, x)
        best = _Best(x, logits, p, y, t)
        for weight in lams:
            def direction(g_cls, g_det, logits, p, weight=weight):
                return _unit(g_cls) + weight * _unit(g_det)
            for _ in range(int(n_restarts)):
                _run(guarded, x, y, eps, alpha, n_iter, best,
                     _random_start(x, eps, generator), direction)
        return _finish(guarded, best, x, x_in, y, eps, t, quantize)


def _unit(g):
    """``g`` divided by its mean absolute value, per image (zero stays zero).

    The CE gradient of a confidently classified image can be 10^5 times
    smaller than the detector logit's: without this, ``lam`` would weigh
    the detector term by that accident of scale, and the sign step would
    follow the detector alone.
    """
    scale = g.flatten(1).abs().mean(dim=1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return g / scale.reshape((-1,) + (1,) * (g.ndim - 1))


def _orthogonal(a, b):
    """Per image, ``a`` minus its projection on ``b`` (``a`` where ``b`` is 0)."""
    af, bf = a.flatten(1), b.flatten(1)
    bb = (bf * bf).sum(dim=1, keepdim=True)
    coef = (af * bf).sum(dim=1, keepdim=True) / torch.where(bb > 0, bb, torch.ones_like(bb))
    return (af - coef * bf).reshape(a.shape)


def orthogonal_pgd(guarded, images, labels, eps, *, n_iter=50, alpha=None, n_restarts=1,
                   random_state=None, quantize=False, threshold=None):
    """Orthogonal projected gradient descent (Bryniarski et al., 2022).

    At each step, per image: while the classifier is right, the classifier's
    CE gradient projected orthogonal to the detector's gradient (fooling
    the classifier without raising the detector); once it is wrong, the
    gradient lowering the detector's logit projected orthogonal to the
    classifier's (lowering ``p_adv`` without undoing the misclassification).
    Signed L-inf steps; the best iterate per image is kept as in
    :func:`adaptive_pgd`, whose parameters these are.

    Returns
    -------
    AttackResult
    """
    eps, n_iter, alpha, t, x_in, x, y = _prepare(guarded, images, labels, eps, alpha,
                                                 n_iter, n_restarts, threshold)
    generator = _make_generator(random_state)

    def direction(g_cls, g_det, logits, p):
        wrong = (logits.argmax(dim=1) != y).reshape((-1,) + (1,) * (g_cls.ndim - 1))
        return torch.where(wrong, _orthogonal(g_det, g_cls), _orthogonal(g_cls, g_det))

    with _attack_mode(guarded):
        with torch.no_grad():
            logits, _, p = _scores(guarded, x)
        best = _Best(x, logits, p, y, t)
        for _ in range(int(n_restarts)):
            _run(guarded, x, y, eps, alpha, n_iter, best,
                 _random_start(x, eps, generator), direction)
        return _finish(guarded, best, x, x_in, y, eps, t, quantize)
