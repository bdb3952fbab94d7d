"""Gradient-sign attacks: FGSM, BIM, PGD, MI-FGSM and iterative target class.

All of them take signed-gradient steps of the cross-entropy, projected onto
the L-inf ball of radius ``eps`` around the image and onto [0, 1]
(:func:`_iterate`); they differ in the start, the step and the momentum.
"""

import math

import torch

from ..._validation import check_real
from ._base import (
    _attack_mode,
    _ball,
    _check_eps,
    _check_positive_int,
    _check_step,
    _finish,
    _input_grad,
    _make_generator,
    _prepare,
    _resolve_target,
)

__all__ = ["bim", "fgsm", "iterative_target_class", "mifgsm", "pgd"]


def _iterate(model, x, y, targeted, eps, alpha, n_iter, start=None, decay=None):
    """Signed-gradient steps projected onto the eps-ball and [0, 1].

    With ``decay`` set, the steps follow the momentum of L1-normalised
    gradients (MI-FGSM).  The L1 norm is taken as a mean over each image's
    elements, which differs from the sum by a constant factor and so gives the
    same signs.
    """
    lo, hi = _ball(x, eps)
    adv = x if start is None else start
    momentum = None
    reduce_dims = tuple(range(1, x.ndim))
    for _ in range(n_iter):
        grad = _input_grad(model, adv, y, targeted)
        if decay is not None:
            norm = grad.abs().mean(dim=reduce_dims, keepdim=True)
            grad = grad / torch.where(norm > 0, norm, torch.ones_like(norm))
            if momentum is not None:
                grad = grad + decay * momentum
            momentum = grad
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.clamp(adv, min=lo, max=hi)
    return adv


# --------------------------------------------------------------------------
# gradient attacks


def fgsm(
    model,
    images,
    labels,
    eps=None,
    *,
    targeted=False,
    target=None,
    quantize=False,
    random_state=None,
):
    """Fast gradient sign method (Goodfellow et al., 2015).

    ``x_adv = clip(x + eps * sign(grad_x CE(model(x), y)), 0, 1)``; the
    targeted variant steps against the gradient of the target's loss.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier taking images in [0, 1] and returning logits.
    images : torch.Tensor or ndarray of shape (N, C, H, W)
        Images with values in [0, 1].
    labels : torch.Tensor or ndarray of int, shape (N,)
        True classes.
    eps : float
        L-inf budget in [0, 1] units (see :func:`eps_from_255`).
    targeted : bool, default=False
        Attack toward ``target`` instead of away from ``labels``.
    target : int, array of int or None, default=None
        Target classes; with ``targeted=True`` and None, a seeded random class
        different from each label.
    quantize : bool, default=False
        Round the result to 8-bit levels (multiples of 1/255).
    random_state : int, RandomState, torch.Generator or None, default=None
        Seeds the random targets.

    Returns
    -------
    result : AttackResult

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep.attacks import fgsm
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.copy_(torch.tensor([[1., -1, 0, 0], [-1, 1, 0, 0]]))
    ...     _ = model[1].bias.zero_()
    >>> x = torch.tensor([[0.6, 0.4, 0.5, 0.5]]).reshape(1, 1, 2, 2)
    >>> result = fgsm(model, x, torch.tensor([0]), eps=0.2)
    >>> result.images.flatten()
    tensor([0.4000, 0.6000, 0.5000, 0.5000])
    >>> result.success
    tensor([True])
    """
    eps = _check_eps(eps, attack="fgsm")
    generator = _make_generator(random_state)
    with _attack_mode(model):
        x_in, x, labels, n_classes = _prepare(model, images, labels)
        target = _resolve_target(labels, n_classes, targeted, target, generator, "fgsm")
        y = labels if target is None else target
        if x.shape[0]:
            adv = _iterate(model, x, y, targeted, eps, eps, 1)
        else:
            adv = x
        return _finish(model, adv, x_in, labels, target, quantize, x, eps)


def _bim_default_n_iter(eps):
    eps255 = eps * 255.0
    return max(1, int(math.floor(min(eps255 + 4.0, 1.25 * eps255) + 1e-6)))


