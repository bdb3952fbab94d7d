"""APGD, the step-size-free PGD of Croce & Hein (2020), L-inf."""

import math

import torch
import torch.nn.functional as F

from ..._validation import check_int, check_real
from ._base import (
    _attack_mode,
    _ball,
    _check_eps,
    _finish,
    _forward,
    _make_generator,
    _prepare,
)

__all__ = ["apgd"]


def _checkpoints(n_iter):
    """Croce & Hein's checkpoints ``w_j = ceil(p_j * n_iter)``.

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
    0.06)``; the iterations at which the step size may be halved.
    """
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    points = sorted({math.ceil(q * n_iter) for q in p[1:] if math.ceil(q * n_iter) < n_iter})
    return [w for w in points if w > 0]


def _dlr(logits, y):
    """The difference-of-logits ratio loss (Croce & Hein, eq. 6), per image."""
    srt = logits.sort(dim=1, descending=True).values
    own = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return -(own - other) / (srt[:, 0] - srt[:, 2] + 1e-12)


def _loss_grad(model, x, y, loss):
    """Per-image loss, its input gradient, and whether the image is fooled."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = _forward(model, x)
        if loss == "ce":
            values = F.cross_entropy(logits, y, reduction="none")
        else:
            values = _dlr(logits, y)
        (grad,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), grad, logits.detach().argmax(1) != y


def _random_start(x, eps, generator):
    """A uniform direction scaled so that each image's largest change is eps."""
    t = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2.0 - 1.0
    scale = t.flatten(1).abs().amax(dim=1).clamp_(min=1e-12)
    t = t / scale.view((-1,) + (1,) * (x.ndim - 1))
    return (x + eps * t).clamp_(0.0, 1.0)


def apgd(
    model,
    images,
    labels,
    eps=None,
    *,
    loss="ce",
    n_iter=100,
    n_restarts=1,
    rho=0.75,
    momentum=0.75,
    quantize=False,
    random_state=None,
):
    """Auto-PGD (Croce & Hein, 2020), untargeted, L-inf.

    PGD without a step-size parameter: steps start at ``2 * eps`` and are
    halved at the checkpoints (:func:`_checkpoints`) of an image whose loss
    rose in fewer than ``rho`` of the steps since the last checkpoint, or
    whose step was not halved at the last checkpoint and whose best loss has
    not grown since; after a halving the image restarts from its best point.
    Each step is ``z = P(x_k + eta * sign(grad))`` followed by the momentum
    step ``x_{k+1} = P(x_k + m (z - x_k) + (1 - m)(x_k - x_{k-1}))`` (the
    first with ``m = 1``), ``P`` the projection onto the eps-ball and [0, 1].
    The result of each image is the first iterate that fools the model (over
    all restarts), else the point of highest loss.  Restarts (new random
    starts) run on the images not fooled yet.

    Parameters
    ----------
    model, images, labels, eps, quantize
        As in :func:`fgsm`.
    loss : {"ce", "dlr"}, default="ce"
        Cross-entropy, or the difference-of-logits ratio (needs at least 3
        classes).
    n_iter : int, default=100
        Iterations per restart.
    n_restarts : int, default=1
        Random starts.
    rho : float, default=0.75
        The fraction of loss-raising steps below which the step is halved.
    momentum : float, default=0.75
        The weight ``m`` of the new step.
    random_state : int, RandomState, torch.Generator or None, default=None
        Seeds the random starts.

    Returns
    -------
    result : AttackResult

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep.attacks import apgd
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.copy_(torch.tensor([[1., -1, 0, 0], [-1, 1, 0, 0]]))
    ...     _ = model[1].bias.zero_()
    >>> x = torch.tensor([[0.6, 0.4, 0.5, 0.5]]).reshape(1, 1, 2, 2)
    >>> apgd(model, x, torch.tensor([0]), eps=0.11, random_state=0).success
    tensor([True])
    >>> apgd(model, x, torch.tensor([0]), eps=0.09, random_state=0).success  # needs 0.1
    tensor([False])
    """
    eps = _check_eps(eps, attack="apgd")
    if loss not in ("ce", "dlr"):
        raise ValueError(f"loss must be 'ce' or 'dlr', got {loss!r}")
    n_iter = check_int(n_iter, "n_iter", 1)
    n_restarts = check_int(n_restarts, "n_restarts", 1)
    rho = check_real(rho, "rho", 0.0, 1.0, high_open=False)
    momentum = check_real(momentum, "momentum", 0.0, 1.0, low_open=True, high_open=False)
    generator = _make_generator(random_state)
    with _attack_mode(model):
        x_in, x, labels, n_classes = _prepare(model, images, labels)
        if x.shape[0] == 0:
            return _finish(model, x, x_in, labels, None, quantize, x, eps)
        if loss == "dlr" and n_classes < 3:
            raise ValueError(
                f"loss='dlr' needs at least 3 classes (the model has {n_classes}): use loss='ce'"
            )
        adv = x.clone()
        todo = torch.arange(x.shape[0], device=x.device)
        settings = (loss, n_iter, rho, momentum)
        for _ in range(n_restarts):
            if todo.numel() == 0:
                break
            found, point = _one_run(model, x[todo], labels[todo], eps, generator, settings)
            adv[todo] = point
            todo = todo[~found]
        return _finish(model, adv, x_in, labels, None, quantize, x, eps)


def _one_run(model, x, y, eps, generator, settings):
    """One APGD run from a random start: (fooled mask, result points)."""
    loss, n_iter, rho, momentum = settings
    lo, hi = _ball(x, eps)
    checkpoints = set(_checkpoints(n_iter))
    shape = (-1,) + (1,) * (x.ndim - 1)
    cur = _random_start(x, eps, generator)
    value, grad, fooled = _loss_grad(model, cur, y, loss)
    found = fooled.clone()
    first_adv = torch.where(fooled.view(shape), cur, x)
    best_value, best, best_grad = value.clone(), cur.clone(), grad.clone()
    eta = torch.full((x.shape[0],), 2.0 * eps, device=x.device, dtype=x.dtype)
    prev = cur.clone()
    raised = torch.zeros_like(eta)
    last_best, last_halved, since = best_value.clone(), torch.zeros_like(found), 0
    for k in range(n_iter):
        z = torch.clamp(cur + eta.view(shape) * grad.sign(), min=lo, max=hi)
        m = 1.0 if k == 0 else momentum
        new = torch.clamp(cur + m * (z - cur) + (1.0 - m) * (cur - prev), min=lo, max=hi)
        prev, cur = cur, new
        new_value, grad, fooled = _loss_grad(model, cur, y, loss)
        fresh = fooled & ~found
        first_adv[fresh] = cur[fresh]
        found |= fooled
        raised += (new_value > value).to(raised.dtype)
        value = new_value
        up = value > best_value
        best_value[up], best[up], best_grad[up] = value[up], cur[up], grad[up]
        since += 1
        if k + 1 in checkpoints:
            halve = (raised < rho * since) | (~last_halved & (best_value <= last_best))
            eta[halve] /= 2.0
            cur[halve], grad[halve] = best[halve], best_grad[halve]
            prev[halve], value[halve] = best[halve], best_value[halve]
            last_best, last_halved = best_value.clone(), halve
            raised.zero_()
            since = 0
    return found, torch.where(found.view(shape), first_adv, best)
