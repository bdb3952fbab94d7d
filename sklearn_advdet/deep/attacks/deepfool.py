"""DeepFool (Moosavi-Dezfooli et al., 2016), L2 and L-inf, batched."""

import math

import torch

from ..._validation import check_int, check_real
from .._checks import check_labels
from ._base import _attack_mode, _finish, _forward, _make_generator, _no_budget, _prepare

__all__ = ["deepfool"]


def _candidates(logits, labels, n_candidates):
    """The label first, then the ``n_candidates - 1`` highest other classes."""
    masked = logits.clone()
    masked.scatter_(1, labels[:, None], -math.inf)
    others = masked.topk(n_candidates - 1, dim=1).indices
    return torch.cat([labels[:, None], others], dim=1)


def _linearise(model, x, cand):
    """Margins ``f_k = z_k - z_label`` and their input gradients ``w_k``.

    One forward pass and one backward pass per candidate class of the summed
    margin (each image's margin depends on that image only), so the
    Jacobian rows of the whole batch come from ``n_candidates - 1``
    backward passes.  Returns the margins ``(N, K-1)``, the gradients
    ``(K-1, N, ...)`` and the predictions.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = _forward(model, x)
        zc = z.gather(1, cand)
        margins = zc[:, 1:] - zc[:, :1]
        grads = []
        last = margins.shape[1] - 1
        for k in range(margins.shape[1]):
            (g,) = torch.autograd.grad(margins[:, k].sum(), x, retain_graph=k < last)
            grads.append(g)
    return margins.detach(), torch.stack(grads), z.detach().argmax(1)


def _step(margins, grads, norm):
    """The smallest step to the nearest linearised boundary, per image."""
    flat = grads.flatten(2)  # (K-1, N, D)
    if norm == "l2":
        size = flat.norm(dim=2)
    else:
        size = flat.abs().sum(dim=2)
    size = size.transpose(0, 1)  # (N, K-1)
    dist = margins.abs() / size
    dist = torch.where(size > 0, dist, torch.full_like(dist, math.inf))
    best = dist.argmin(dim=1)
    idx = torch.arange(margins.shape[0], device=margins.device)
    w = grads[best, idx]  # (N, ...)
    f = margins[idx, best].abs() + 1e-4
    s = size[idx, best]
    ok = torch.isfinite(dist[idx, best])
    shape = (-1,) + (1,) * (w.ndim - 1)
    if norm == "l2":
        r = (f / s**2).view(shape) * w
    else:
        r = (f / s).view(shape) * w.sign()
    return torch.where(ok.view(shape), r, torch.zeros_like(r))


def deepfool(
    model,
    images,
    labels,
    eps=None,
    *,
    norm="l2",
    overshoot=0.02,
    n_iter=50,
    n_candidates=10,
    quantize=False,
    random_state=None,
):
    """DeepFool (Moosavi-Dezfooli et al., 2016): step to the nearest linearised boundary.

    At each iteration the classifier is linearised around the current point
    over the candidate classes (the label and the ``n_candidates - 1``
    classes with the highest clean logits): with margins
    ``f_k = z_k - z_label`` and gradients ``w_k``, the step is
    ``|f_l| / ||w_l||^2 * w_l`` (L2) or ``|f_l| / ||w_l||_1 * sign(w_l)``
    (L-inf) toward the class ``l`` with the smallest ``|f_k| / ||w_k||``.
    The steps add up to ``r``; the point is ``clip(x + (1 + overshoot) r, 0,
    1)``.  Each image stops as soon as its prediction leaves the label, or
    after ``n_iter`` iterations.  The whole batch is linearised at once (one
    forward pass and ``n_candidates - 1`` backward passes per iteration over
    the images still running).  Untargeted only; an image the model already
    misclassifies is returned unchanged (a success).

    Parameters
    ----------
    model, images, labels, quantize
        As in :func:`fgsm`.
    eps : None
        DeepFool has no budget; anything but None is an error.
    norm : {"l2", "linf"}, default="l2"
        The norm of the step.
    overshoot : float, default=0.02
        The factor past the boundary, ``(1 + overshoot) * r``.
    n_iter : int, default=50
        Maximum number of iterations.
    n_candidates : int, default=10
        Classes considered (the label included); capped at the model's number
        of classes.
    random_state : None, int or RandomState, default=None
        Unused (DeepFool is deterministic); accepted like every attack's.

    Returns
    -------
    result : AttackResult

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep.attacks import deepfool
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.copy_(torch.tensor([[1., -1, 0, 0], [-1, 1, 0, 0]]))
    ...     _ = model[1].bias.zero_()
    >>> x = torch.tensor([[0.6, 0.4, 0.5, 0.5]]).reshape(1, 1, 2, 2)
    >>> result = deepfool(model, x, torch.tensor([0]))
    >>> result.success
    tensor([True])
    >>> # closed form: |z_0 - z_1| / ||w_0 - w_1|| = 0.4 / 8**0.5 = 0.1414, times 1.02
    >>> round(float((result.images - x).norm()), 4)
    0.1443
    """
    _no_budget(eps, "deepfool")
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
    overshoot = check_real(overshoot, "overshoot", 0.0, math.inf)
    n_iter = check_int(n_iter, "n_iter", 1)
    n_candidates = check_int(n_candidates, "n_candidates", 2)
    _make_generator(random_state)  # checked like every attack's
    with _attack_mode(model):
        x_in, x, labels, n_classes = _prepare(model, images, labels)
        if x.shape[0] == 0:
            return _finish(model, x, x_in, labels, None, quantize, x, None)
        if n_classes < 2:
            raise ValueError("deepfool needs a model with at least 2 classes")
        check_labels(labels, labels.shape[0], n_classes)
        adv = _run(model, x, labels, norm, overshoot, n_iter, min(n_candidates, n_classes))
        return _finish(model, adv, x_in, labels, None, quantize, x, None)


def _run(model, x, labels, norm, overshoot, n_iter, n_candidates):
    with torch.no_grad():
        clean = _forward(model, x)
    cand = _candidates(clean, labels, n_candidates)
    r_tot = torch.zeros_like(x)
    adv = x.clone()
    active = torch.nonzero(clean.argmax(1) == labels).flatten()
    for _ in range(n_iter):
        if active.numel() == 0:
            break
        margins, grads, pred = _linearise(model, adv[active], cand[active])
        running = pred == labels[active]  # not fooled yet at this point
        active = active[running]
        if active.numel() == 0:
            break
        r_tot[active] += _step(margins[running], grads[:, running], norm)
        adv[active] = torch.clamp(x[active] + (1.0 + overshoot) * r_tot[active], 0.0, 1.0)
    return adv
