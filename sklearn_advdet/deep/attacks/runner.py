"""The attack registry and the batch driver :func:`run_attack`."""

import contextlib
import inspect
import math
import numbers

import torch

from ..._device import module_device, resolve_device
from ..._progress import progress as _progress
from ..._validation import check_int
from .._checks import check_images, check_labels
from ._base import (
    AttackResult,
    _attack_mode,
    _check_eps,
    _check_target_arg,
    _make_generator,
    _model_device_dtype,
    _n_classes,
)
from .apgd import apgd
from .cw import cw_l2
from .deepfool import deepfool
from .gradient import bim, fgsm, iterative_target_class, mifgsm, pgd
from .lbfgs import lbfgs
from .noise import gaussian_noise, sign_noise

__all__ = ["ATTACKS", "run_attack"]

#: The attacks by name, as :func:`run_attack`, ``parse_attacks`` and the CLI
#: know them.
ATTACKS = {
    "fgsm": fgsm,
    "bim": bim,
    "pgd": pgd,
    "mifgsm": mifgsm,
    "lbfgs": lbfgs,
    "gaussian_noise": gaussian_noise,
    "sign_noise": sign_noise,
    "iterative_target_class": iterative_target_class,
    "cw_l2": cw_l2,
    "deepfool": deepfool,
    "apgd": apgd,
}


@contextlib.contextmanager
def _on_device(model, device):
    """Move the model to ``device`` for the run and back afterwards."""
    current = module_device(model)
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
        ``"iterative_target_class"``, ``"cw_l2"``, ``"deepfool"``, ``"apgd"``.
    model : torch.nn.Module
        Classifier taking images in [0, 1] and returning logits.  It is moved to
        ``device`` for the run and back to where it was afterwards.
    images : ndarray or torch.Tensor of shape (N, C, H, W)
        Float images in [0, 1].
    labels : ndarray or torch.Tensor of int, shape (N,)
        True classes.
    eps : float or None, default=None
        L-inf budget in [0, 1] units (see :func:`eps_from_255`); needed by all
        attacks except ``lbfgs`` and ``gaussian_noise`` (given ``std``);
        ``cw_l2`` and ``deepfool`` take none.
    batch_size : int, default=256
        Images per batch.
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    random_state : int, RandomState or None, default=None
        Seeds one ``torch.Generator`` used through all batches, so a run is
        reproducible for a given seed and batch size.
    progress : bool, default=False
        One progress bar for the attack, over its batches (shown on a
        terminal only); False shows nothing.
    **params
        Passed to the attack function (e.g. ``n_iter``, ``alpha``,
        ``targeted``, ``target`` (an int or an array of N classes), ``quantize``);
        one the attack does not take is a ``TypeError`` listing those it does.

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
    batch_size = check_int(batch_size, "batch_size", 1)
    device = resolve_device(device)
    images = check_images(images)
    n = images.shape[0]
    labels = check_labels(labels, n)
    attack = ATTACKS[name]
    _check_params(name, attack, params)
    target = _check_target_arg(params.pop("target", None), n)
    generator = _make_generator(random_state)
    parts = []
    with _on_device(model, device):
        _check_classes(model, images, labels, target, device)
        with _progress(
            math.ceil(n / batch_size), enabled=progress, desc=name, unit="batch"
        ) as bar:
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                kwargs = dict(params)
                if target is not None:
                    kwargs["target"] = (
                        target if isinstance(target, numbers.Integral) else target[start:stop]
                    )
                xb, yb = images[start:stop].to(device), labels[start:stop].to(device)
                parts.append(attack(model, xb, yb, eps, random_state=generator, **kwargs))
                bar.update(1)
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


def _check_params(name, attack, params):
    """Refuse a parameter the attack does not take, listing the ones it does."""
    fixed = ("model", "images", "labels", "eps", "random_state")
    accepted = [p for p in inspect.signature(attack).parameters if p not in fixed]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(
            f"{name} takes no parameter {', '.join(map(repr, unknown))}: its parameters "
            f"are {accepted}"
        )


def _check_classes(model, images, labels, target, device):
    """Labels (and targets) against the model's classes, before any batch runs."""
    if not images.shape[0]:
        return
    _, dtype = _model_device_dtype(model, images)
    with _attack_mode(model):
        n_classes = _n_classes(model, images[:1].to(device=device, dtype=dtype))
    check_labels(labels, labels.shape[0], n_classes)
    if isinstance(target, torch.Tensor):
        check_labels(target, target.shape[0], n_classes, name="target")
    elif target is not None and not 0 <= target < n_classes:
        raise ValueError(
            f"target={target} is not a class of the model (it has {n_classes} classes)"
        )
