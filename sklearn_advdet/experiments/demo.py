"""The embedded end-to-end demo behind ``advdet demo``.

Digits CNN -> the digits set's attacks -> deep features -> PivotEmbedder with the
LSTM and MLP detectors, and KNNClassScorer -> per-attack AUC table, ROC and
score-density plots, JSON report.
"""

import json
import time
from pathlib import Path

import numpy as np

from .. import metrics
from .._progress import get_logger

__all__ = ["run_demo", "comparison_table"]


def comparison_table(reports, digits=3):
    """Render ``{detector: detection_report(..., output_dict=True)}`` as one table.

    Rows are attacks (then macro AUC, overall AUC and overall EER accuracy),
    columns are detectors.
    """
    names = list(reports)
    attacks = [r for r in next(iter(reports.values())) if r not in ("macro AUC", "overall")]
    rows = [(f"AUC {a}", [reports[n][a]["auc"] for n in names]) for a in attacks]
    rows.append(("macro AUC", [reports[n]["macro AUC"]["auc"] for n in names]))
    rows.append(("overall AUC", [reports[n]["overall"]["auc"] for n in names]))
    rows.append(("EER accuracy", [reports[n]["overall"]["eer_accuracy"] for n in names]))
    first = max(len(r[0]) for r in rows) + 2
    widths = [max(len(n), digits + 3) + 2 for n in names]
    out = [" " * first + "".join(f"{n:>{w}}" for n, w in zip(names, widths))]
    for label, values in rows:
        out.append(
            f"{label:<{first}}"
            + "".join(f"{v:>{w}.{digits}f}" for v, w in zip(values, widths))
        )
    return "\n".join(out)


