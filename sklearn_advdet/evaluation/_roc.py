"""Weighted ROC statistics for many bootstrap resamples at once.

A bootstrap resample over source images is a vector of row weights (how
many times each row's source image was drawn).  For one attack (its
adversarial rows against every authentic row) the scores are sorted once;
every statistic is then a cumulative sum over the distinct score levels of
a ``(n_resamples, n_levels)`` matrix of weights, so 1,000 resamples cost a
few matrix passes instead of 1,000 calls to :func:`sklearn.metrics.roc_curve`.

With unit weights every statistic equals the one of
:mod:`sklearn_advdet.metrics` (same tie handling as
``roc_curve(drop_intermediate=False)``).
"""

import numpy as np

__all__ = ["ROCStatistics", "weighted_roc_statistics"]


class ROCStatistics:
    """Levels of one subset: positive / negative weights per distinct score.

    Parameters
    ----------
    y : ndarray of shape (n,)
        0/1 labels of the subset.
    score : ndarray of shape (n,)
        Scores of the subset (higher = adversarial).
    """

    def __init__(self, y, score):
        order = np.argsort(-score, kind="mergesort")
        s = score[order]
        # start of every run of equal scores, in descending score order
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        self.order = order
        self.starts = starts
        self.positive = y[order] == 1

    def level_weights(self, W, rows=None):
        """Positive and negative weight per level, each ``(n_resamples, n_levels)``.

        ``W`` holds one weight per row of the subset, or, with ``rows`` (the
        subset's row indices), one per row of the whole sample: the subset
        is then gathered in the same pass as the sort.
        """
        take = self.order if rows is None else rows[self.order]
        Ws = W[:, take]
        total = np.add.reduceat(Ws, self.starts, axis=1)
        Ws[:, ~self.positive] = 0.0
        pos = np.add.reduceat(Ws, self.starts, axis=1)
        return pos, total - pos


def weighted_roc_statistics(stats, W, *, rows=None, fpr_levels=(0.01, 0.05), tpr_level=0.95):
    """AUC, TPR at FPRs, FPR at a TPR and EER accuracy for every row of ``W``.

    Parameters
    ----------
    stats : ROCStatistics
    W : ndarray of shape (n_resamples, n) or (n_resamples, n_total)
        Row weights of each resample (unit weights: the sample itself).
    rows : ndarray of int, default=None
        With ``W`` over the whole sample, the rows of this subset.
    fpr_levels : tuple of float
        FPRs at which the TPR is read: the largest TPR among thresholds
        whose FPR does not exceed the level.
    tpr_level : float
        TPR at which the FPR is read: the FPR of the first (highest)
        threshold whose TPR reaches it, as :func:`~sklearn_advdet.metrics.fpr_at_tpr`.

    Returns
    -------
    dict of str to ndarray of shape (n_resamples,)
        ``auc``, ``tpr_at_fpr_<level>`` per level, ``fpr_at_tpr``,
        ``eer_accuracy``; NaN where a resample has no positive or no
        negative weight.
    """
    pos, neg = stats.level_weights(W, rows)
    P = pos.sum(axis=1)
    N = neg.sum(axis=1)
    ok = (P > 0) & (N > 0)
    P_safe = np.where(ok, P, 1.0)[:, None]
    N_safe = np.where(ok, N, 1.0)[:, None]
    tp = np.cumsum(pos, axis=1)
    fp = np.cumsum(neg, axis=1)
    tpr = tp / P_safe
    fpr = fp / N_safe
    # negatives scored strictly below each level (levels are descending)
    below = N[:, None] - fp
    auc = np.einsum("ij,ij->i", pos, below + 0.5 * neg) / (P_safe[:, 0] * N_safe[:, 0])
    out = {"auc": auc}
    for level in fpr_levels:
        reach = fpr <= level + 1e-12
        best = np.where(reach, tpr, 0.0).max(axis=1)
        out[f"tpr_at_fpr_{level:g}"] = best
    reached = tpr >= tpr_level - 1e-12
    out["fpr_at_tpr"] = np.where(reached, fpr, np.inf).min(axis=1)
    gap = np.abs((1.0 - tpr) - fpr)
    i = np.argmin(gap, axis=1)
    rows = np.arange(W.shape[0])
    out["eer_accuracy"] = 1.0 - (fpr[rows, i] + (1.0 - tpr[rows, i])) / 2.0
    for key in out:
        out[key] = np.where(ok, out[key], np.nan)
    return out
