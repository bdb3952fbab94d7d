"""Attack-balanced sample weights: authentic images and each attack weigh the same."""

import numpy as np
from sklearn.utils.validation import check_consistent_length, column_or_1d

from ._validation import check_binary_y

__all__ = ["balanced_sample_weight"]


def balanced_sample_weight(y, attack):
    """Sample weights that represent authentic images and each attack equally.

    The rows fall into groups: all authentic rows (``y == 0``) form one
    group, and the adversarial rows (``y == 1``) form one group per attack
    name.  Every group receives the same total weight, and the weights sum
    to the number of rows (the convention of scikit-learn's
    ``class_weight="balanced"``): a row of group ``g`` weighs
    ``n_samples / (n_groups * n_g)``.  Passed as ``sample_weight`` to the
    detectors' ``fit``, this reproduces the paper's weighted random sampler.
    A ROC AUC weighted with these weights equals the macro AUC (the mean
    over attacks of each attack's AUC against all authentic rows).

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Detection labels: 0 authentic, 1 adversarial.
    attack : array-like of shape (n_samples,)
        Attack name of each row; ignored where ``y == 0``.

    Returns
    -------
    sample_weight : ndarray of shape (n_samples,), dtype float64

    Examples
    --------
    >>> from sklearn_advdet import balanced_sample_weight
    >>> y = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    >>> attack = ["", "", "", "", "fgsm", "fgsm", "fgsm", "fgsm", "pgd", "pgd"]
    >>> balanced_sample_weight(y, attack).round(4)
    array([0.8333, 0.8333, 0.8333, 0.8333, 0.8333, 0.8333, 0.8333, 0.8333,
           1.6667, 1.6667])
    """
    y01 = check_binary_y(column_or_1d(y), what="y")
    attack = column_or_1d(np.asarray(attack, dtype=object))
    check_consistent_length(y01, attack)
    n = y01.shape[0]
    if n == 0:
        raise ValueError("y is empty: pass at least one row")
    # group ids: 0 = authentic, 1.. = attacks (names compared as strings)
    group = np.zeros(n, dtype=np.intp)
    adv = y01 == 1
    if adv.any():
        names = attack[adv].astype(str)
        _, inverse = np.unique(names, return_inverse=True)
        group[adv] = inverse + 1
    present, counts = np.unique(group, return_counts=True)
    per_row = n / (present.size * counts.astype(np.float64))
    lookup = np.zeros(present.max() + 1)
    lookup[present] = per_row
    return lookup[group]
