"""``advdet benchmark --adaptive``: the adaptive-attack figures from the command line."""

import json

import pytest

from _cli import one_line_error, run_cli as _run


def test_adaptive_needs_the_classifier(tmp_path, capsys):
    rc, _, err = _run(["benchmark", "--adaptive", "--digits", "--out", str(tmp_path / "a")],
                      capsys)
    one_line_error(rc, err, "pass --data")
    assert not (tmp_path / "a").exists()


@pytest.mark.shared_data
def test_adaptive_on_resnet20(tmp_path, capsys, shared_data):
    out = tmp_path / "adaptive"
    argv = ["benchmark", "--adaptive", "--data", str(shared_data), "--depth", "20",
            "--detector", "logit_mahalanobis_logistic", "--ref-per-class", "20",
            "--n-train", "40", "--n-calib", "40", "--n-eval", "24", "--n-iter", "3",
            "--out", str(out)]
    rc, printed, err = _run(argv + ["--n-eval", "0"], capsys)
    assert rc == 2 and "must be positive" in err and not out.exists()
    rc, printed, err = _run(argv, capsys)
    assert rc == 0, err
    cells = json.loads((out / "cells.json").read_text())["cells"]
    # one cell per attack and budget (2, 4, 8/255), each with its figures
    assert sorted(cells) == sorted(f"logit_mahalanobis_logistic|0|{m}|{e:.1f}"
                                   for m in ("oblivious", "adaptive", "orthogonal")
                                   for e in (2.0, 4.0, 8.0))
    for c in cells.values():
        assert 0 <= c["robust"] <= 1 and c["n"] <= 24
    assert "| logit_mahalanobis_logistic | 0 | adaptive | 8/255 |" in printed
    assert (out / "adaptive.md").read_text() in printed


def test_help_names_the_detectors_attacked_by_default(capsys):
    from sklearn_advdet.experiments.adaptive_eval import ADAPTIVE_DETECTORS

    rc, printed, _ = _run(["benchmark", "--help"], capsys)
    assert rc == 0
    text = " ".join(printed.split())  # argparse wraps the group description
    assert "(default: " + ", ".join(ADAPTIVE_DETECTORS) + ")" in text
    assert "5% FPR" in text  # not argparse's unformatted '5%%'
