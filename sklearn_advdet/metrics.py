"""Detection metrics: per-attack ROC AUC, macro AUC, EER accuracy, FPR at TPR.

Conventions used throughout the package:

- ``y_true``: 1 = adversarial, 0 = authentic.
- ``y_score``: higher = more likely adversarial (a detector's
  ``decision_function`` or ``predict_proba[:, 1]``).
- ``attack``: one attack name per row. It is ignored on authentic rows, so
  a per-attack figure always compares that attack's adversarial images with
  **all** authentic images, as both papers do.
"""

import numpy as np
from sklearn.metrics import make_scorer, roc_auc_score, roc_curve
from sklearn.utils import column_or_1d
from sklearn.utils.validation import check_consistent_length

from ._validation import check_label_types

__all__ = [
    "roc_auc_per_attack",
    "macro_auc",
    "overall_auc",
    "eer_threshold",
    "eer_accuracy",
    "eer_accuracy_per_attack",
    "fpr_at_tpr",
    "detection_report",
    "make_macro_auc_scorer",
    "make_eer_accuracy_scorer",
    "plot_roc_curves",
    "plot_score_density",
]


def _check_binary(y_true, y_score):
    y_true = check_label_types(column_or_1d(y_true), "y_true")
    y_score = column_or_1d(y_score).astype(float, copy=False)
    check_consistent_length(y_true, y_score)
    if not np.all(np.isfinite(y_score)):
        raise ValueError(
            "y_score contains NaN or infinite values: score the samples with a "
            "fitted detector whose output is finite"
        )
    labels = np.unique(y_true)
    if not np.all(np.isin(labels, [0, 1])):
        raise ValueError(
            f"y_true must hold 0 (authentic) and 1 (adversarial), got labels {labels!r}"
        )
    if len(labels) < 2:
        raise ValueError(
            "y_true holds a single class: a detection metric needs both authentic "
            "(0) and adversarial (1) samples"
        )
    return y_true.astype(int), y_score


def _check_attack(y_true, attack):
    attack = column_or_1d(attack)
    check_consistent_length(y_true, attack)
    return np.asarray(attack).astype(str)


def _attack_names(y_true, attack):
    # order of first appearance among adversarial rows, stable for tables
    names, first = np.unique(attack[y_true == 1], return_index=True)
    return [str(n) for n in names[np.argsort(first)]]


def _per_attack(y_true, y_score, attack, func):
    y_true, y_score = _check_binary(y_true, y_score)
    attack = _check_attack(y_true, attack)
    authentic = y_true == 0
    out = {}
    for name in _attack_names(y_true, attack):
        mask = authentic | ((attack == name) & (y_true == 1))
        out[name] = float(func(y_true[mask], y_score[mask]))
    return out


def roc_auc_per_attack(y_true, y_score, attack):
    """ROC AUC of each attack's adversarial images against all authentic ones.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        1 = adversarial, 0 = authentic.
    y_score : array-like of shape (n_samples,)
        Higher = more likely adversarial.
    attack : array-like of shape (n_samples,)
        Attack name of every row (ignored on authentic rows).

    Returns
    -------
    dict of str to float
        One AUC per attack present among the adversarial rows, in order of
        first appearance.

    Examples
    --------
    >>> from sklearn_advdet.metrics import roc_auc_per_attack
    >>> y = [0, 0, 1, 1]
    >>> s = [0.1, 0.4, 0.35, 0.8]
    >>> roc_auc_per_attack(y, s, ["-", "-", "fgsm", "pgd"])
    {'fgsm': 0.5, 'pgd': 1.0}
    """
    return _per_attack(y_true, y_score, attack, roc_auc_score)


def macro_auc(y_true, y_score, attack):
    """Unweighted mean over attacks of :func:`roc_auc_per_attack`.

    Examples
    --------
    >>> from sklearn_advdet.metrics import macro_auc
    >>> macro_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], ["-", "-", "fgsm", "pgd"])
    0.75
    """
    per_attack = roc_auc_per_attack(y_true, y_score, attack)
    return float(np.mean(list(per_attack.values())))


def overall_auc(y_true, y_score):
    """ROC AUC of all adversarial images (every attack pooled) against authentic ones."""
    y_true, y_score = _check_binary(y_true, y_score)
    return float(roc_auc_score(y_true, y_score))


