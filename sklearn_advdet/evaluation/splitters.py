"""Unseen-attack protocols as scikit-learn cross-validation splitters.

Every splitter here is built with per-row metadata aligned with ``X`` (the
attack name or the budget of each row: scikit-learn passes only ``X``,
``y`` and ``groups`` to ``split``), needs ``groups`` (the source image of
each row) and never puts a source image on both sides:

1. the source images are split once (a :class:`~sklearn.model_selection.GroupShuffleSplit`
   draw: ``test_size`` of the images to the test side, seeded by
   ``random_state``), the same partition for every split of the splitter,
   so the splits of one protocol are comparable;
2. an authentic row (``y == 0``) goes to the side of its source image;
3. an adversarial row goes to the side of its source image **if** its
   attack (or budget) belongs on that side in this split, and is left out
   otherwise.

So a split trains on the authentic rows and the training attacks of the
training images, and tests on the authentic rows and the held-out attack of
the other images.  Usable as ``cv=`` in :func:`~sklearn.model_selection.cross_validate`
and :class:`~sklearn.model_selection.GridSearchCV` (pass ``groups=``).

Read more in the :ref:`User Guide <evaluation>`.
"""

from numbers import Integral, Real

import numpy as np
from sklearn.model_selection import BaseCrossValidator, GroupShuffleSplit
from sklearn.utils import column_or_1d

from .._validation import check_label_types

__all__ = ["LeaveOneAttackOut", "UnseenAttackSplit", "AttackTransferSplit", "CrossEpsilonSplit"]


def _first_order(values):
    names, first = np.unique(values, return_index=True)
    return names[np.argsort(first)]


