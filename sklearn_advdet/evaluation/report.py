"""One detection report: per-attack metrics with bootstrap intervals over source images.

Read more in the :ref:`User Guide <evaluation>`.
"""

import json
import math
import os
import tempfile
from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils._param_validation import Interval, validate_params
from sklearn.utils.validation import check_consistent_length

from ._roc import ROCStatistics, weighted_roc_statistics

__all__ = ["DetectionReport", "detection_report", "METRICS"]

#: metric columns of the report, in table order
METRICS = ("auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.05", "fpr_at_tpr", "eer_accuracy")
_HEADERS = {
    "auc": "AUC",
    "tpr_at_fpr_0.01": "TPR@1%FPR",
    "tpr_at_fpr_0.05": "TPR@5%FPR",
    "fpr_at_tpr": "FPR@95%TPR",
    "eer_accuracy": "EER acc",
}
# bootstrap resamples drawn at once: chunk x n_images counts (the weight
# matrices are chunk x n_rows, a few times that)
_CHUNK_ENTRIES = 2**19


def _check_inputs(y, score, attack, groups):
    from ..metrics import _check_attack, _check_binary

    y, score = _check_binary(y, score)
    attack = _check_attack(y, attack)
    if groups is None:
        groups = np.arange(len(y))
    groups = column_or_1d(groups)
    check_consistent_length(y, groups)
    return y, score, attack, groups


def _attack_names(y, attack):
    names, first = np.unique(attack[y == 1], return_index=True)
    return [str(n) for n in names[np.argsort(first)]]


