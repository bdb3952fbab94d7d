"""Random-noise baselines: Gaussian noise and the NIPS 2017 toolkit's sign noise."""

import math

import torch

from ..._validation import check_real
from ._base import _attack_mode, _check_eps, _finish, _make_generator, _prepare

__all__ = ["gaussian_noise", "sign_noise"]


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
    else:
        std = check_real(std, "std", 0.0, math.inf)
    generator = _make_generator(random_state)
    with _attack_mode(model):
        x_in, x, labels, _ = _prepare(model, images, labels)
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
    generator = _make_generator(random_state)
    with _attack_mode(model):
        x_in, x, labels, _ = _prepare(model, images, labels)
        signs = torch.randint(0, 2, x.shape, generator=generator).to(x.dtype) * 2.0 - 1.0
        adv = torch.clamp(x + eps * signs.to(x.device), 0.0, 1.0)
        return _finish(model, adv, x_in, labels, None, quantize, x, eps)