class _ProtocolSplit(BaseCrossValidator):
    """Shared machinery: metadata checks and the source-image partition."""

    # the splitter consumes ``groups`` under metadata routing
    __metadata_request__split = {"groups": True}
    _meta_name = "attack"

    def _meta(self):
        """The per-row labels the protocol splits by: the attack names (by default)."""
        _check_test_size(self.test_size)
        return np.asarray(column_or_1d(self.attack)).astype(str)

    def _check(self, X, y, groups, need_groups=True):
        meta = self._meta()
        if y is None:
            raise ValueError(
                f"{type(self).__name__} needs y (1 = adversarial, 0 = authentic) "
                "to tell adversarial rows from authentic ones: pass y to split()"
            )
        y = check_label_types(column_or_1d(y))
        n = len(y) if X is None else X.shape[0] if hasattr(X, "shape") else len(X)
        if len(y) != n:
            raise ValueError(f"X has {n} rows but y has {len(y)}")
        if len(meta) != n:
            raise ValueError(
                f"{type(self).__name__} was built with {len(meta)} per-row "
                f"{self._meta_name} values but X has {n} rows: build the splitter "
                f"with the {self._meta_name} of exactly the rows passed to split() "
                "(inside a nested cross-validation the inner search sees a subset: "
                "build a splitter for that subset, e.g. with a GroupKFold inner cv)"
            )
        if groups is None and not need_groups:
            groups = np.zeros(n)
        if groups is None:
            raise ValueError(
                f"{type(self).__name__} needs groups (the source image of every "
                "row) so that no image and its adversarial versions sit on both "
                "sides: pass groups= to split(), cross_validate or GridSearchCV.fit"
            )
        groups = column_or_1d(groups)
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} values but X has {n} rows")
        bad = ~np.isin(np.unique(y), (0, 1))
        if bad.any():
            raise ValueError("y must hold 0 (authentic) and 1 (adversarial) only")
        if not np.any(y == 0):
            raise ValueError(
                "y has no authentic row (y == 0): every split trains and tests "
                "on authentic rows as well"
            )
        return y, groups, meta

    def _image_sides(self, groups):
        """Boolean mask of the rows whose source image is on the test side."""
        gss = GroupShuffleSplit(n_splits=1, test_size=self.test_size,
                                random_state=self.random_state)
        dummy = np.zeros((len(groups), 1))
        _, test = next(gss.split(dummy, groups=groups))
        in_test = np.zeros(len(groups), dtype=bool)
        in_test[test] = True
        return in_test

    def _pairs(self, y, meta):
        raise NotImplementedError

    def split(self, X, y=None, groups=None):
        """Yield ``(train, test)`` row indices, one pair per protocol split.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            1 = adversarial, 0 = authentic.
        groups : array-like of shape (n_samples,)
            Source image of every row.

        Yields
        ------
        train, test : ndarray of int
        """
        y, groups, meta = self._check(X, y, groups)
        in_test = self._image_sides(groups)
        authentic = y == 0
        for train_keys, test_keys in self._pairs(y, meta):
            train = (~in_test) & (authentic | np.isin(meta, train_keys))
            test = in_test & (authentic | np.isin(meta, test_keys))
            yield np.flatnonzero(train), np.flatnonzero(test)

    def _iter_test_indices(self, X=None, y=None, groups=None):  # pragma: no cover
        for _, test in self.split(X, y, groups):
            yield test

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of splits (needs ``y``: the adversarial rows name the families)."""
        y, _, meta = self._check(X, y, groups, need_groups=False)
        return len(self._pairs(y, meta))

    def split_names(self, y):
        """The ``(train, test)`` names of each split, in ``split`` order."""
        y = column_or_1d(y)
        return [(self._label(tr), self._label(te)) for tr, te in self._pairs(y, self._meta())]

    @staticmethod
    def _label(keys):
        return "+".join(str(k) for k in keys)


def _check_test_size(test_size):
    if isinstance(test_size, bool) or not isinstance(test_size, (Real, Integral)):
        raise TypeError(f"test_size must be a float in (0, 1) or an int, got {test_size!r}")
    return test_size


class LeaveOneAttackOut(_ProtocolSplit):
    """Train on every attack family but one, test on the one left out.

    The families are the attack labels of the rows with ``y == 1``; there is
    one split per family.  A split trains on the authentic rows and every
    other family's rows of the training images, and tests on the authentic
    rows and the held-out family's rows of the test images; no source image
    is on both sides (see the module docstring for the rule).

    Parameters
    ----------
    attack : array-like of shape (n_samples,)
        Attack name of every row of the ``X`` that will be split (ignored on
        authentic rows).
    test_size : float or int, default=0.3
        Share (float) or number (int) of source images on the test side.
    random_state : int, RandomState instance or None, default=None
        Seeds the partition of the source images.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet.evaluation import LeaveOneAttackOut
    >>> attack = np.array(["-"] * 4 + ["fgsm"] * 4 + ["pgd"] * 4)
    >>> y = (attack != "-").astype(int)
    >>> groups = np.tile(np.arange(4), 3)
    >>> cv = LeaveOneAttackOut(attack, test_size=0.5, random_state=0)
    >>> cv.get_n_splits(None, y, groups), cv.split_names(y)
    (2, [('pgd', 'fgsm'), ('fgsm', 'pgd')])
    >>> train, test = next(cv.split(np.zeros((12, 1)), y, groups))
    >>> np.unique(attack[train]).tolist(), np.unique(attack[test]).tolist()
    (['-', 'pgd'], ['-', 'fgsm'])
    """

    def __init__(self, attack, *, test_size=0.3, random_state=None):
        self.attack = attack
        self.test_size = test_size
        self.random_state = random_state

    def _pairs(self, y, meta):
        families = list(_first_order(meta[y == 1]))
        if len(families) < 2:
            raise ValueError(
                f"leave-one-attack-out needs at least 2 attack families among the "
                f"adversarial rows, got {families!r}: pass the attack labels of a "
                "set with several attacks, or use a plain GroupKFold"
            )
        return [([f for f in families if f != held], [held]) for held in families]

    def split_names(self, y):
        """The held-out family's name is the test name; training names the rest."""
        return super().split_names(y)