def eer_threshold(y_true, y_score):
    """Threshold at the equal-error rate and the EER itself.

    The ROC threshold where the false-positive rate (authentic flagged) and
    the false-negative rate (adversarial missed) are closest; the EER is their
    mean there. Samples with ``y_score >= threshold`` are called adversarial.

    Returns
    -------
    threshold : float
    eer : float

    Examples
    --------
    >>> from sklearn_advdet.metrics import eer_threshold
    >>> eer_threshold([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.7, 0.3, 0.8, 0.9])
    (0.7, 0.333...)
    """
    y_true, y_score = _check_binary(y_true, y_score)
    fpr, tpr, thr = roc_curve(y_true, y_score, drop_intermediate=False)
    fnr = 1.0 - tpr
    gap = np.abs(fnr - fpr)
    # first point of smallest gap; roc_curve's first threshold is +inf, skip it
    i = int(np.argmin(gap[1:])) + 1
    return float(thr[i]), float((fpr[i] + fnr[i]) / 2.0)


def eer_accuracy(y_true, y_score):
    """Accuracy at the equal-error-rate threshold, ``1 - EER``.

    This is the detection accuracy the kNN paper (Carrara et al., MTAP 2018)
    reports: at the EER threshold the error on authentic and on adversarial
    images is the same, so accuracy does not depend on the class balance.

    Examples
    --------
    >>> from sklearn_advdet.metrics import eer_accuracy
    >>> round(eer_accuracy([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.7, 0.3, 0.8, 0.9]), 3)
    0.667
    """
    return 1.0 - eer_threshold(y_true, y_score)[1]


def eer_accuracy_per_attack(y_true, y_score, attack):
    """EER accuracy of each attack against all authentic images, plus ``"all"``.

    The ``"all"`` entry pools every attack (one threshold for all).
    """
    out = _per_attack(y_true, y_score, attack, eer_accuracy)
    out["all"] = eer_accuracy(y_true, y_score)
    return out


def fpr_at_tpr(y_true, y_score, tpr=0.95):
    """False-positive rate at the first threshold reaching the given TPR.

    Examples
    --------
    >>> from sklearn_advdet.metrics import fpr_at_tpr
    >>> fpr_at_tpr([0, 0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.5, 0.9], tpr=1.0)
    0.25
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
    y_true, y_score = _check_binary(y_true, y_score)
    fpr, tpr_curve, _ = roc_curve(y_true, y_score, drop_intermediate=False)
    i = int(np.searchsorted(tpr_curve, tpr - 1e-12, side="left"))
    return float(fpr[min(i, len(fpr) - 1)])


def detection_report(y_true, y_score, attack, *, tpr=0.95, digits=3, output_dict=False):
    """Per-attack AUC, EER accuracy and FPR at a TPR, with macro and overall rows.

    The compact, point-estimate form of
    :func:`sklearn_advdet.evaluation.detection_report` (which adds TPR at 1 % /
    5 % FPR and bootstrap intervals over source images). It is computed here
    from scikit-learn's ROC functions, independently of that report (whose
    point estimates a test checks against these), and keeps this module free
    of any import from :mod:`sklearn_advdet.evaluation`.

    Parameters
    ----------
    y_true, y_score, attack : array-like of shape (n_samples,)
        As in :func:`roc_auc_per_attack`.
    tpr : float, default=0.95
        TPR at which the FPR column is read.
    digits : int, default=3
        Decimals in the text table.
    output_dict : bool, default=False
        Return a dict ``{row: {column: value}}`` instead of a text table.

    Returns
    -------
    str or dict

    Examples
    --------
    >>> from sklearn_advdet.metrics import detection_report
    >>> y = [0, 0, 0, 1, 1, 1, 1]
    >>> s = [0.1, 0.2, 0.3, 0.9, 0.8, 0.25, 0.7]
    >>> a = ["authentic"] * 3 + ["fgsm", "fgsm", "pgd", "pgd"]
    >>> print(detection_report(y, s, a))
    attack     n_adv    AUC  EER acc  FPR@95%TPR
    fgsm           2  1.000    1.000       0.000
    pgd            2  0.833    0.583       0.333
    macro AUC      4  0.917
    overall        4  0.917    0.708       0.333
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
    y_true, y_score = _check_binary(y_true, y_score)
    attack = _check_attack(y_true, attack)
    auc = roc_auc_per_attack(y_true, y_score, attack)
    acc = _per_attack(y_true, y_score, attack, eer_accuracy)
    fpr = _per_attack(y_true, y_score, attack, lambda t, s: fpr_at_tpr(t, s, tpr))
    rows = {}
    for name in auc:
        rows[name] = {
            "n_adv": int(np.sum((attack == name) & (y_true == 1))),
            "auc": auc[name],
            "eer_accuracy": acc[name],
            "fpr_at_tpr": fpr[name],
        }
    n_adv = int(np.sum(y_true == 1))
    rows["macro AUC"] = {"n_adv": n_adv, "auc": float(np.mean(list(auc.values())))}
    rows["overall"] = {
        "n_adv": n_adv,
        "auc": overall_auc(y_true, y_score),
        "eer_accuracy": eer_accuracy(y_true, y_score),
        "fpr_at_tpr": fpr_at_tpr(y_true, y_score, tpr),
    }
    if output_dict:
        return rows
    fpr_head = f"FPR@{tpr:.0%}TPR"
    width = max(len("attack"), *(len(r) for r in rows)) + 2
    lines = [f"{'attack':<{width}}{'n_adv':>5}{'AUC':>7}{'EER acc':>9}{fpr_head:>12}"]
    for name, r in rows.items():
        line = f"{name:<{width}}{r['n_adv']:>5}{r['auc']:>7.{digits}f}"
        if "eer_accuracy" in r:
            line += f"{r['eer_accuracy']:>9.{digits}f}{r['fpr_at_tpr']:>12.{digits}f}"
        lines.append(line)
    return "\n".join(lines)


