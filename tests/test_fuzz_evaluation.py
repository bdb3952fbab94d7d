"""Fuzz suite of the metrics, reports and CV splitters (issue 16, item 6).

Detection labels, scores, attack names, source-image groups and budgets,
one of them spoilt at a time (empty, NaN/inf, strings, mixed label types,
out-of-range or single-class labels, wrong lengths, 2-D), go through every
public metric and report function, the natural-error and scorer helpers and
the four protocol splitters.  Each call gives finite figures (or splits that
keep every source image on one side) or raises a ValueError/TypeError of the
package's own (:func:`_fuzz.call`).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _fuzz import FUZZ, call
from sklearn_advdet import (
    AuthenticDensityDetector,
    balanced_sample_weight,
    heldout_log_likelihood_scorer,
    metrics,
    natural_error_report,
)
from sklearn_advdet.evaluation import (
    AttackTransferSplit,
    CrossEpsilonSplit,
    LeaveOneAttackOut,
    UnseenAttackSplit,
    detection_report,
)
from sklearn_advdet.knn import knn_evaluation


@st.composite
def detection_scores(draw):
    """``(y, score, attack, groups)`` of a detection set, at most one of them spoilt."""
    n = draw(st.integers(4, 16))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    y = rng.permutation(np.arange(n) % 2)
    score = rng.normal(size=n) + y
    attack = np.where(y == 1, rng.choice(["fgsm", "pgd", "cw"], n), "-")
    groups = rng.integers(0, max(n // 2, 1), n)
    how = draw(st.sampled_from(["none", "none", "none", "empty", "nan_score", "inf_score",
                                "str_score", "y_range", "y_single", "y_float",
                                "short_attack", "short_groups", "2d_score", "object_y", "ties",
                                "one_attack", "int_attack", "none_groups"]))
    if how == "empty":
        y, score, attack, groups = y[:0], score[:0], attack[:0], groups[:0]
    elif how == "nan_score":
        score[0] = np.nan
    elif how == "inf_score":
        score[-1] = np.inf
    elif how == "str_score":
        score = score.astype(str)
    elif how == "y_range":
        y[0] = 2
    elif how == "y_single":
        y[:] = 1
    elif how == "y_float":
        y = y + 0.5
    elif how == "short_attack":
        attack = attack[:-1]
    elif how == "short_groups":
        groups = groups[1:]
    elif how == "2d_score":
        score = np.column_stack([score, score])
    elif how == "object_y":
        y = y.astype(object)
        y[0] = "adv"
    elif how == "ties":
        score = np.zeros(n)
    elif how == "one_attack":
        attack = np.where(y == 1, "fgsm", "-")
    elif how == "int_attack":
        attack = y * 3
    elif how == "none_groups":
        groups = None
    return y, score, attack, groups


METRIC_CALLS = {
    "roc_auc_per_attack": lambda y, s, a, g: metrics.roc_auc_per_attack(y, s, a),
    "macro_auc": lambda y, s, a, g: metrics.macro_auc(y, s, a),
    "overall_auc": lambda y, s, a, g: metrics.overall_auc(y, s),
    "eer_threshold": lambda y, s, a, g: metrics.eer_threshold(y, s),
    "eer_accuracy_per_attack": lambda y, s, a, g: metrics.eer_accuracy_per_attack(y, s, a),
    "fpr_at_tpr": lambda y, s, a, g: metrics.fpr_at_tpr(y, s, tpr=0.5),
    "metrics.detection_report": lambda y, s, a, g: metrics.detection_report(
        y, s, a, output_dict=True),
    "evaluation.detection_report": lambda y, s, a, g: detection_report(
        y, s, a, g, n_bootstrap=20, random_state=0).to_dict(),
}


def _numbers(obj):
    """The figures of a metric's result (bootstrap interval bounds left out: NaN
    when no resample holds both classes)."""
    if isinstance(obj, dict):
        return [v for k, x in obj.items() if k not in ("low", "high") for v in _numbers(x)]
    if isinstance(obj, (list, tuple)):
        return [v for x in obj for v in _numbers(x)]
    return [obj] if isinstance(obj, (float, int, np.floating)) else []


@pytest.mark.parametrize("name", sorted(METRIC_CALLS))
@FUZZ(100)
@given(data=detection_scores())
def test_metrics_and_reports(name, data):
    out, _ = call(METRIC_CALLS[name], *data)
    if out is not None:
        values = np.asarray(_numbers(out), dtype=float)
        assert np.isfinite(values).all(), f"{name} gave non-finite figures: {out}"


@FUZZ(80)
@given(data=detection_scores(), extra=st.sampled_from(["ok", "2d", "short", "none", "str"]))
def test_scoring_functions(data, extra):
    y, score, attack, groups = data
    n = len(y)
    rng = np.random.default_rng(n)
    correct = {"ok": rng.random(n) > 0.3, "2d": np.ones((n, 2), dtype=bool),
               "short": np.ones(max(n - 1, 0), dtype=bool), "none": None,
               "str": np.array(["yes"] * n)}[extra]
    call(balanced_sample_weight, y, attack)
    call(knn_evaluation, score, y, attack, correct=correct)
    X = np.column_stack([np.asarray(score, dtype=float).reshape(n, -1)[:, :1]] * 2) \
        if np.asarray(score).dtype.kind == "f" and n else np.zeros((max(n, 1), 2))
    det = AuthenticDensityDetector(target_fpr=0.3, random_state=0).fit(
        np.random.default_rng(0).normal(size=(40, 2)))
    true_class = np.arange(len(X)) % 3
    pred = {"ok": true_class[::-1], "2d": np.column_stack([true_class] * 2),
            "short": true_class[:-1], "none": None, "str": true_class.astype(str)}[extra]
    report, _ = call(natural_error_report, det, X, true_class, pred)
    if report is not None:
        assert report["n_correct"] + report["n_errors"] == len(X)
    value, _ = call(heldout_log_likelihood_scorer, det, X, y)
    if value is not None:
        assert np.isfinite(value)


SPLITTERS = {
    "LeaveOneAttackOut": lambda a, e: LeaveOneAttackOut(a, test_size=0.4, random_state=0),
    "UnseenAttackSplit": lambda a, e: UnseenAttackSplit(a, train_attacks=["fgsm"],
                                                        random_state=0),
    "AttackTransferSplit": lambda a, e: AttackTransferSplit(
        a, include_diagonal=False, random_state=0),
    "CrossEpsilonSplit": lambda a, e: CrossEpsilonSplit(e, attack=a, random_state=0),
    "CrossEpsilonSplit-family": lambda a, e: CrossEpsilonSplit(
        e, attack=a, family="pgd", train_eps=[0.1], random_state=0),
}


@pytest.mark.parametrize("name", sorted(SPLITTERS))
@FUZZ(80)
@given(data=detection_scores(), eps_how=st.sampled_from(["ok", "nan", "str", "short"]),
       test_size=st.sampled_from([0.3, 0.5, 1, 2, 0.0, 1.5, -1, None]))
def test_splitters(name, data, eps_how, test_size):
    y, _, attack, groups = data
    n = len(y)
    eps = np.where(np.asarray(y) == 1, 0.1 * (1 + np.arange(n) % 2), np.nan)
    eps = {"ok": eps, "nan": np.full(n, np.nan), "str": eps.astype(str),
           "short": eps[:-1]}[eps_how]
    cv, _ = call(SPLITTERS[name], attack, eps)
    if cv is None:
        return
    cv.test_size = test_size
    X = np.zeros((n, 1))
    k, _ = call(cv.get_n_splits, X, y, groups)
    splits, _ = call(lambda: list(cv.split(X, y, groups)))
    if splits is not None:
        assert len(splits) == k
        for train, test in splits:
            assert not set(np.asarray(groups)[train]) & set(np.asarray(groups)[test])
