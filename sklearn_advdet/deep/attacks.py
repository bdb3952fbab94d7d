"""Adversarial attacks on image classifiers that take images in [0, 1].

Every attack works on a batch of images ``(N, C, H, W)`` (any shape with the
batch first works) with values in [0, 1]; the input normalisation belongs
inside the model.  Perturbation budgets ``eps`` are L-inf bounds in the same
[0, 1] units: use :func:`eps_from_255` for the usual ``8/255`` notation.

The attacks and their defaults:

==========================  ===================================================
``fgsm``                    Goodfellow et al. 2015, one signed-gradient step.
``bim``                     Kurakin et al. 2017, ``alpha=1/255`` steps,
                            ``n_iter = floor(min(eps*255 + 4, 1.25*eps*255))``.
``pgd``                     Madry et al. 2018, uniform random start in the
                            eps-ball, 10 steps of ``2.5*eps/n_iter``.
``mifgsm``                  Dong et al. 2018, momentum on L1-normalised
                            gradients, ``decay=1``, 10 steps of ``eps/n_iter``.
``lbfgs``                   Szegedy et al. 2014, box-constrained L-BFGS
                            (scipy's L-BFGS-B) toward a random target class,
                            binary search on the constant.
``gaussian_noise``          Gaussian noise (``std=eps/2`` by default).
``sign_noise``              The NIPS 2017 toolkit's random noise: +/-eps per
                            pixel.
``iterative_target_class``  The NIPS 2017 toolkit's baseline: steps of
                            1/255 toward a fixed random target class (20, or
                            more where the budget needs them).
==========================  ===================================================

Each attack returns an :class:`AttackResult` with the adversarial images and a
success mask.  :func:`run_attack` runs any of them by name over a whole data
set in batches on a device; :data:`ATTACKS` maps the names to the functions.

All attacks put the model in eval mode for the run and restore every
module's previous mode afterwards, switch off ``requires_grad`` on the
model's parameters for the run (only input gradients are needed) and restore
it, never modify their inputs in place, and draw their random numbers from a
``torch.Generator`` seeded from ``random_state`` (no global seeds).

Speed and bitwise reproducibility: on the CPU the model sees 4-D inputs in
the channels_last memory format (:data:`CPU_CHANNELS_LAST`), which makes
oneDNN's convolutions 13-22 % faster (CIFAR ResNet-20, batch 128; see
``benchmarks/results/bench_attacks.md``).  The values are the same, but the
convolutions round differently, so the sign of a gradient component that is
numerically zero can flip: an iterative attack on a multi-channel conv net
may then differ from the same attack on contiguous input (or from
torchattacks) in a few pixels, by ``2 * alpha``.  Set
``sklearn_advdet.deep.attacks.CPU_CHANNELS_LAST = False`` for results
identical to the contiguous layout.
"""

import contextlib
import math
import numbers
import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ATTACKS",
    "CPU_CHANNELS_LAST",
    "AttackResult",
    "bim",
    "eps_from_255",
    "fgsm",
    "gaussian_noise",
    "iterative_target_class",
    "lbfgs",
    "mifgsm",
    "pgd",
    "run_attack",
    "sign_noise",
]


def eps_from_255(v):
    """Convert a perturbation budget from 0-255 pixel levels to [0, 1] units.

    Parameters
    ----------
    v : float
        Budget in pixel levels, e.g. ``8`` for the usual ``8/255``.

    Returns
    -------
    eps : float
        ``v / 255``.

    Examples
    --------
    >>> from sklearn_advdet.deep.attacks import eps_from_255
    >>> eps_from_255(8)
    0.0313...
    """
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"eps_from_255 expects a finite number of pixel levels, got {v!r}")
    if v < 0 or v > 255:
        raise ValueError(f"eps_from_255 expects a value in [0, 255] pixel levels, got {v!r}")
    return float(v) / 255.0