def bim(
    model,
    images,
    labels,
    eps=None,
    *,
    alpha=1 / 255,
    n_iter=None,
    targeted=False,
    target=None,
    quantize=False,
    random_state=None,
):
    """Basic iterative method, or iterative FGSM (Kurakin et al., 2017).

    ``n_iter`` signed-gradient steps of size ``alpha``, each followed by a
    projection onto the eps-ball around the image and onto [0, 1].

    Parameters
    ----------
    model, images, labels, eps, targeted, target, quantize, random_state
        As in :func:`fgsm`.
    alpha : float, default=1/255
        Step size in [0, 1] units (Kurakin et al. use one pixel level).
    n_iter : int or None, default=None
        Number of steps; None picks Kurakin et al.'s
        ``floor(min(eps*255 + 4, 1.25 * eps*255))`` (at least 1), which is
        also what ``torchattacks.BIM`` picks with ``steps=0``.

    Returns
    -------
    result : AttackResult

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep.attacks import bim
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.copy_(torch.tensor([[1., -1, 0, 0], [-1, 1, 0, 0]]))
    ...     _ = model[1].bias.zero_()
    >>> x = torch.tensor([[0.6, 0.4, 0.5, 0.5]]).reshape(1, 1, 2, 2)
    >>> bim(model, x, torch.tensor([0]), eps=0.2, alpha=0.05, n_iter=8).success
    tensor([True])
    """
    eps = _check_eps(eps, attack="bim")
    alpha = _check_step(alpha, "alpha")
    n_iter = _bim_default_n_iter(eps) if n_iter is None else _check_positive_int(n_iter, "n_iter")
    generator = _make_generator(random_state)
    with _attack_mode(model):
        x_in, x, labels, n_classes = _prepare(model, images, labels)
        target = _resolve_target(labels, n_classes, targeted, target, generator, "bim")
        y = labels if target is None else target
        adv = _iterate(model, x, y, targeted, eps, alpha, n_iter) if x.shape[0] else x
        return _finish(model, adv, x_in, labels, target, quantize, x, eps)


def pgd(
    model,
    images,
    labels,
    eps=None,
    *,
    alpha=None,
    n_iter=10,
    random_start=True,
    targeted=False,
    target=None,
    quantize=False,
    random_state=None,
):
    """Projected gradient descent with a random start (Madry et al., 2018).

    Starts at a uniformly random point of the eps-ball (clipped to [0, 1]),
    then takes ``n_iter`` projected signed-gradient steps of size ``alpha``.

    Parameters
    ----------
    model, images, labels, eps, targeted, target, quantize
        As in :func:`fgsm`.
    alpha : float or None, default=None
        Step size; None means ``2.5 * eps / n_iter`` (the recipe of Madry et
        al.'s ``robustness`` library, enough to cross the ball from any start).
    n_iter : int, default=10
        Number of steps.
    random_start : bool, default=True
        Start from a uniform random point of the eps-ball.
    random_state : int, RandomState, torch.Generator or None, default=None
        Seeds the random start and the random targets.

    Returns
    -------
    result : AttackResult

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep.attacks import pgd
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.copy_(torch.tensor([[1., -1, 0, 0], [-1, 1, 0, 0]]))
    ...     _ = model[1].bias.zero_()
    >>> x = torch.tensor([[0.6, 0.4, 0.5, 0.5]]).reshape(1, 1, 2, 2)
    >>> result = pgd(model, x, torch.tensor([0]), eps=0.2, random_state=0)
    >>> result.success
    tensor([True])
    >>> bool((result.images - x).abs().max() <= 0.2 + 1e-6)
    True
    """
    eps = _check_eps(eps, attack="pgd")
    n_iter = _check_positive_int(n_iter, "n_iter")
    alpha = 2.5 * eps / n_iter if alpha is None else _check_step(alpha, "alpha")
    generator = _make_generator(random_state)
    with _attack_mode(model):
        x_in, x, labels, n_classes = _prepare(model, images, labels)
        target = _resolve_target(labels, n_classes, targeted, target, generator, "pgd")
        y = labels if target is None else target
        start = None
        if random_start:
            noise = torch.rand(x.shape, generator=generator, dtype=x.dtype)
            noise = (noise * 2.0 - 1.0) * eps
            start = (x + noise.to(x.device)).clamp_(0.0, 1.0)
        adv = _iterate(model, x, y, targeted, eps, alpha, n_iter, start=start) if x.shape[0] else x
        return _finish(model, adv, x_in, labels, target, quantize, x, eps)