class UnseenAttackSplit(_ProtocolSplit):
    """Train on a fixed set of attack families together, test on each of the others.

    The protocol of "a detector trained on the attacks you could generate,
    facing the ones you could not": one split per family not in
    ``train_attacks``; each trains on the authentic rows and every
    ``train_attacks`` family of the training images, and tests on the
    authentic rows and that one unseen family of the test images.  Names are
    compared without regard to case.

    Parameters
    ----------
    attack : array-like of shape (n_samples,)
        Attack name of every row (ignored on authentic rows).
    train_attacks : sequence of str, default=("FGSM", "PGD")
        Families seen in training; each must be among the adversarial rows.
    test_size : float or int, default=0.3
    random_state : int, RandomState instance or None, default=None

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet.evaluation import UnseenAttackSplit
    >>> attack = np.array(["-"] * 4 + ["fgsm"] * 4 + ["pgd"] * 4 + ["cw"] * 4)
    >>> y = (attack != "-").astype(int)
    >>> UnseenAttackSplit(attack, train_attacks=["FGSM", "PGD"]).split_names(y)
    [('fgsm+pgd', 'cw')]
    """

    def __init__(self, attack, *, train_attacks=("FGSM", "PGD"), test_size=0.3,
                 random_state=None):
        self.attack = attack
        self.train_attacks = train_attacks
        self.test_size = test_size
        self.random_state = random_state

    def _pairs(self, y, meta):
        present = [str(f) for f in _first_order(meta[y == 1])]
        wanted = ([self.train_attacks] if isinstance(self.train_attacks, str)
                  else list(self.train_attacks))
        by_lower = {p.lower(): p for p in present}
        missing = [w for w in wanted if str(w).lower() not in by_lower]
        if missing or not wanted:
            raise ValueError(
                f"train_attacks {missing or wanted!r} not among the adversarial rows' "
                f"attacks {present!r}: pick names from that list"
            )
        train = [by_lower[str(w).lower()] for w in wanted]
        unseen = [p for p in present if p not in train]
        if not unseen:
            raise ValueError(
                f"every attack family {present!r} is in train_attacks: no unseen "
                "family is left to test on"
            )
        return [(train, [u]) for u in unseen]


class AttackTransferSplit(_ProtocolSplit):
    """Train on attack A, test on attack B, for every ordered pair: the transfer matrix.

    Parameters
    ----------
    attack : array-like of shape (n_samples,)
        Attack name of every row (ignored on authentic rows).
    train_attacks, test_attacks : sequence of str, default=None
        Families on each side; ``None`` = every family of the adversarial rows.
        A name not present raises a ValueError listing the families.
    include_diagonal : bool, default=True
        Also yield A -> A (the known-attack cell, still on held-out images).
    test_size : float or int, default=0.3
    random_state : int, RandomState instance or None, default=None

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet.evaluation import AttackTransferSplit
    >>> attack = np.array(["-"] * 4 + ["fgsm"] * 4 + ["pgd"] * 4)
    >>> y = (attack != "-").astype(int)
    >>> cv = AttackTransferSplit(attack, include_diagonal=False)
    >>> cv.split_names(y)
    [('fgsm', 'pgd'), ('pgd', 'fgsm')]
    """

    def __init__(self, attack, *, train_attacks=None, test_attacks=None,
                 include_diagonal=True, test_size=0.3, random_state=None):
        self.attack = attack
        self.train_attacks = train_attacks
        self.test_attacks = test_attacks
        self.include_diagonal = include_diagonal
        self.test_size = test_size
        self.random_state = random_state

    def _side(self, chosen, present, what):
        if chosen is None:
            return present
        chosen = [str(c) for c in ([chosen] if isinstance(chosen, str) else chosen)]
        missing = [c for c in chosen if c not in present]
        if missing:
            raise ValueError(
                f"{what} {missing!r} not among the adversarial rows' attacks "
                f"{present!r}: pick names from that list"
            )
        return chosen

    def _pairs(self, y, meta):
        present = [str(f) for f in _first_order(meta[y == 1])]
        if not present:
            raise ValueError("y has no adversarial row (y == 1): nothing to transfer")
        train = self._side(self.train_attacks, present, "train_attacks")
        test = self._side(self.test_attacks, present, "test_attacks")
        pairs = [([a], [b]) for a in train for b in test
                 if self.include_diagonal or a != b]
        if not pairs:
            raise ValueError(
                "no (train, test) pair: with include_diagonal=False at least two "
                "attack families are needed"
            )
        return pairs