@dataclass
class AttackResult:
    """What an attack returns.

    Attributes
    ----------
    images : torch.Tensor
        The adversarial images, same shape, device and dtype as the input.
    success : torch.Tensor of bool, shape (N,)
        Untargeted attacks: the model's prediction differs from the label.
        Targeted attacks: the prediction equals the target.
    target : torch.Tensor of int64, shape (N,), or None
        The target classes of a targeted attack, else None.
    predictions : torch.Tensor of int64, shape (N,), or None
        The model's predictions on ``images``.
    """

    images: "torch.Tensor"
    success: "torch.Tensor"
    target: "torch.Tensor | None" = None
    predictions: "torch.Tensor | None" = None

    def __len__(self):
        return int(self.success.shape[0])

    @property
    def success_rate(self):
        """Fraction of the images on which the attack succeeded."""
        n = len(self)
        return float(self.success.float().mean()) if n else float("nan")


# --------------------------------------------------------------------------
# validation helpers


def _check_eps(eps, name="eps", *, required=True, attack=None):
    if eps is None:
        if required:
            who = f"{attack} needs" if attack else "this attack needs"
            raise ValueError(
                f"{who} {name}, the L-inf budget in [0, 1] units "
                f"(e.g. {name}=eps_from_255(8) for 8/255)"
            )
        return None
    if isinstance(eps, torch.Tensor) and eps.numel() == 1:
        eps = eps.item()
    if isinstance(eps, np.generic):
        eps = eps.item()
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f"{name} must be a float in [0, 1], got {eps!r}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{name} must be a float in [0, 1], got {eps!r}")
    if eps > 1:
        raise ValueError(
            f"{name}={eps:g} is larger than 1: budgets are in [0, 1] units like the "
            f"images; it looks like 0-255 pixel levels, pass "
            f"{name}=eps_from_255({eps:g}) instead"
        )
    return eps


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_step(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive float, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive float, got {value!r}")
    if value > 1:
        raise ValueError(
            f"{name}={value:g} is larger than 1: step sizes are in [0, 1] units; "
            f"pass {name}=eps_from_255({value:g}) for a step in pixel levels"
        )
    return value


def _make_generator(random_state):
    """A CPU ``torch.Generator`` from an int, None, RandomState or Generator."""
    if isinstance(random_state, torch.Generator):
        return random_state
    from sklearn.utils import check_random_state

    rng = check_random_state(random_state)
    seed = int(rng.randint(0, 2**31 - 1)) * (2**31) + int(rng.randint(0, 2**31 - 1))
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def _model_device_dtype(model, images):
    for t in model.parameters():
        return t.device, (t.dtype if t.is_floating_point() else torch.float32)
    for t in model.buffers():
        if t.is_floating_point():
            return t.device, t.dtype
    dtype = images.dtype if images.is_floating_point() else torch.float32
    return images.device, dtype


def _as_tensor(array, name):
    if isinstance(array, torch.Tensor):
        return array
    if isinstance(array, np.ndarray) or isinstance(array, (list, tuple)):
        return torch.as_tensor(np.asarray(array))
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(array).__name__}")


def _check_images(images):
    images = _as_tensor(images, "images")
    if not images.is_floating_point():
        hint = " (divide uint8 images by 255)" if images.dtype == torch.uint8 else ""
        raise TypeError(f"images must be floats in [0, 1], got dtype {images.dtype}{hint}")
    if images.ndim < 2:
        raise ValueError(
            f"images must be a batch of shape (N, C, H, W), got shape {tuple(images.shape)}"
        )
    if images.numel():
        lo, hi = float(images.min()), float(images.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("images contain NaN or infinite values")
        if lo < -1e-6 or hi > 1 + 1e-6:
            hint = " (0-255 images: divide by 255)" if hi > 1.5 else ""
            raise ValueError(
                f"images must be in [0, 1] (normalisation belongs inside the model), "
                f"got values in [{lo:g}, {hi:g}]{hint}"
            )
    return images


def _check_labels(labels, n, name="labels"):
    labels = _as_tensor(labels, name)
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},) to match the images, got {tuple(labels.shape)}"
        )
    if n and int(labels.min()) < 0:
        raise ValueError(f"{name} must be class indices >= 0, got {int(labels.min())}")
    return labels.long()


