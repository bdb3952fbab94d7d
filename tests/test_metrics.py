import numpy as np
import pytest
import sklearn
from scipy.stats import mannwhitneyu
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold

from sklearn_advdet import metrics


def _auc_mann_whitney(neg, pos):
    # AUC = U / (n_pos * n_neg), an independent route to ROC AUC
    u = mannwhitneyu(pos, neg, alternative="two-sided").statistic
    return u / (len(pos) * len(neg))


def _brute_force_eer(y, s):
    """Scan every candidate threshold directly; no ROC machinery."""
    best = None
    for t in np.unique(s):
        pred = s >= t
        fpr = np.mean(pred[y == 0])
        fnr = np.mean(~pred[y == 1])
        gap = abs(fpr - fnr)
        if best is None or gap < best[0] - 1e-15 or (
            abs(gap - best[0]) <= 1e-15 and t > best[1]
        ):
            best = (gap, t, (fpr + fnr) / 2)
    return best[1], best[2]


@pytest.fixture
def scored():
    rng = np.random.RandomState(0)
    n_auth = 300
    attacks = {"fgsm": 1.5, "pgd": 0.5, "noise": 0.0}
    y, s, a = [np.zeros(n_auth, int)], [rng.normal(size=n_auth)], [["authentic"] * n_auth]
    for name, shift in attacks.items():
        n = rng.randint(50, 150)
        y.append(np.ones(n, int))
        s.append(rng.normal(loc=shift, size=n))
        a.append([name] * n)
    return np.concatenate(y), np.concatenate(s), np.concatenate(a)


def test_per_attack_auc_matches_mann_whitney(scored):
    y, s, a = scored
    per = metrics.roc_auc_per_attack(y, s, a)
    assert list(per) == ["fgsm", "pgd", "noise"]
    for name, auc in per.items():
        expected = _auc_mann_whitney(s[y == 0], s[(a == name) & (y == 1)])
        assert auc == pytest.approx(expected, abs=1e-12)
    assert metrics.macro_auc(y, s, a) == pytest.approx(np.mean(list(per.values())))
    assert metrics.overall_auc(y, s) == pytest.approx(
        _auc_mann_whitney(s[y == 0], s[y == 1])
    )
    # attack names on authentic rows do not matter
    a2 = a.copy()
    a2[y == 0] = "whatever"
    assert metrics.roc_auc_per_attack(y, s, a2) == per


def test_eer_matches_brute_force(scored):
    y, s, _ = scored
    thr, eer = metrics.eer_threshold(y, s)
    bthr, beer = _brute_force_eer(y, s)
    assert eer == pytest.approx(beer, abs=1e-12)
    pred = s >= thr
    assert abs(np.mean(pred[y == 0]) - np.mean(~pred[y == 1])) == pytest.approx(
        abs(np.mean((s >= bthr)[y == 0]) - np.mean(~(s >= bthr)[y == 1]))
    )
    assert metrics.eer_accuracy(y, s) == pytest.approx(1 - beer)


def test_eer_perfect_and_inverted_scores():
    y = np.array([0, 0, 0, 1, 1])
    assert metrics.eer_accuracy(y, [0, 1, 2, 3, 4]) == 1.0
    assert metrics.eer_accuracy(y, [4, 3, 2, 1, 0]) <= 0.5


def test_eer_accuracy_per_attack_has_all(scored):
    y, s, a = scored
    out = metrics.eer_accuracy_per_attack(y, s, a)
    assert set(out) == {"fgsm", "pgd", "noise", "all"}
    assert out["fgsm"] > out["pgd"] > out["noise"] - 0.1
    assert out["all"] == pytest.approx(metrics.eer_accuracy(y, s))


def test_fpr_at_tpr_brute_force(scored):
    y, s, _ = scored
    for tpr in (0.5, 0.9, 0.95, 1.0):
        # the highest threshold whose TPR reaches tpr
        cands = [t for t in np.unique(s) if np.mean(s[y == 1] >= t) >= tpr - 1e-12]
        t = max(cands)
        assert metrics.fpr_at_tpr(y, s, tpr) == pytest.approx(np.mean(s[y == 0] >= t))
    with pytest.raises(ValueError, match="tpr must be in"):
        metrics.fpr_at_tpr(y, s, 0)