def run_demo(out_dir="advdet_out", *, random_state=0, n_jobs=None, max_epochs=100,
             progress=True, data_home=None, log=None):
    """Run the embedded demo end to end and write its report.

    Parameters
    ----------
    out_dir : str or path-like, default="advdet_out"
        Where ``report.json``, ``roc_*.png`` and ``density_*.png`` go.
    random_state : int, default=0
    n_jobs : int, default=None
    max_epochs : int, default=100
        Epochs of the LSTM and MLP detectors (the paper's 100 by default).
    progress : bool, default=True
    data_home : str, default=None
        Cache folder of the embedded data set.
    log : callable, default=None
        Receives one line (or one table) per finished stage; None sends them
        to the ``sklearn_advdet.demo`` logger at INFO level.

    Returns
    -------
    dict
        The report written to ``report.json``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.model_selection import GroupShuffleSplit

    from ..deep.digits_detection import load_digits_detection
    from ..detectors import MLPDetector, SequenceLSTMDetector, balanced_sample_weight
    from ..embedding import PivotEmbedder
    from ..knn import KNNClassScorer, ScoreThresholdDetector

    log = log if log is not None else get_logger("demo").info
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()
    data = load_digits_detection(
        data_home=data_home, random_state=random_state, progress=progress
    )
    timings["data"] = time.perf_counter() - t0
    layout = data.layout
    log(
        f"digits CNN: test accuracy {data.cnn_accuracy:.3f}; reference set "
        f"{data.X_ref.shape[0]} images, detection set {data.X.shape[0]} rows "
        f"({int(data.y.sum())} adversarial), layers {layout.layer_names}"
    )

    split = GroupShuffleSplit(n_splits=1, test_size=0.3, random_state=random_state)
    train, test = next(split.split(data.X, data.y, data.groups))
    y_tr, y_te = data.y[train], data.y[test]
    att_tr, att_te = data.attack[train], data.attack[test]
    w_tr = balanced_sample_weight(y_tr, att_tr)

    scores = {}
    # --- first paper: pivot-distance trajectories ---------------------------
    t0 = time.perf_counter()
    embedder = PivotEmbedder(
        layer_sizes=layout, pivots="medoid", metric="euclidean", n_jobs=n_jobs
    ).fit(data.X_ref, data.y_ref)
    E_tr, E_te = embedder.transform(data.X[train]), embedder.transform(data.X[test])
    timings["pivots"] = time.perf_counter() - t0
    # model selection on a grouped validation split, as the authors did
    # (best validation macro AUC, early stopping); at most max_epochs epochs
    common = dict(max_epochs=max_epochs, validation_fraction=0.1, n_iter_no_change=10,
                  random_state=random_state)
    g_tr = data.groups[train]
    for name, det in {
        "pivot+LSTM": SequenceLSTMDetector(n_steps=layout.n_layers, **common),
        "pivot+MLP": MLPDetector(**common),
    }.items():
        t0 = time.perf_counter()
        det.fit(E_tr, y_tr, sample_weight=w_tr, groups=g_tr)
        scores[name] = det.decision_function(E_te)
        timings[name] = time.perf_counter() - t0
        log(f"{name}: fitted in {timings[name]:.1f} s "
            f"({det.n_epochs_} epochs, best validation macro AUC "
            f"{det.best_validation_score_:.3f} at epoch {det.best_epoch_})")

    # --- second paper: kNN class scores --------------------------------------
    t0 = time.perf_counter()
    k = min(100, data.X_ref.shape[0] // 10)
    scorer = KNNClassScorer(
        layer_sizes=layout, layers="all", n_neighbors=k, weights="rank",
        backend="exact", n_jobs=n_jobs,
    ).fit(data.X_ref, data.y_ref)
    S_tr, S_te = scorer.transform(data.X[train]), scorer.transform(data.X[test])
    last = ScoreThresholdDetector(column=layout.n_layers - 1).fit(S_tr, y_tr)
    scores["kNN last layer"] = last.decision_function(S_te)
    seq = SequenceLSTMDetector(n_steps=layout.n_layers, **common).fit(
        S_tr, y_tr, sample_weight=w_tr, groups=g_tr
    )
    scores["kNN trajectory+LSTM"] = seq.decision_function(S_te)
    timings["knn"] = time.perf_counter() - t0
    log(f"kNN scorer (k={k}, W-kNN, all layers): {timings['knn']:.1f} s")

    reports = {
        name: metrics.detection_report(y_te, s, att_te, output_dict=True)
        for name, s in scores.items()
    }
    table = comparison_table(reports)
    log("ROC AUC per attack on the held-out images:\n" + table)

    # natural errors: share caught at the EER threshold of the last-layer score
    if len(data.X_errors):
        caught = float(np.mean(last.predict(scorer.transform(data.X_errors)) == 1))
        log(f"natural errors flagged by the kNN last-layer detector: {caught:.1%} "
            f"of {len(data.X_errors)}")
    else:
        caught = None

    for name, s in scores.items():
        slug = name.replace("+", "_").replace(" ", "_").lower()
        ax = metrics.plot_roc_curves(y_te, s, att_te, title=f"ROC per attack: {name}")
        ax.figure.savefig(out / f"roc_{slug}.png", dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
        ax = metrics.plot_score_density(
            s, np.where(y_te == 0, "authentic", att_te),
            title=f"Score density: {name}", xlabel="detector score (higher = adversarial)",
        )
        ax.figure.savefig(out / f"density_{slug}.png", dpi=120, bbox_inches="tight")
        plt.close(ax.figure)

    report = {
        "data": {
            "cnn_test_accuracy": float(data.cnn_accuracy),
            "n_reference": int(data.X_ref.shape[0]),
            "n_detection": int(data.X.shape[0]),
            "n_test": int(len(test)),
            "layers": layout.layer_names,
            "attacks": sorted(set(map(str, data.attack[data.y == 1]))),
        },
        "detectors": reports,
        "natural_errors_flagged": caught,
        "timings_s": timings,
    }
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out / "report.json")
    log(f"report and plots written to {out}/")
    return report