class CrossEpsilonSplit(AttackTransferSplit):
    """Train at one perturbation budget, test at another (every ordered pair).

    Adversarial rows are grouped by their budget ``eps`` (every family at
    that budget pooled, or only the ``family`` given); rows without a finite
    budget (e.g. L-BFGS, NaN) are never used as adversarial rows.

    Parameters
    ----------
    eps : array-like of shape (n_samples,)
        Budget of every row (ignored on authentic rows; NaN = none).
    attack : array-like of shape (n_samples,), default=None
        Attack names, needed with ``family``.
    family : str, default=None
        Only that family's adversarial rows.
    train_eps, test_eps : sequence of float, default=None
        Budgets on each side; ``None`` = every budget present.
    include_diagonal : bool, default=True
    test_size : float or int, default=0.3
    random_state : int, RandomState instance or None, default=None

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet.evaluation import CrossEpsilonSplit
    >>> eps = np.array([np.nan] * 4 + [0.1] * 4 + [0.2] * 4)
    >>> y = np.isfinite(eps).astype(int)
    >>> CrossEpsilonSplit(eps, include_diagonal=False).split_names(y)
    [('0.1', '0.2'), ('0.2', '0.1')]
    """

    _meta_name = "eps"

    def __init__(self, eps, *, attack=None, family=None, train_eps=None, test_eps=None,
                 include_diagonal=True, test_size=0.3, random_state=None):
        self.eps = eps
        self.attack = attack
        self.family = family
        self.train_eps = train_eps
        self.test_eps = test_eps
        self.include_diagonal = include_diagonal
        self.test_size = test_size
        self.random_state = random_state

    def _meta(self):
        _check_test_size(self.test_size)
        eps = np.asarray(column_or_1d(self.eps), dtype=np.float64)
        key = np.array([f"{e:g}" if np.isfinite(e) else "" for e in eps], dtype=object)
        if self.family is not None:
            if self.attack is None:
                raise ValueError("family= needs attack= (the attack name of every row)")
            attack = np.asarray(column_or_1d(self.attack)).astype(str)
            if len(attack) != len(eps):
                raise ValueError(
                    f"attack has {len(attack)} values but eps has {len(eps)}: pass "
                    "both aligned with X"
                )
            if self.family not in set(attack):
                raise ValueError(
                    f"family {self.family!r} is not among the attacks "
                    f"{sorted(set(attack))!r}"
                )
            key[attack != self.family] = ""
        return key.astype(str)

    def _pairs(self, y, meta):
        present = [k for k in _first_order(meta[y == 1]) if k != ""]
        present = sorted(present, key=float)
        if not present:
            raise ValueError(
                "no adversarial row has a finite eps: CrossEpsilonSplit needs the "
                "budget of every adversarial row"
            )
        conv = (lambda v: None if v is None else
                [f"{float(e):g}" for e in (np.atleast_1d(v))])
        train = self._side(conv(self.train_eps), present, "train_eps")
        test = self._side(conv(self.test_eps), present, "test_eps")
        pairs = [([a], [b]) for a in train for b in test if self.include_diagonal or a != b]
        if not pairs:
            raise ValueError(
                "no (train, test) pair: with include_diagonal=False at least two "
                "budgets are needed"
            )
        return pairs
