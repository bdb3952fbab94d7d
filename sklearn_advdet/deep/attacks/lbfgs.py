"""The box-constrained L-BFGS attack of Szegedy et al. (2014)."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..._validation import check_real
from ._base import (
    _attack_mode,
    _ball,
    _check_eps,
    _check_positive_int,
    _finish,
    _forward,
    _make_generator,
    _predict,
    _prepare,
    _resolve_target,
)

__all__ = ["lbfgs"]


def lbfgs(
    model,
    images,
    labels,
    eps=None,
    *,
    target=None,
    c_init=1.0,
    binary_search_steps=6,
    max_iter=100,
    quantize=False,
    random_state=None,
):
    """Box-constrained L-BFGS attack (Szegedy et al., 2014).

    For each image, minimises ``c * ||delta||_2^2 + CE(model(x + delta), t)``
    over ``x + delta`` in [0, 1] (and in the eps-ball when ``eps`` is given)
    with scipy's L-BFGS-B, toward a target class ``t``.  The constant ``c`` is
    searched per image: raised after a success (smaller perturbation), lowered
    after a failure, first by factors of 10 and then by bisection in log
    space between the largest successful and the smallest failed value.  The
    result of each image is its successful attempt with the smallest L2
    perturbation, or, where no attempt succeeded, its last (most aggressive)
    attempt.

    The optimisation runs per batch on the CPU side (scipy works on float64
    numpy arrays); the model's forward and backward passes stay on its device.
    The images of a batch are optimised as one problem (their objectives are
    summed), as in cleverhans.

    Parameters
    ----------
    model, images, labels, quantize
        As in :func:`fgsm`.
    eps : float or None, default=None
        Optional L-inf bound; None (the paper) only keeps images in [0, 1].
    target : int, array of int or None, default=None
        Target classes; None draws a seeded random class != label.
    c_init : float, default=1.0
        First value of the constant weighting the squared L2 norm.
    binary_search_steps : int, default=6
        Number of values of ``c`` tried per image.
    max_iter : int, default=100
        Maximum number of L-BFGS-B iterations per value of ``c``.
    random_state : int, RandomState, torch.Generator or None, default=None
        Seeds the random targets.

    Returns
    -------
    result : AttackResult
        ``success`` says whether the prediction reached the target.

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep.attacks import lbfgs
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.copy_(torch.tensor([[1., -1, 0, 0], [-1, 1, 0, 0]]))
    ...     _ = model[1].bias.zero_()
    >>> x = torch.tensor([[0.6, 0.4, 0.5, 0.5]]).reshape(1, 1, 2, 2)
    >>> result = lbfgs(model, x, torch.tensor([0]), random_state=0)
    >>> result.target, result.success
    (tensor([1]), tensor([True]))
    >>> delta = (result.images - x).flatten()
    >>> bool(delta[0] < 0 < delta[1]) and bool((delta[2:] == 0).all())
    True
    """
    from scipy.optimize import Bounds

    eps = _check_eps(eps, required=False)
    c_init = check_real(c_init, "c_init", 0.0, math.inf, low_open=True)
    binary_search_steps = _check_positive_int(binary_search_steps, "binary_search_steps")
    max_iter = _check_positive_int(max_iter, "max_iter")
    generator = _make_generator(random_state)
    with _attack_mode(model):
        x_in, x, labels, n_classes = _prepare(model, images, labels)
        n = x.shape[0]
        target = _resolve_target(labels, n_classes, True, target, generator, "lbfgs")
        if n == 0:
            return _finish(model, x, x_in, labels, target, quantize, x, eps)
        shape = x.shape
        lo_t, hi_t = _ball(x, eps)
        x64 = x.detach().cpu().double().numpy().reshape(n, -1)
        lo64 = lo_t.cpu().double().numpy().ravel()
        hi64 = hi_t.cpu().double().numpy().ravel()
        bounds = Bounds(lo64, hi64)

        c = np.full(n, float(c_init))
        lower = np.zeros(n)  # largest c that succeeded
        upper = np.full(n, np.inf)  # smallest c that failed
        best_l2 = np.full(n, np.inf)
        best = x.detach().clone()
        ever = np.zeros(n, dtype=bool)

        for _ in range(binary_search_steps):
            res = _solve(model, x, x64, target, c, bounds, max_iter)
            # a copy: scipy may return (and pass) read-only arrays, e.g. when
            # eps = 0 fixes every bound
            adv = torch.tensor(res.x, dtype=x.dtype).reshape(shape).to(x.device)
            adv = torch.clamp(adv, min=lo_t, max=hi_t)
            pred = _predict(model, adv)
            succ = (pred == target).cpu().numpy()
            l2 = ((adv - x) ** 2).flatten(1).sum(1).cpu().double().numpy()
            improved = succ & (l2 < best_l2)
            keep = improved | (~ever & ~succ)  # the latest failure is the strongest
            idx = torch.as_tensor(np.flatnonzero(keep), device=x.device)
            if idx.numel():
                best[idx] = adv[idx]
            best_l2[improved] = l2[improved]
            ever |= succ

            lower = np.where(succ, np.maximum(lower, c), lower)
            upper = np.where(succ, upper, np.minimum(upper, c))
            both = (lower > 0) & np.isfinite(upper)
            c = np.where(
                both,
                np.sqrt(np.maximum(lower, 1e-300) * upper),
                np.where(succ, c * 10.0, c / 10.0),
            )
        return _finish(model, best, x_in, labels, target, quantize, x, eps)


def _solve(model, x, x64, target, c, bounds, max_iter):
    """One L-BFGS-B run of ``c * ||z - x||^2 + CE(model(z), target)`` from x."""
    from scipy.optimize import minimize

    n, shape = x.shape[0], x.shape

    def objective(z):
        zz = z.reshape(n, -1)
        dist = ((zz - x64) ** 2).sum(axis=1)
        zt = torch.tensor(z, dtype=x.dtype).reshape(shape).to(x.device)
        zt.requires_grad_(True)
        with torch.enable_grad():
            ce = F.cross_entropy(_forward(model, zt), target, reduction="sum")
            (g_ce,) = torch.autograd.grad(ce, zt)
        g = g_ce.detach().cpu().double().numpy().reshape(n, -1)
        g = g + 2.0 * c[:, None] * (zz - x64)
        return float(ce.item()) + float((c * dist).sum()), g.ravel()

    return minimize(
        objective,
        x64.ravel().copy(),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": max_iter},
    )
