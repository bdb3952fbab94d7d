"""Attack configurations of a detection set: :class:`AttackSpec` and :func:`parse_attacks`."""

import hashlib
import json
import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch

from .attacks import ATTACKS

__all__ = ["AttackSpec", "NOISE_ATTACKS", "parse_attacks"]

#: Attacks whose non-fooling outputs count as authentic images.
NOISE_ATTACKS = ("gaussian_noise", "sign_noise")

#: Keys of an attack's ``params`` that configure the builder, not the attack.
_BUILDER_KEYS = ("label", "max_images")
_SEED_MAX = 2**31 - 1


@dataclass(frozen=True)
class AttackSpec:
    """One attack configuration of a detection set.

    Attributes
    ----------
    name : str
        Key of :data:`sklearn_advdet.deep.attacks.ATTACKS`.
    eps : float or None
        L-inf budget in [0, 1] units (None: the attack's own default, e.g.
        unbounded L-BFGS).
    params : dict
        More keyword arguments of the attack (``n_iter``, ``alpha``, ...).
    label : str
        Value of the ``attack`` column for its rows (default: ``name``).
    max_images : int or None
        Attack a seeded random subset of at most this many of the correctly
        classified test images (for slow attacks such as L-BFGS).
    """

    name: str
    eps: "float | None" = None
    params: dict = field(default_factory=dict)
    label: str = ""
    max_images: "int | None" = None

    @property
    def attack(self):
        return self.label or self.name

    @property
    def key(self):
        """A stable identifier of the configuration (used for seeds and files)."""
        payload = json.dumps(
            [self.name, self.eps, _jsonable(self.params), self.attack, self.max_images],
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def describe(self):
        eps = "none" if self.eps is None else f"{self.eps:.6g}"
        return f"{self.attack}(eps={eps})"


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def _check_eps_value(eps, name):
    if eps is None:
        return None
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps):
        raise ValueError(f"eps of attack {name!r} must be a float or None, got {eps!r}")
    return float(eps)


def _spec(name, eps=None, params=None):
    if not isinstance(name, str) or name not in ATTACKS:
        raise ValueError(
            f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}"
        )
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise TypeError(
            f"the params of attack {name!r} must be a dict of keyword arguments, "
            f"got {params!r}"
        )
    params = dict(params)
    label = params.pop("label", None) or ""
    max_images = params.pop("max_images", None)
    if max_images is not None:
        if (
            isinstance(max_images, bool)
            or not isinstance(max_images, numbers.Integral)
            or max_images < 1
        ):
            raise ValueError(
                f"max_images of attack {name!r} must be a positive int or None, "
                f"got {max_images!r}"
            )
        max_images = int(max_images)
    for reserved in ("eps", "random_state", "device", "batch_size", "progress"):
        if reserved in params:
            raise ValueError(
                f"params of attack {name!r} must not set {reserved!r}: "
                + ("give eps as the second entry of the configuration"
                   if reserved == "eps" else "it is an argument of build_detection_set")
            )
    if isinstance(eps, (list, tuple, np.ndarray)):
        return [
            AttackSpec(name, _check_eps_value(e, name), params, str(label), max_images)
            for e in eps
        ]
    return [AttackSpec(name, _check_eps_value(eps, name), params, str(label), max_images)]


def parse_attacks(attacks):
    """Normalise an ``attacks`` argument into a list of :class:`AttackSpec`.

    Parameters
    ----------
    attacks : list or dict
        * a list whose items are an attack name, a tuple ``(name,)``,
          ``(name, eps)`` or ``(name, eps, params)``, a dict with keys
          ``name``, ``eps``, ``params`` (and optionally ``label``,
          ``max_images``), or an :class:`AttackSpec`;
        * a dict ``{name: eps}``.

        ``eps`` may be a list of budgets (one configuration each).  In
        ``params``, the keys ``label`` (the ``attack`` column's value, to tell
        apart two configurations of the same attack) and ``max_images`` (attack
        a random subset of at most this many images) configure the builder;
        the other keys go to the attack function.

    Returns
    -------
    list of AttackSpec

    Examples
    --------
    >>> from sklearn_advdet.deep.attack_specs import parse_attacks
    >>> [s.describe() for s in parse_attacks([("fgsm", [0.1, 0.2]), "lbfgs"])]
    ['fgsm(eps=0.1)', 'fgsm(eps=0.2)', 'lbfgs(eps=none)']
    """
    if isinstance(attacks, dict):
        attacks = list(attacks.items())
    if isinstance(attacks, (str, AttackSpec)):
        attacks = [attacks]
    try:
        items = list(attacks)
    except TypeError:
        raise TypeError(
            "attacks must be a list of attack configurations or a dict "
            f"{{name: eps}}, got {attacks!r}"
        ) from None
    specs = []
    for item in items:
        if isinstance(item, AttackSpec):
            specs.append(item)
        elif isinstance(item, str):
            specs.extend(_spec(item))
        elif isinstance(item, dict):
            unknown = set(item) - {"name", "eps", "params", "label", "max_images"}
            if "name" not in item or unknown:
                raise ValueError(
                    "an attack given as a dict needs the key 'name' and may have "
                    f"'eps', 'params', 'label', 'max_images'; got keys {sorted(item)}"
                )
            params = dict(item.get("params") or {})
            for k in _BUILDER_KEYS:
                if item.get(k) is not None:
                    params[k] = item[k]
            specs.extend(_spec(item["name"], item.get("eps"), params))
        elif isinstance(item, tuple) and 1 <= len(item) <= 3:
            specs.extend(_spec(*item))
        else:
            raise TypeError(
                "each attack must be a name, a tuple (name, eps[, params]), a dict "
                f"or an AttackSpec, got {item!r}"
            )
    if not specs:
        raise ValueError("attacks is empty: configure at least one attack")
    seen = {}
    for s in specs:
        k = (s.attack, s.eps)
        if k in seen:
            raise ValueError(
                f"two configurations of {s.describe()} would share the same "
                "'attack' and 'eps' values: give one a distinct 'label' in its params"
            )
        seen[k] = s
    return specs


def _spec_seed(base_seed, spec):
    digest = hashlib.sha256(f"{base_seed}:{spec.key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % _SEED_MAX