# --------------------------------------------------------------------------
# the model during an attack


@contextlib.contextmanager
def _attack_mode(model):
    """Eval mode and frozen parameters for the run; restore both afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, flag in modes:
            m.training = flag


#: Feed 4-D CPU inputs to the model in the channels_last memory format
#: (faster convolutions; see the module docstring for the few pixels this
#: can change).  ``False``: the input's own layout, bitwise like a plain loop.
CPU_CHANNELS_LAST = True

# models whose forward rejected a channels_last input (e.g. a ``.view`` of an
# un-pooled feature map): they get contiguous input from then on
_CHANNELS_LAST_FAILED = weakref.WeakKeyDictionary()


def _forward(model, x):
    """``model(x)``, with 4-D CPU input in the channels_last memory format.

    Same values, another layout: oneDNN's CPU convolutions run 13-22 % faster
    on it (forward + backward of the CIFAR ResNet-20, batch 128, torch 2.13
    and 2.14), and the gradient comes back in x's own layout.  A model whose
    forward raises on it (a ``.view`` that needs contiguous memory) is called
    again with x as it is, and remembered.  On CUDA the input is left alone
    (not measured here), and everywhere when :data:`CPU_CHANNELS_LAST` is
    False.
    """
    if (
        CPU_CHANNELS_LAST
        and x.ndim == 4
        and x.device.type == "cpu"
        and model not in _CHANNELS_LAST_FAILED
    ):
        try:
            return model(x.contiguous(memory_format=torch.channels_last))
        except RuntimeError:
            _CHANNELS_LAST_FAILED[model] = True
    return model(x)


def _input_grad(model, x, y, targeted):
    """Gradient of the summed cross-entropy w.r.t. ``x``, ascent direction.

    Untargeted: the gradient of CE(model(x), y) (to increase it).  Targeted:
    its negative (to decrease the loss toward the target ``y``).  The sum over
    the batch keeps each image's gradient independent of the batch size.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(_forward(model, x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return -grad if targeted else grad


@torch.no_grad()
def _predict(model, x):
    return _forward(model, x).argmax(dim=1)


def _n_classes(model, x):
    with torch.no_grad():
        logits = model(x[:1])
    if logits.ndim != 2:
        raise ValueError(
            f"the model must return logits of shape (N, n_classes), got {tuple(logits.shape)}"
        )
    return int(logits.shape[1])


def _random_targets(labels, n_classes, generator):
    """A uniformly random class different from each label."""
    if n_classes < 2:
        raise ValueError("a targeted attack needs a model with at least 2 classes")
    offset = torch.randint(1, n_classes, (labels.shape[0],), generator=generator)
    return (labels.cpu() + offset) % n_classes


def _resolve_target(model, x, labels, targeted, target, generator, attack):
    """None for untargeted attacks, else the target classes on x's device."""
    if not targeted:
        if target is not None:
            raise ValueError(
                f"{attack}: target was given but targeted=False; pass targeted=True to "
                "attack toward it"
            )
        return None
    n = x.shape[0]
    if target is None:
        if n == 0:
            return labels.clone()
        return _random_targets(labels, _n_classes(model, x), generator).to(labels.device)
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        target = torch.full((n,), int(target), dtype=torch.long)
    target = _check_labels(target, n, name="target").to(labels.device)
    same = target == labels
    if bool(same.any()):
        raise ValueError(
            f"{attack}: target equals the true label for {int(same.sum())} image(s); "
            "a targeted attack needs a different class (leave target=None for a "
            "random one)"
        )
    return target


def _ball(x, eps):
    """Lower and upper bounds of the eps-ball intersected with [0, 1]."""
    if eps is None:
        return torch.zeros_like(x), torch.ones_like(x)
    return (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)


