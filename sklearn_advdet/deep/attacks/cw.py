"""The L2 attack of Carlini & Wagner (2017)."""

import math

import torch

from ..._validation import check_int, check_real
from ._base import (
    _attack_mode,
    _finish,
    _forward,
    _make_generator,
    _no_budget,
    _prepare,
    _resolve_target,
)

__all__ = ["cw_l2"]

# keeps atanh finite at pixels that are exactly 0 or 1
_TANH_SCALE = 1.0 - 1e-6


def _margin(logits, y, targeted, confidence):
    """Carlini & Wagner's f: how far the point is from being adversarial (<= 0: done).

    Untargeted: ``z_y - max_{j != y} z_j``; targeted toward ``t``:
    ``max_{j != t} z_j - z_t``; both floored at ``-confidence``.
    """
    own = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    f = other - own if targeted else own - other
    return torch.clamp(f, min=-confidence)


def cw_l2(
    model,
    images,
    labels,
    eps=None,
    *,
    targeted=False,
    target=None,
    confidence=0.0,
    c_init=1.0,
    binary_search_steps=5,
    n_iter=100,
    lr=0.01,
    abort_early=True,
    quantize=False,
    random_state=None,
):
    """Carlini & Wagner's L2 attack (2017).

    Minimises ``||x' - x||_2^2 + c * f(x')`` over ``x' = (tanh(w) + 1) / 2``
    (the change of variables keeps ``x'`` in [0, 1]) with Adam, where ``f``
    is the logit margin (:func:`_margin`, floored at ``-confidence``, so a
    point is adversarial once it is ``confidence`` past the boundary).  The
    constant ``c`` is searched per image over ``binary_search_steps`` runs of
    ``n_iter`` Adam steps: multiplied by 10 while the image has never been
    adversarial, else bisected between the largest failed and the smallest
    successful value.  A run stops early when the summed loss has not fallen
    by 0.01 % over the last tenth of its steps.  Every Adam step's point is
    a candidate: the result of each image is its adversarial point (margin
    reached) with the smallest L2 distance over all runs, or the original
    image where none was found (a failure).

    Parameters
    ----------
    model, images, labels, targeted, target, quantize
        As in :func:`fgsm`.
    eps : None
        CW-L2 has no budget; anything but None is an error.
    confidence : float, default=0.0
        The margin kappa past the boundary that counts as adversarial.
    c_init : float, default=1.0
        First value of the constant (images in [0, 1], logits of order 10).
    binary_search_steps : int, default=5
        Runs (values of ``c``) per image.
    n_iter : int, default=100
        Adam steps per run.
    lr : float, default=0.01
        Adam's learning rate, in the tanh space.
    abort_early : bool, default=True
        Stop a run once its loss stalls (see above).
    random_state : int, RandomState, torch.Generator or None, default=None
        Seeds the random targets.

    Returns
    -------
    result : AttackResult

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep.attacks import cw_l2
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.copy_(torch.tensor([[1., -1, 0, 0], [-1, 1, 0, 0]]))
    ...     _ = model[1].bias.zero_()
    >>> x = torch.tensor([[0.6, 0.4, 0.5, 0.5]]).reshape(1, 1, 2, 2)
    >>> result = cw_l2(model, x, torch.tensor([0]), n_iter=200)
    >>> result.success
    tensor([True])
    >>> round(float((result.images - x).norm()), 2)  # closed form 0.4 / 8**0.5 = 0.141
    0.14
    """
    _no_budget(eps, "cw_l2")
    confidence = check_real(confidence, "confidence", 0.0, math.inf)
    c_init = check_real(c_init, "c_init", 0.0, math.inf, low_open=True)
    binary_search_steps = check_int(binary_search_steps, "binary_search_steps", 1)
    n_iter = check_int(n_iter, "n_iter", 1)
    lr = check_real(lr, "lr", 0.0, math.inf, low_open=True)
    generator = _make_generator(random_state)
    with _attack_mode(model):
        x_in, x, labels, n_classes = _prepare(model, images, labels)
        target = _resolve_target(labels, n_classes, targeted, target, generator, "cw_l2")
        if x.shape[0] == 0:
            return _finish(model, x, x_in, labels, target, quantize, x, None)
        if n_classes < 2:
            raise ValueError("cw_l2 needs a model with at least 2 classes")
        y = labels if target is None else target
        settings = (bool(targeted), confidence, n_iter, lr, bool(abort_early))
        adv = _search(model, x, y, c_init, binary_search_steps, settings)
        return _finish(model, adv, x_in, labels, target, quantize, x, None)


def _search(model, x, y, c_init, binary_search_steps, settings):
    """The binary search over c; the smallest-L2 adversarial of every run."""
    n = x.shape[0]
    c = torch.full((n,), float(c_init), device=x.device, dtype=x.dtype)
    lower = torch.zeros_like(c)  # largest c that failed
    upper = torch.full_like(c, math.inf)  # smallest c that succeeded
    best_l2 = torch.full_like(c, math.inf)
    best = x.clone()
    w0 = torch.atanh((2.0 * x - 1.0) * _TANH_SCALE)
    for _ in range(binary_search_steps):
        found = _run(model, x, y, w0, c, best, best_l2, settings)
        upper = torch.where(found, torch.minimum(upper, c), upper)
        lower = torch.where(found, lower, torch.maximum(lower, c))
        bounded = torch.isfinite(upper)
        c = torch.where(bounded, (lower + upper) / 2.0, c * 10.0)
    return best


def _run(model, x, y, w0, c, best, best_l2, settings):
    """``n_iter`` Adam steps at constants ``c``; updates ``best``/``best_l2`` in place.

    Returns the mask of the images that were adversarial at some step.
    """
    targeted, confidence, n_iter, lr, abort_early = settings
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    check_every = max(n_iter // 10, 1)
    previous = math.inf
    dims = tuple(range(1, x.ndim))
    for i in range(n_iter):
        with torch.enable_grad():
            adv = (torch.tanh(w) + 1.0) / 2.0
            l2 = ((adv - x) ** 2).sum(dim=dims)
            logits = _forward(model, adv)
            margin = _margin(logits, y, targeted, confidence)
            loss = (l2 + c * margin).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with torch.no_grad():
            done = margin <= -confidence if confidence > 0 else _reached(logits, y, targeted)
            better = done & (l2 < best_l2)
            best[better] = adv.detach()[better]
            best_l2[better] = l2.detach()[better]
            found |= done
        opt.step()
        if abort_early and (i + 1) % check_every == 0:
            value = float(loss.detach())
            if value > previous * 0.9999:
                break
            previous = value
    return found


def _reached(logits, y, targeted):
    """Plain argmax success (confidence 0: the margin's floor cannot tell a tie)."""
    pred = logits.argmax(1)
    return pred == y if targeted else pred != y
