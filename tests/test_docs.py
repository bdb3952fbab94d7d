"""The documentation builds with warnings as errors (and runs the examples)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    pytest.importorskip("sphinx_gallery")
    env = dict(os.environ, MPLBACKEND="Agg")
    res = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=900, env=env, cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    html = tmp_path / "html"
    for page in ("index.html", "api.html", "user_guide/pivot_detector.html",
                 "user_guide/knn_detector.html", "user_guide/gpu_and_scaling.html",
                 "auto_examples/plot_grid_search_pivots.html",
                 "auto_examples/plot_knn_scores.html", "auto_examples/plot_own_model.html"):
        assert (html / page).exists(), page
    # every public estimator has an API page
    for name in ("PivotEmbedder", "SequenceLSTMDetector", "MLPDetector",
                 "KNNClassScorer", "ScoreThresholdDetector"):
        assert (html / "gen_modules" / f"sklearn_advdet.{name}.html").exists(), name