def _quantize(adv, x, eps):
    """Round to multiples of 1/255 inside the eps-ball (where it holds one)."""
    q = torch.round(adv * 255.0)
    if eps is None:
        lo, hi = 0.0, 255.0
        q = q.clamp(lo, hi)
    else:
        # a small tolerance so that an 8-bit x with eps = k/255 keeps its
        # k-level ball despite the float rounding of (x +/- eps) * 255
        lo = torch.ceil((x - eps) * 255.0 - 1e-3).clamp_(min=0.0)
        hi = torch.floor((x + eps) * 255.0 + 1e-3).clamp_(max=255.0)
        q = torch.minimum(torch.maximum(q, lo), hi)
    return q / 255.0


def _finish(model, adv, x_in, labels, target, quantize, x, eps):
    if quantize:
        adv = _quantize(adv, x, eps)
    adv = adv.detach()
    if adv.shape[0]:
        pred = _predict(model, adv)
    else:
        pred = labels.clone()
    success = (pred == target) if target is not None else (pred != labels)
    return AttackResult(
        images=adv.to(device=x_in.device, dtype=x_in.dtype),
        success=success.to(x_in.device),
        target=None if target is None else target.to(x_in.device),
        predictions=pred.to(x_in.device),
    )


def _prepare(model, images, labels):
    x_in = _check_images(images)
    labels = _check_labels(labels, x_in.shape[0])
    device, dtype = _model_device_dtype(model, x_in)
    x = x_in.detach().to(device=device, dtype=dtype)
    return x_in, x, labels.to(device)


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
    x_in, x, labels = _prepare(model, images, labels)
    generator = _make_generator(random_state)
    with _attack_mode(model):
        target = _resolve_target(model, x, labels, targeted, target, generator, "fgsm")
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
    x_in, x, labels = _prepare(model, images, labels)
    generator = _make_generator(random_state)
    with _attack_mode(model):
        target = _resolve_target(model, x, labels, targeted, target, generator, "bim")
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
    x_in, x, labels = _prepare(model, images, labels)
    generator = _make_generator(random_state)
    with _attack_mode(model):
        target = _resolve_target(model, x, labels, targeted, target, generator, "pgd")
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
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not decay >= 0:
        raise ValueError(f"decay must be a float >= 0, got {decay!r}")
    x_in, x, labels = _prepare(model, images, labels)
    generator = _make_generator(random_state)
    with _attack_mode(model):
        target = _resolve_target(model, x, labels, targeted, target, generator, "mifgsm")
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
    x_in, x, labels = _prepare(model, images, labels)
    generator = _make_generator(random_state)
    with _attack_mode(model):
        target = _resolve_target(
            model, x, labels, True, target, generator, "iterative_target_class"
        )
        adv = _iterate(model, x, target, True, eps, alpha, n_iter) if x.shape[0] else x
        return _finish(model, adv, x_in, labels, target, quantize, x, eps)


# --------------------------------------------------------------------------
# L-BFGS


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
    from scipy.optimize import Bounds, minimize

    eps = _check_eps(eps, required=False)
    if isinstance(c_init, bool) or not isinstance(c_init, numbers.Real) or not c_init > 0:
        raise ValueError(f"c_init must be a positive float, got {c_init!r}")
    binary_search_steps = _check_positive_int(binary_search_steps, "binary_search_steps")
    max_iter = _check_positive_int(max_iter, "max_iter")
    x_in, x, labels = _prepare(model, images, labels)
    generator = _make_generator(random_state)
    n = x.shape[0]
    with _attack_mode(model):
        target = _resolve_target(model, x, labels, True, target, generator, "lbfgs")
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
            c_dev = torch.as_tensor(c, dtype=x.dtype, device=x.device)

            def objective(z, c=c, c_dev=c_dev):
                zz = z.reshape(n, -1)
                dist = ((zz - x64) ** 2).sum(axis=1)
                zt = torch.as_tensor(z, dtype=x.dtype).reshape(shape).to(x.device)
                zt.requires_grad_(True)
                with torch.enable_grad():
                    ce = F.cross_entropy(_forward(model, zt), target, reduction="sum")
                    (g_ce,) = torch.autograd.grad(ce, zt)
                g = g_ce.detach().cpu().double().numpy().reshape(n, -1)
                g = g + 2.0 * c[:, None] * (zz - x64)
                return float(ce.item()) + float((c * dist).sum()), g.ravel()

            res = minimize(
                objective,
                x64.ravel().copy(),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": max_iter},
            )
            adv = torch.as_tensor(res.x, dtype=x.dtype).reshape(shape).to(x.device)
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