def make_macro_auc_scorer():
    """Macro AUC scorer for ``GridSearchCV(scoring=...)``.

    The attack name of every row reaches the scorer through scikit-learn's
    metadata routing::

        import sklearn
        sklearn.set_config(enable_metadata_routing=True)
        search = GridSearchCV(pipe, grid, scoring=make_macro_auc_scorer(),
                              cv=GroupKFold(3))
        search.fit(X, y, groups=groups, attack=attack)

    Returns
    -------
    scorer : callable
        Uses the estimator's ``decision_function`` or, failing that,
        ``predict_proba``.
    """
    import sklearn

    scorer = make_scorer(
        macro_auc, response_method=("decision_function", "predict_proba")
    )
    # the request is recorded on the scorer now; routing itself must be
    # enabled by the caller when the search runs (see above)
    with sklearn.config_context(enable_metadata_routing=True):
        return scorer.set_score_request(attack=True)


def make_eer_accuracy_scorer():
    """EER-accuracy scorer for ``GridSearchCV(scoring=...)`` (no metadata needed)."""
    return make_scorer(
        eer_accuracy, response_method=("decision_function", "predict_proba")
    )


def plot_roc_curves(y_true, y_score, attack, *, ax=None, title=None):
    """One ROC curve per attack (each against all authentic images).

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    y_true, y_score = _check_binary(y_true, y_score)
    attack = _check_attack(y_true, attack)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    authentic = y_true == 0
    for name in _attack_names(y_true, attack):
        mask = authentic | ((attack == name) & (y_true == 1))
        fpr, tpr, _ = roc_curve(y_true[mask], y_score[mask])
        auc = roc_auc_score(y_true[mask], y_score[mask])
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    _finish_roc_axes(ax, title)
    return ax


def _finish_roc_axes(ax, title=None, legend_size="small", title_size=None):
    """Chance line, axis labels and limits, legend and title of a ROC plot."""
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false-positive rate (authentic flagged)")
    ax.set_ylabel("true-positive rate (adversarial caught)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=legend_size)
    if title:
        ax.set_title(title, fontsize=title_size)


def plot_score_density(y_score, groups, *, ax=None, bins=40, title=None, xlabel="score"):
    """Histogram densities of a score, one per group (e.g. authentic vs each attack).

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    y_score = column_or_1d(y_score).astype(float)
    groups = column_or_1d(groups).astype(str)
    check_consistent_length(y_score, groups)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    edges = np.histogram_bin_edges(y_score, bins=bins)
    names, first = np.unique(groups, return_index=True)
    for name in names[np.argsort(first)]:
        ax.hist(
            y_score[groups == name], bins=edges, density=True, histtype="step",
            linewidth=1.5, label=name,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return ax
