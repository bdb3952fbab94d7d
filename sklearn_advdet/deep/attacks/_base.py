"""Machinery shared by every attack: results, checks, the model's forward.

What each attack function does with it::

    x_in, x, labels, n_classes = _prepare(model, images, labels)   # in _attack_mode
    target = _resolve_target(...)                                   # targeted attacks
    adv = ...                                                       # the attack itself
    return _finish(model, adv, x_in, labels, target, quantize, x, eps)

Inputs are checked by :mod:`sklearn_advdet.deep._checks` (the torch side's
one validation layer); the model's output must be one logits tensor.
"""

import contextlib
import math
import numbers
import sys
import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..._validation import check_int
from .._checks import (as_tensor, check_images, check_labels, first_forward,
                       select_logits)

__all__ = ["AttackResult", "eps_from_255"]


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
# parameter checks


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


def _no_budget(eps, attack):
    """Minimal-perturbation attacks (CW-L2, DeepFool) take no eps."""
    if eps is not None:
        raise ValueError(
            f"{attack} is a minimal-perturbation attack and takes no eps budget: leave "
            "eps=None (it stops just past the decision boundary)"
        )


def _check_positive_int(value, name):
    return check_int(value, name, 1)


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


# --------------------------------------------------------------------------
# the model during an attack


def _model_device_dtype(model, images):
    for t in model.parameters():
        return t.device, (t.dtype if t.is_floating_point() else torch.float32)
    for t in model.buffers():
        if t.is_floating_point():
            return t.device, t.dtype
    dtype = images.dtype if images.is_floating_point() else torch.float32
    return images.device, dtype


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


#: How far the CPU default (channels_last input) may be from torchattacks
#: (contiguous input) on BIM/PGD/MI-FGSM, ResNet-20, 8/255, 10 steps of 2/255:
#: the share of pixels at least one 8-bit level apart, the share of images
#: with any such pixel, the share of images whose success agrees.  Measured
#: (benchmarks/results/bench_attacks.md) 1.0 %, 3.8 % and 100 % on 1,024 CIFAR
#: test images on the development machine, but 3.5 % of the pixels in 10.2 %
#: of 128 images (BIM) on the CI machine: how often a numerically-zero
#: gradient component changes sign depends on the CPU's oneDNN kernels, so
#: the bounds the cross-check test asserts leave room for other CPUs.
CHANNELS_LAST_TOLERANCE = {"pixels": 0.06, "images": 0.20, "success_agreement": 0.95}

# models whose forward rejected a channels_last input (e.g. a ``.view`` of an
# un-pooled feature map): they get contiguous input from then on
_CHANNELS_LAST_FAILED = weakref.WeakKeyDictionary()


def _channels_last_enabled():
    # the switch lives on the package (``attacks.CPU_CHANNELS_LAST``), where
    # users and the docs set it
    return sys.modules[__package__].CPU_CHANNELS_LAST


def _forward(model, x):
    """The logits ``model(x)``, with 4-D CPU input in the channels_last format.

    Same values, another layout: oneDNN's CPU convolutions run 13-22 % faster
    on it (forward + backward of the CIFAR ResNet-20, batch 128, torch 2.13
    and 2.14), and the gradient comes back in x's own layout.  A model whose
    forward raises on it (a ``.view`` that needs contiguous memory) is called
    again with x as it is, and remembered.  On CUDA the input is left alone
    (not measured here), and everywhere when ``CPU_CHANNELS_LAST`` is False.
    The output must be one logits tensor (see
    :func:`sklearn_advdet.deep._checks.select_logits`).
    """
    if (
        x.ndim == 4
        and x.device.type == "cpu"
        and model not in _CHANNELS_LAST_FAILED
        and _channels_last_enabled()
    ):
        try:
            out = model(x.contiguous(memory_format=torch.channels_last))
        except RuntimeError:
            out = model(x)  # raising too: the input's fault, not the layout's
            _CHANNELS_LAST_FAILED[model] = True
        return select_logits(out, n=x.shape[0])
    return select_logits(model(x), n=x.shape[0])


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
    """The width of the model's logits, from its first image."""
    with torch.no_grad():
        return int(first_forward(lambda b: _forward(model, b), x[:1]).shape[1])


def _prepare(model, images, labels):
    """Checked inputs: ``(x_in, x, labels, n_classes)``; call in _attack_mode.

    ``x`` is the input on the model's device and in its dtype; the labels are
    checked against the model's number of classes (one forward pass of one
    image), so an impossible label is a ValueError before any work.
    ``n_classes`` is None for an empty batch.
    """
    x_in = check_images(images)
    labels = check_labels(labels, x_in.shape[0])
    device, dtype = _model_device_dtype(model, x_in)
    x = x_in.detach().to(device=device, dtype=dtype)
    n_classes = None
    if x.shape[0]:
        n_classes = _n_classes(model, x)
        labels = check_labels(labels, x.shape[0], n_classes)
    return x_in, x, labels.to(device), n_classes


def _random_targets(labels, n_classes, generator):
    """A uniformly random class different from each label."""
    if n_classes < 2:
        raise ValueError("a targeted attack needs a model with at least 2 classes")
    offset = torch.randint(1, n_classes, (labels.shape[0],), generator=generator)
    return (labels.cpu() + offset) % n_classes


def _resolve_target(labels, n_classes, targeted, target, generator, attack):
    """None for untargeted attacks, else the target classes on the labels' device."""
    if not targeted:
        if target is not None:
            raise ValueError(
                f"{attack}: target was given but targeted=False; pass targeted=True to "
                "attack toward it"
            )
        return None
    n = labels.shape[0]
    if target is None:
        if n == 0:
            return labels.clone()
        return _random_targets(labels, n_classes, generator).to(labels.device)
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        target = torch.full((n,), int(target), dtype=torch.long)
    target = check_labels(target, n, n_classes, name="target").to(labels.device)
    same = target == labels
    if bool(same.any()):
        raise ValueError(
            f"{attack}: target equals the true label for {int(same.sum())} image(s); "
            "a targeted attack needs a different class (leave target=None for a "
            "random one)"
        )
    return target


def _check_target_arg(target, n):
    """``run_attack``'s target: None, an int, or N class indices."""
    if target is None or (isinstance(target, numbers.Integral) and not isinstance(target, bool)):
        return target
    return check_labels(as_tensor(target, "target"), n, name="target")


# --------------------------------------------------------------------------
# bounds and the result


def _ball(x, eps):
    """Lower and upper bounds of the eps-ball intersected with [0, 1]."""
    if eps is None:
        return torch.zeros_like(x), torch.ones_like(x)
    return (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)


def _quantize(adv, x, eps):
    """Round to multiples of 1/255 inside the eps-ball (where it holds one)."""
    q = torch.round(adv * 255.0)
    if eps is None:
        q = q.clamp(0.0, 255.0)
    else:
        # a small tolerance so that an 8-bit x with eps = k/255 keeps its
        # k-level ball despite the float rounding of (x +/- eps) * 255
        lo = torch.ceil((x - eps) * 255.0 - 1e-3).clamp_(min=0.0)
        hi = torch.floor((x + eps) * 255.0 + 1e-3).clamp_(max=255.0)
        q = torch.minimum(torch.maximum(q, lo), hi)
    return q / 255.0


def _finish(model, adv, x_in, labels, target, quantize, x, eps):
    """Quantise (if asked), predict, and build the AttackResult on x_in's device."""
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
