"""The detection report: metrics against sklearn / brute force, bootstrap intervals, outputs."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from sklearn_advdet import metrics
from sklearn_advdet.evaluation import DetectionReport, detection_report
from sklearn_advdet.evaluation.report import METRICS


def _data(n_images, seed=0, ties=False):
    rng = np.random.RandomState(seed)
    y, s, a, g = [], [], [], []
    for img in range(n_images):
        base = rng.normal()
        y.append(0), s.append(base), a.append("authentic"), g.append(img)
        for name, shift in (("fgsm", 1.5), ("pgd", 0.6)):
            if rng.rand() < 0.9:
                y.append(1), s.append(base * 0.3 + rng.normal(loc=shift)), a.append(name)
                g.append(img)
    s = np.array(s)
    if ties:
        s = np.round(s, 1)
    return np.array(y), s, np.array(a), np.array(g)


def _tpr_at_fpr_sklearn(y, s, level):
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return tpr[fpr <= level + 1e-12].max()


@pytest.mark.parametrize("ties", [False, True])
def test_point_estimates_match_sklearn(ties):
    y, s, a, g = _data(150, ties=ties)
    rep = detection_report(y, s, a, g, n_bootstrap=0)
    assert rep.attacks == ["fgsm", "pgd"]
    for name in ("fgsm", "pgd", "overall"):
        m = (y == 0) | (a == name) if name != "overall" else np.ones(len(y), bool)
        assert rep.value(name, "auc") == pytest.approx(roc_auc_score(y[m], s[m]), abs=1e-12)
        for level in (0.01, 0.05):
            assert rep.value(name, f"tpr_at_fpr_{level:g}") == pytest.approx(
                _tpr_at_fpr_sklearn(y[m], s[m], level))
        assert rep.value(name, "fpr_at_tpr") == pytest.approx(metrics.fpr_at_tpr(y[m], s[m]))
        assert rep.value(name, "eer_accuracy") == pytest.approx(metrics.eer_accuracy(y[m], s[m]))
        assert rep.rows[name]["n_adv"] == int(y[m].sum())
    assert rep.value("macro") == pytest.approx(metrics.macro_auc(y, s, a))
    assert np.isnan(rep.interval("fgsm")[0])


def test_worked_example():
    # 4 authentic, fgsm fully separated, pgd: 0.35 beats 3 of 4, 0.25 beats 2
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.9, 0.35, 0.8, 0.25]
    a = ["-"] * 4 + ["fgsm", "pgd", "fgsm", "pgd"]
    rep = detection_report(y, s, a, n_bootstrap=0)
    assert rep.value("pgd") == 5 / 8
    # pgd: at t=0.35 TPR 1/2 with FPR 1/4; at t=0.25 TPR 1 with FPR 1/2
    assert rep.value("pgd", "tpr_at_fpr_0.05") == 0.0
    assert rep.value("pgd", "fpr_at_tpr") == 0.5
    # |FNR - FPR| at t = .4, .35, .3, .25: .75, .25, 0, .5 -> EER .5 at t = .3
    assert rep.value("pgd", "eer_accuracy") == 0.5
    assert rep.value("fgsm", "tpr_at_fpr_0.01") == 1.0


def test_bootstrap_weights_equal_a_resample():
    """The vectorised weighted ROC equals sklearn on the materialised resample."""
    from sklearn_advdet.evaluation._roc import ROCStatistics, weighted_roc_statistics

    y, s, a, g = _data(40, ties=True)
    rng = np.random.RandomState(3)
    _, gi = np.unique(g, return_inverse=True)
    counts = rng.multinomial(gi.max() + 1, np.full(gi.max() + 1, 1 / (gi.max() + 1)), size=5)
    W = counts[:, gi].astype(float)
    out = weighted_roc_statistics(ROCStatistics(y, s), W)
    for b in range(5):
        rows = np.repeat(np.arange(len(y)), W[b].astype(int))
        yb, sb = y[rows], s[rows]
        assert out["auc"][b] == pytest.approx(roc_auc_score(yb, sb))
        assert out["eer_accuracy"][b] == pytest.approx(metrics.eer_accuracy(yb, sb))
        assert out["fpr_at_tpr"][b] == pytest.approx(metrics.fpr_at_tpr(yb, sb))
        assert out["tpr_at_fpr_0.05"][b] == pytest.approx(_tpr_at_fpr_sklearn(yb, sb, 0.05))


def test_intervals_contain_estimate_and_shrink():
    widths = []
    for n in (60, 600):
        y, s, a, g = _data(n, seed=1)
        rep = detection_report(y, s, a, g, n_bootstrap=400, random_state=0)
        for row in ("fgsm", "pgd", "macro", "overall"):
            for m in METRICS:
                lo, hi = rep.interval(row, m)
                assert lo <= rep.value(row, m) + 1e-12 and rep.value(row, m) <= hi + 1e-12
        widths.append(np.diff(rep.interval("pgd")).item())
    # ten times the images: about sqrt(10) narrower
    assert widths[1] < widths[0] / 2


def test_resampling_is_over_images():
    """Rows of one image move together: duplicating every row by image changes nothing,
    while treating rows as independent narrows the interval."""
    y, s, a, g = _data(80, seed=2)
    by_image = detection_report(y, s, a, g, n_bootstrap=300, random_state=0)
    again = detection_report(y, s, a, g, n_bootstrap=300, random_state=0)
    assert by_image.to_dict() == again.to_dict()
    # one adversarial row copied 5 times per image: row-level bootstrap is overconfident
    rows = np.r_[np.arange(len(y)), np.repeat(np.flatnonzero(y == 1), 4)]
    wide = detection_report(y[rows], s[rows], a[rows], g[rows], n_bootstrap=300, random_state=0)
    narrow = detection_report(y[rows], s[rows], a[rows], None, n_bootstrap=300, random_state=0)
    assert np.diff(narrow.interval("pgd")) < np.diff(wide.interval("pgd"))


def test_same_images_same_resamples():
    """Reports on different rows of the same images draw the same resamples."""
    y, s, a, g = _data(300, seed=4)
    full = detection_report(y, s, a, g, n_bootstrap=300, random_state=7)
    part = (y == 0) | (a == "fgsm")
    sub = detection_report(y[part], s[part], a[part], g[part], n_bootstrap=300, random_state=7)
    np.testing.assert_array_equal(sub.bootstrap["fgsm"]["auc"], full.bootstrap["fgsm"]["auc"])
    assert sub.interval("fgsm") == full.interval("fgsm")


def test_outputs_round_trip(tmp_path):
    y, s, a, g = _data(50)
    rep = detection_report(y, s, a, g, n_bootstrap=50, random_state=0)
    md = rep.to_markdown()
    assert md.splitlines()[0].startswith("| attack | n_adv | AUC")
    assert len(md.splitlines()) == 2 + 4
    assert f"{rep.value('macro'):.3f} [" in md
    path = tmp_path / "r.json"
    text = rep.to_json(path)
    assert json.loads(path.read_text()) == json.loads(text)
    back = DetectionReport.from_dict(json.loads(text))
    assert back.value("pgd", "eer_accuracy") == rep.value("pgd", "eer_accuracy")
    frame = rep.to_frame()
    assert list(frame.index) == ["fgsm", "pgd", "macro", "overall"]
    assert frame.loc["pgd", "auc_low"] == rep.interval("pgd")[0]


def test_bad_input():
    with pytest.raises(ValueError, match="single class"):
        detection_report([1, 1], [0.1, 0.2], ["a", "a"])
    with pytest.raises(ValueError, match="NaN"):
        detection_report([0, 1], [0.1, np.nan], ["a", "a"])
    with pytest.raises(ValueError, match="inconsistent"):
        detection_report([0, 1], [0.1, 0.2], ["a"])
    with pytest.raises(ValueError, match="n_bootstrap"):
        detection_report([0, 1], [0.1, 0.2], ["a", "b"], n_bootstrap=-1)