# --------------------------------------------------------------------------
# random noise


def gaussian_noise(
    model,
    images,
    labels,
    eps=None,
    *,
    std=None,
    quantize=False,
    random_state=None,
):
    """Additive Gaussian noise.

    ``x + N(0, std^2)`` per pixel, clipped to the eps-ball when ``eps`` is
    given and to [0, 1].  ``success`` marks the images whose prediction
    changed from the label.

    Parameters
    ----------
    model, images, labels, quantize
        As in :func:`fgsm`.
    eps : float or None, default=None
        L-inf bound of the noise.  With the default ``std = eps / 2`` about
        4.6 % of the pixels are clipped to +/-eps.
    std : float or None, default=None
        Standard deviation of the noise; None means ``eps / 2`` (one of
        ``eps`` and ``std`` is needed).
    random_state : int, RandomState, torch.Generator or None, default=None
        Seeds the noise.

    Returns
    -------
    result : AttackResult

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep.attacks import gaussian_noise
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> x = torch.full((1, 1, 2, 2), 0.5)
    >>> result = gaussian_noise(model, x, torch.tensor([0]), eps=0.1, random_state=0)
    >>> bool((result.images - x).abs().max() <= 0.1 + 1e-6)
    True
    """
    eps = _check_eps(eps, required=False)
    if std is None:
        if eps is None:
            raise ValueError(
                "gaussian_noise needs std (the noise's standard deviation) or eps "
                "(then std = eps / 2)"
            )
        std = eps / 2.0
    elif isinstance(std, bool) or not isinstance(std, numbers.Real) or not std >= 0:
        raise ValueError(f"std must be a float >= 0, got {std!r}")
    x_in, x, labels = _prepare(model, images, labels)
    generator = _make_generator(random_state)
    with _attack_mode(model):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) * float(std)
        noise = noise.to(x.device)
        if eps is not None:
            noise = noise.clamp_(-eps, eps)
        adv = torch.clamp(x + noise, 0.0, 1.0)
        return _finish(model, adv, x_in, labels, None, quantize, x, eps)


def sign_noise(
    model,
    images,
    labels,
    eps=None,
    *,
    quantize=False,
    random_state=None,
):
    """Random sign noise, the NIPS 2017 toolkit's random-noise attack.

    Adds ``+eps`` or ``-eps`` to each pixel with probability 1/2 each, then
    clips to [0, 1].  ``success`` marks the images whose prediction changed.

    Parameters
    ----------
    model, images, labels, eps, quantize
        As in :func:`fgsm`.
    random_state : int, RandomState, torch.Generator or None, default=None
        Seeds the signs.

    Returns
    -------
    result : AttackResult

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep.attacks import sign_noise
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> x = torch.full((1, 1, 2, 2), 0.5)
    >>> result = sign_noise(model, x, torch.tensor([0]), eps=0.25, random_state=0)
    >>> sorted(set((result.images - x).abs().flatten().tolist()))
    [0.25]
    """
    eps = _check_eps(eps, attack="sign_noise")
    x_in, x, labels = _prepare(model, images, labels)
    generator = _make_generator(random_state)
    with _attack_mode(model):
        signs = torch.randint(0, 2, x.shape, generator=generator).to(x.dtype) * 2.0 - 1.0
        adv = torch.clamp(x + eps * signs.to(x.device), 0.0, 1.0)
        return _finish(model, adv, x_in, labels, None, quantize, x, eps)


# --------------------------------------------------------------------------
# registry and driver

ATTACKS = {
    "fgsm": fgsm,
    "bim": bim,
    "pgd": pgd,
    "mifgsm": mifgsm,
    "lbfgs": lbfgs,
    "gaussian_noise": gaussian_noise,
    "sign_noise": sign_noise,
    "iterative_target_class": iterative_target_class,
}


def _resolve_device(device):
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}"
        ) from exc