def _resample_weights(group_index, n_groups, n_bootstrap, rng):
    """Yield row-weight matrices of bootstrap resamples over source images, in chunks.

    The chunks depend on the number of images only, so two reports on the
    same images with the same seed draw the same resamples (whatever rows
    each holds).
    """
    chunk = max(1, min(n_bootstrap, _CHUNK_ENTRIES // max(n_groups, 1)))
    done = 0
    while done < n_bootstrap:
        b = min(chunk, n_bootstrap - done)
        counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=b)
        yield counts[:, group_index].astype(np.float64)
        done += b


class DetectionReport:
    """Per-attack detection metrics, each with a bootstrap interval.

    Built by :func:`detection_report`; rows are the attacks (in order of
    first appearance), then ``"macro"`` (unweighted mean over attacks, its
    interval from the same resamples) and ``"overall"`` (every attack
    pooled, one threshold).

    Attributes
    ----------
    rows : dict of str to dict
        ``rows[name][metric] = {"value": v, "low": lo, "high": hi}`` and
        ``rows[name]["n_adv"]``.
    n_bootstrap : int
    confidence : float
    n_groups : int
        Number of source images resampled.
    bootstrap : dict or None
        ``bootstrap[row][metric]``: the value of every resample (NaN where a
        resample lacks a class), for intervals of derived figures; not
        written by :meth:`to_dict`. Two reports on the same source images
        with the same ``random_state`` draw the same resamples.
    """

    def __init__(self, rows, *, n_bootstrap, confidence, n_groups, tpr_level=0.95,
                 bootstrap=None):
        self.rows = rows
        self.bootstrap = bootstrap
        self.n_bootstrap = int(n_bootstrap)
        self.confidence = float(confidence)
        self.n_groups = int(n_groups)
        self.tpr_level = float(tpr_level)

    @property
    def attacks(self):
        return [r for r in self.rows if r not in ("macro", "overall")]

    def value(self, row, metric="auc"):
        """Point estimate of ``metric`` on ``row``."""
        return self.rows[row][metric]["value"]

    def interval(self, row, metric="auc"):
        """``(low, high)`` bootstrap interval of ``metric`` on ``row``."""
        cell = self.rows[row][metric]
        return cell["low"], cell["high"]

    def to_dict(self):
        """Plain-JSON dict (NaN written as None)."""
        def clean(v):
            return None if isinstance(v, float) and math.isnan(v) else v

        rows = {
            name: {k: (v if not isinstance(v, dict) else {c: clean(x) for c, x in v.items()})
                   for k, v in r.items()}
            for name, r in self.rows.items()
        }
        return {"rows": rows, "n_bootstrap": self.n_bootstrap,
                "confidence": self.confidence, "n_groups": self.n_groups,
                "tpr_level": self.tpr_level, "metrics": list(METRICS)}

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict`."""
        def back(v):
            return float("nan") if v is None else v

        rows = {
            name: {k: (v if not isinstance(v, dict) else {c: back(x) for c, x in v.items()})
                   for k, v in r.items()}
            for name, r in d["rows"].items()
        }
        return cls(rows, n_bootstrap=d["n_bootstrap"], confidence=d["confidence"],
                   n_groups=d["n_groups"], tpr_level=d.get("tpr_level", 0.95))

    def to_json(self, path=None, **kwargs):
        """The JSON text; with ``path``, also written there atomically."""
        text = json.dumps(self.to_dict(), indent=kwargs.pop("indent", 1), **kwargs)
        if path is not None:
            write_text_atomic(path, text)
        return text

    def to_frame(self):
        """pandas DataFrame: one row per report row, ``metric``, ``metric_low``, ``metric_high``."""
        import pandas as pd

        records = []
        for name, r in self.rows.items():
            rec = {"row": name, "n_adv": r["n_adv"]}
            for m in METRICS:
                rec[m] = r[m]["value"]
                rec[m + "_low"] = r[m]["low"]
                rec[m + "_high"] = r[m]["high"]
            records.append(rec)
        return pd.DataFrame.from_records(records).set_index("row")

    def to_markdown(self, digits=3, intervals=True):
        """A Markdown table; cells read ``value [low, high]``."""
        head = ["attack", "n_adv"] + [_HEADERS[m] for m in METRICS]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, r in self.rows.items():
            cells = [name, str(r["n_adv"])]
            for m in METRICS:
                cells.append(_cell(r[m], digits, intervals and self.n_bootstrap > 0))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def __repr__(self):
        return (f"DetectionReport(attacks={self.attacks!r}, n_bootstrap={self.n_bootstrap}, "
                f"macro_auc={self.value('macro'):.3f})")


def _cell(cell, digits, with_interval):
    v = cell["value"]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    text = f"{v:.{digits}f}"
    if with_interval and not math.isnan(cell["low"]):
        text += f" [{cell['low']:.{digits}f}, {cell['high']:.{digits}f}]"
    return text


def write_text_atomic(path, text):
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _subsets(y, attack, names):
    authentic = y == 0
    subsets = {n: np.flatnonzero(authentic | ((attack == n) & (y == 1))) for n in names}
    subsets["overall"] = np.arange(len(y))
    return subsets


def _stats_for(y, score, subsets, W, fpr_levels, tpr_level):
    """Statistics of each subset for the weights ``W`` (one row: unit weights)."""
    return {
        name: weighted_roc_statistics(
            ROCStatistics(y[rows], score[rows]), W, rows=rows,
            fpr_levels=fpr_levels, tpr_level=tpr_level,
        )
        for name, rows in subsets.items()
    }


def _with_macro(stats, names):
    out = dict(stats)
    out["macro"] = {m: np.mean([stats[n][m] for n in names], axis=0) for m in stats[names[0]]}
    return out


@validate_params(
    {
        "n_bootstrap": [Interval(Integral, 0, None, closed="left")],
        "confidence": [Interval(Real, 0, 1, closed="neither")],
        "random_state": ["random_state"],
        "tpr_level": [Interval(Real, 0, 1, closed="right")],
    },
    prefer_skip_nested_validation=True,
)
def detection_report(y, score, attack, groups=None, *, n_bootstrap=1000, confidence=0.95,
                     random_state=None, tpr_level=0.95):
    """Per-attack AUC, TPR at 1 % / 5 % FPR, FPR at 95 % TPR, EER accuracy, with intervals.

    Each attack's adversarial rows are scored against **all** authentic rows
    (``y == 0``), as both papers do.  Every metric gets a percentile
    bootstrap interval resampled over **source images** (``groups``): a
    resample draws as many source images as there are, with replacement, and
    weights every row by how many times its image was drawn, so an image and
    its adversarial versions stay together.  ``"macro"`` is the unweighted
    mean over attacks (its interval from the same resamples), ``"overall"``
    pools every attack.  The resamples are evaluated as weight matrices
    (:mod:`._roc`), all at once.

    Definitions (thresholds at every distinct score; adversarial when
    ``score >= t``): AUC with ties counted one half; ``TPR@a%FPR`` = the
    largest TPR among thresholds whose FPR is at most a %; ``FPR@95%TPR`` =
    the FPR of the highest threshold whose TPR reaches ``tpr_level``;
    ``EER acc`` = ``1 - EER`` at the threshold where FPR and FNR are closest
    (the first such in descending threshold order), as in
    :mod:`sklearn_advdet.metrics`.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        1 = adversarial, 0 = authentic.
    score : array-like of shape (n_samples,)
        Higher = more likely adversarial.
    attack : array-like of shape (n_samples,)
        Attack name of every row (ignored on authentic rows).
    groups : array-like of shape (n_samples,), default=None
        Source image of every row. ``None`` treats every row as its own
        image (intervals then ignore that adversarial rows share images and
        come out too narrow).
    n_bootstrap : int, default=1000
        Bootstrap resamples; 0 gives point estimates only (intervals NaN).
    confidence : float, default=0.95
        Coverage of the percentile intervals.
    random_state : int, RandomState instance or None, default=None
        Seeds the resampling.
    tpr_level : float, default=0.95
        TPR at which the FPR column is read.

    Returns
    -------
    DetectionReport

    Examples
    --------
    >>> from sklearn_advdet.evaluation import detection_report
    >>> y = [0, 0, 0, 0, 1, 1, 1, 1]
    >>> s = [0.1, 0.2, 0.3, 0.4, 0.9, 0.35, 0.8, 0.25]
    >>> a = ["-"] * 4 + ["fgsm", "pgd", "fgsm", "pgd"]
    >>> g = [0, 1, 2, 3, 0, 1, 2, 3]
    >>> rep = detection_report(y, s, a, g, n_bootstrap=200, random_state=0)
    >>> rep.value("fgsm"), rep.value("pgd"), rep.value("macro")
    (1.0, 0.625, 0.8125)
    >>> low, high = rep.interval("pgd")
    >>> bool(low <= 0.625 <= high)
    True
    """
    y, score, attack, groups = _check_inputs(y, score, attack, groups)
    names = _attack_names(y, attack)
    subsets = _subsets(y, attack, names)
    fpr_levels = (0.01, 0.05)
    point = _with_macro(
        _stats_for(y, score, subsets, np.ones((1, len(y))), fpr_levels, tpr_level), names)
    _, group_index = np.unique(groups, return_inverse=True)
    n_groups = int(group_index.max()) + 1
    boot = None
    if n_bootstrap:
        rng = check_random_state(random_state)
        parts = []
        for W in _resample_weights(group_index, n_groups, n_bootstrap, rng):
            parts.append(_with_macro(
                _stats_for(y, score, subsets, W, fpr_levels, tpr_level), names))
        boot = {r: {m: np.concatenate([p[r][m] for p in parts]) for m in parts[0][r]}
                for r in parts[0]}
    alpha = (1.0 - confidence) / 2.0
    rows = {}
    for name in names + ["macro", "overall"]:
        adv = y == 1 if name in ("macro", "overall") else (y == 1) & (attack == name)
        row = {"n_adv": int(adv.sum())}
        for m in METRICS:
            v = float(point[name][m][0])
            lo = hi = float("nan")
            if boot is not None:
                b = boot[name][m]
                b = b[np.isfinite(b)]
                if b.size:
                    lo, hi = (float(q) for q in np.quantile(b, [alpha, 1.0 - alpha]))
            row[m] = {"value": v, "low": lo, "high": hi}
        rows[name] = row
    return DetectionReport(rows, n_bootstrap=n_bootstrap, confidence=confidence,
                           n_groups=n_groups, tpr_level=tpr_level, bootstrap=boot)