def test_report_dict_and_text_agree(scored):
    y, s, a = scored
    d = metrics.detection_report(y, s, a, output_dict=True)
    assert d["fgsm"]["auc"] == pytest.approx(metrics.roc_auc_per_attack(y, s, a)["fgsm"])
    assert d["macro AUC"]["auc"] == pytest.approx(metrics.macro_auc(y, s, a))
    assert d["overall"]["n_adv"] == int(y.sum())
    text = metrics.detection_report(y, s, a)
    assert "macro AUC" in text and f"{d['pgd']['auc']:.3f}" in text


@pytest.mark.parametrize(
    "y, s, match",
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "0 \\(authentic\\) and 1"),
        ([1, 1, 1], [0.1, 0.2, 0.3], "single class"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "NaN"),
    ],
)
def test_bad_input(y, s, match):
    with pytest.raises(ValueError, match=match):
        metrics.eer_threshold(y, s)


def test_macro_auc_scorer_in_grid_search(scored):
    y, s, a = scored
    rng = np.random.RandomState(1)
    X = np.c_[s, rng.normal(size=len(s))]
    groups = np.arange(len(y)) % 40
    scorer = metrics.make_macro_auc_scorer()
    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(
            LogisticRegression(), {"C": [0.01, 1.0]}, scoring=scorer, cv=GroupKFold(3)
        )
        search.fit(X, y, groups=groups, attack=a)
    # the scorer's value on a fold equals macro_auc computed by hand on it
    est = LogisticRegression(C=search.best_params_["C"]).fit(X, y)
    with sklearn.config_context(enable_metadata_routing=True):
        got = scorer(est, X, y, attack=a)
    assert got == pytest.approx(metrics.macro_auc(y, est.decision_function(X), a))
    assert 0.6 < search.best_score_ < 0.9
    eer_scorer = metrics.make_eer_accuracy_scorer()
    assert eer_scorer(est, X, y) == pytest.approx(
        metrics.eer_accuracy(y, est.decision_function(X))
    )


def test_plots_return_axes(scored, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    y, s, a = scored
    ax = metrics.plot_roc_curves(y, s, a, title="t")
    assert len(ax.get_lines()) == 4  # three attacks + chance line
    ax2 = metrics.plot_score_density(s, a)
    assert len(ax2.get_legend().get_texts()) == 4
    ax.figure.savefig(tmp_path / "roc.png")
    assert (tmp_path / "roc.png").stat().st_size > 1000


def test_text_report_is_the_evaluation_report(scored):
    """metrics.detection_report (sklearn's roc_curve) and evaluation.detection_report
    (its own weighted ROC for the bootstrap) are two computations of the same
    point estimates: they agree to rounding."""
    from sklearn_advdet.evaluation import detection_report as full_report

    y, s, a = scored
    d = metrics.detection_report(y, s, a, tpr=0.9, output_dict=True)
    full = full_report(y, s, a, n_bootstrap=0, tpr_level=0.9)
    same = lambda v: pytest.approx(v, rel=1e-12, abs=1e-15)  # noqa: E731
    for name in ("fgsm", "pgd", "noise", "overall"):
        assert d[name]["auc"] == same(full.value(name, "auc"))
        assert d[name]["eer_accuracy"] == same(full.value(name, "eer_accuracy"))
        assert d[name]["fpr_at_tpr"] == same(full.value(name, "fpr_at_tpr"))
        m = (y == 0) | (a == name) if name != "overall" else np.ones(len(y), bool)
        assert d[name]["fpr_at_tpr"] == pytest.approx(metrics.fpr_at_tpr(y[m], s[m], 0.9))
    assert d["macro AUC"]["auc"] == same(full.value("macro"))