def mifgsm(
    model,
    images,
    labels,
    eps=None,
    *,
    alpha=None,
    n_iter=10,
    decay=1.0,
    targeted=False,
    target=None,
    quantize=False,
    random_state=None,
):
    """Momentum iterative FGSM (Dong et al., 2018).

    ``g <- decay * g + grad / ||grad||_1``, ``x <- proj(x + alpha * sign(g))``.

    Parameters
    ----------
    model, images, labels, eps, targeted, target, quantize, random_state
        As in :func:`fgsm`.
    alpha : float or None, default=None
        Step size; None means ``eps / n_iter`` as in Dong et al.
    n_iter : int, default=10
        Number of steps (Dong et al. use 10).
    decay : float, default=1.0
        Momentum decay factor mu.

    Returns
    -------
    result : AttackResult

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep.attacks import mifgsm
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.copy_(torch.tensor([[1., -1, 0, 0], [-1, 1, 0, 0]]))
    ...     _ = model[1].bias.zero_()
    >>> x = torch.tensor([[0.6, 0.4, 0.5, 0.5]]).reshape(1, 1, 2, 2)
    >>> mifgsm(model, x, torch.tensor([0]), eps=0.2).success
    tensor([True])
    """
    eps = _check_eps(eps, attack="mifgsm")
    n_iter = _check_positive_int(n_iter, "n_iter")
    alpha = eps / n_iter if alpha is None else _check_step(alpha, "alpha")
    decay = check_real(decay, "decay", 0.0, math.inf)
    generator = _make_generator(random_state)
    with _attack_mode(model):
        x_in, x, labels, n_classes = _prepare(model, images, labels)
        target = _resolve_target(labels, n_classes, targeted, target, generator, "mifgsm")
        y = labels if target is None else target
        if x.shape[0]:
            adv = _iterate(model, x, y, targeted, eps, alpha, n_iter, decay=float(decay))
        else:
            adv = x
        return _finish(model, adv, x_in, labels, target, quantize, x, eps)


def iterative_target_class(
    model,
    images,
    labels,
    eps=None,
    *,
    alpha=1 / 255,
    n_iter=None,
    target=None,
    quantize=False,
    random_state=None,
):
    """Iterative target class, the NIPS 2017 toolkit's targeted baseline.

    Repeated ``alpha`` signed-gradient steps that decrease the cross-entropy of
    a fixed target class, the total perturbation clipped to ``eps`` and the
    image to [0, 1] after each step.  The target is a seeded random class
    different from the label unless given.

    Parameters
    ----------
    model, images, labels, eps, quantize
        As in :func:`fgsm`.
    alpha : float, default=1/255
        Step size.
    n_iter : int or None, default=None
        Number of steps; None means ``max(20, ceil(1.25 * eps / alpha))``: the
        toolkit's 20 steps, or more where 20 steps of ``alpha`` cannot reach
        the edge of the ball (the toolkit's budgets never exceeded 16/255).
    target : int, array of int or None, default=None
        Target classes; None draws a random class != label for each image.
    random_state : int, RandomState, torch.Generator or None, default=None
        Seeds the random targets.

    Returns
    -------
    result : AttackResult
        ``success`` says whether the prediction reached the target.

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep.attacks import iterative_target_class
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.copy_(torch.tensor([[1., -1, 0, 0], [-1, 1, 0, 0]]))
    ...     _ = model[1].bias.zero_()
    >>> x = torch.tensor([[0.6, 0.4, 0.5, 0.5]]).reshape(1, 1, 2, 2)
    >>> result = iterative_target_class(model, x, torch.tensor([0]), eps=0.2,
    ...                                 alpha=0.05, random_state=0)
    >>> result.target, result.success
    (tensor([1]), tensor([True]))
    """
    eps = _check_eps(eps, attack="iterative_target_class")
    alpha = _check_step(alpha, "alpha")
    if n_iter is None:
        n_iter = max(20, math.ceil(1.25 * eps / alpha - 1e-9))
    n_iter = _check_positive_int(n_iter, "n_iter")
    generator = _make_generator(random_state)
    with _attack_mode(model):
        x_in, x, labels, n_classes = _prepare(model, images, labels)
        target = _resolve_target(
            labels, n_classes, True, target, generator, "iterative_target_class"
        )
        adv = _iterate(model, x, target, True, eps, alpha, n_iter) if x.shape[0] else x
        return _finish(model, adv, x_in, labels, target, quantize, x, eps)