@contextlib.contextmanager
def _on_device(model, device):
    """Move the model to ``device`` for the run and back afterwards."""
    current = None
    for t in model.parameters():
        current = t.device
        break
    if current is None:
        for t in model.buffers():
            current = t.device
            break
    if current is None or current == device:
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to(current)


def run_attack(
    name,
    model,
    images,
    labels,
    *,
    eps=None,
    batch_size=256,
    device="auto",
    random_state=None,
    progress=False,
    **params,
):
    """Run the attack ``name`` over a data set in batches on a device.

    Parameters
    ----------
    name : str
        One of the keys of :data:`ATTACKS`: ``"fgsm"``, ``"bim"``, ``"pgd"``,
        ``"mifgsm"``, ``"lbfgs"``, ``"gaussian_noise"``, ``"sign_noise"``,
        ``"iterative_target_class"``.
    model : torch.nn.Module
        Classifier taking images in [0, 1] and returning logits.  It is moved to
        ``device`` for the run and back to where it was afterwards.
    images : ndarray or torch.Tensor of shape (N, C, H, W)
        Float images in [0, 1].
    labels : ndarray or torch.Tensor of int, shape (N,)
        True classes.
    eps : float or None, default=None
        L-inf budget in [0, 1] units (see :func:`eps_from_255`); needed by all
        attacks except ``lbfgs`` and ``gaussian_noise`` (given ``std``).
    batch_size : int, default=256
        Images per batch.
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    random_state : int, RandomState or None, default=None
        Seeds one ``torch.Generator`` used through all batches, so a run is
        reproducible for a given seed and batch size.
    progress : bool, default=False
        Show a tqdm progress bar over the batches.
    **params
        Passed to the attack function (e.g. ``n_iter``, ``alpha``,
        ``targeted``, ``target`` (an int or an array of N classes), ``quantize``).

    Returns
    -------
    result : AttackResult
        Concatenated over the batches, on the CPU; ``images`` has the dtype
        of the input.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from sklearn_advdet.deep.attacks import run_attack
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     _ = model[1].weight.copy_(torch.tensor([[1., -1, 0, 0], [-1, 1, 0, 0]]))
    ...     _ = model[1].bias.zero_()
    >>> x = np.array([[0.6, 0.4, 0.5, 0.5], [0.3, 0.7, 0.5, 0.5]], dtype=np.float32)
    >>> result = run_attack("fgsm", model, x.reshape(2, 1, 2, 2), np.array([0, 1]),
    ...                     eps=0.25, batch_size=1, device="cpu")
    >>> result.success
    tensor([True, True])
    """
    if not isinstance(name, str) or name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    eps = _check_eps(eps, required=False)
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = _resolve_device(device)
    images = _check_images(images)
    labels = _check_labels(labels, images.shape[0])
    target = params.pop("target", None)
    if target is not None and not (
        isinstance(target, numbers.Integral) and not isinstance(target, bool)
    ):
        target = _check_labels(target, images.shape[0], name="target")
    attack = ATTACKS[name]
    generator = _make_generator(random_state)
    n = images.shape[0]
    starts = range(0, n, int(batch_size))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, total=math.ceil(n / batch_size), desc=name, unit="batch")
    parts = []
    with _on_device(model, device):
        for start in starts:
            stop = min(start + int(batch_size), n)
            xb = images[start:stop].to(device)
            yb = labels[start:stop].to(device)
            kwargs = dict(params)
            if target is not None:
                kwargs["target"] = (
                    target if isinstance(target, numbers.Integral) else target[start:stop]
                )
            part = attack(model, xb, yb, eps, random_state=generator, **kwargs)
            parts.append(part)
    if not parts:
        return attack(model, images, labels, eps, random_state=generator, **params)

    def cat(field):
        values = [getattr(p, field) for p in parts]
        if values[0] is None:
            return None
        return torch.cat([v.cpu() for v in values])

    out = AttackResult(
        images=cat("images").to(images.dtype),
        success=cat("success"),
        target=cat("target"),
        predictions=cat("predictions"),
    )
    return out
