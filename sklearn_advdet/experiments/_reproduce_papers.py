"""The two papers' tables of :func:`~sklearn_advdet.experiments.reproduce.reproduce`.

Paper 1: pivot trajectories + LSTM / MLP detectors (ROC AUC per attack);
paper 2: kNN class scores (accuracy at the EER threshold per attack).
"""

import time

import numpy as np

from ..detectors import MLPDetector, SequenceLSTMDetector, balanced_sample_weight
from ..embedding import PivotEmbedder
from ..knn import KNNClassScorer, knn_class_scores, knn_evaluation
from ..metrics import _finish_roc_axes, eer_accuracy, macro_auc, overall_auc, roc_auc_per_attack
from ._reproduce_config import _FAMILY_NAMES, _KNN_PREPROCESSING, _KNN_WEIGHTS, _PIVOT_CONFIGS, _SPLIT

_KNN_CHUNK = 8192  # query rows per neighbour search


# ------------------------------------------------------------------ paper 1
def _paper1(data, fit_rows, test_rows, cfg, n_layers, device, n_jobs, random_state, log):
    y, family, eps_key, groups = data.y, data.family, data.eps_key, data.groups
    sw = balanced_sample_weight(y[fit_rows], family[fit_rows])
    # train/val: 10 % of all source images = 1/8 of the train+val images
    val_frac = _SPLIT[1] / (_SPLIT[0] + _SPLIT[1])
    rows, scores, timings, split = [], {}, {}, None
    for pivots, metric in _PIVOT_CONFIGS:
        t0 = time.perf_counter()
        emb = PivotEmbedder(layer_sizes=data.layout, pivots=pivots, metric=metric,
                            n_jobs=n_jobs).fit(data.X_ref, data.y_ref)
        Z = emb.transform(data.X)
        timings[f"pivots {pivots}/{metric}"] = time.perf_counter() - t0
        for det_name in ("LSTM", "MLP"):
            common = dict(max_epochs=int(cfg["max_epochs"]), validation_fraction=val_frac,
                          n_iter_no_change=int(cfg["patience"]), device=device,
                          random_state=random_state)
            if det_name == "LSTM":
                det = SequenceLSTMDetector(n_steps=n_layers, **common)
            else:
                det = MLPDetector(**common)
            t0 = time.perf_counter()
            det.fit(Z[fit_rows], y[fit_rows], sample_weight=sw, groups=groups[fit_rows])
            s = det.decision_function(Z[test_rows])
            timings[f"{det_name} {pivots}/{metric}"] = time.perf_counter() - t0
            this_split = (np.unique(groups[fit_rows][det.train_indices_]),
                          np.unique(groups[fit_rows][det.validation_indices_]))
            if split is None:
                split = this_split
            elif not all(np.array_equal(a, b) for a, b in zip(split, this_split)):
                raise RuntimeError("the detectors' train/validation splits differ")
            yt = y[test_rows]
            auc = roc_auc_per_attack(yt, s, family[test_rows])
            auc_eps = roc_auc_per_attack(yt, s, eps_key[test_rows])
            name = f"{det_name} {pivots} {metric}"
            rows.append({
                "config": name,
                "detector": det_name,
                "pivots": pivots,
                "metric": metric,
                "auc": {f: auc.get(f, float("nan")) for f in _FAMILY_NAMES},
                "macro_auc": macro_auc(yt, s, family[test_rows]),
                "overall_auc": overall_auc(yt, s),
                "eer_accuracy": eer_accuracy(yt, s),
                "auc_per_eps": auc_eps,
                "n_epochs": int(det.n_epochs_),
                "best_epoch": det.best_epoch_,
                "best_validation_macro_auc": det.best_validation_score_,
            })
            scores[name] = s
            log(f"  {name:<28s} macro AUC {rows[-1]['macro_auc']:.3f} "
                f"({det.n_epochs_} epochs, best {det.best_epoch_})")
    return rows, scores, timings, split


def _roc_figure(path, y, family, rows, scores, title):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    best = {}
    for fam in _FAMILY_NAMES:
        cand = [r for r in rows if np.isfinite(r["auc"][fam])]
        if not cand:
            continue
        r = max(cand, key=lambda r: r["auc"][fam])
        best[fam] = r["config"]
        mask = (y == 0) | (family == fam)
        fpr, tpr, _ = roc_curve(y[mask], scores[r["config"]][mask])
        ax.plot(fpr, tpr, label=f"{fam}: {r['config']} (AUC {r['auc'][fam]:.3f})")
    _finish_roc_axes(ax, title, legend_size="x-small", title_size="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return best


# ------------------------------------------------------------------ paper 2
def _live_channels(Z):
    """Channels of a layer that vary over the reference rows (at least 1).

    A dead channel (a ReLU output pooled to the same value for every image:
    ResNet-20's layer3.0 has one) gives a principal component without
    variance, which whitening cannot scale; the paper's PCA whitening keeps
    the live ones.
    """
    return max(int(np.count_nonzero(np.ptp(Z, axis=0) > 0)), 1)


def _paper2(data, cfg, n_jobs, random_state, log):
    layout = data.layout
    names = layout.layer_names
    chosen = names[-int(cfg["knn_layers"]):]
    k = min(int(cfg["n_neighbors"]), data.X_ref.shape[0])
    # queries: every detection row (authentic + adversarial), then the natural errors
    Q = np.concatenate([data.X, data.X_errors]) if len(data.X_errors) else data.X
    n_det = data.X.shape[0]
    predicted = np.argmax(Q[:, layout.logits_slice], axis=1)
    rows, timings = [], {}
    for layer in chosen:
        n_live = _live_channels(data.X_ref[:, layout.slice_of(layer)])
        for pre_name, pre in _KNN_PREPROCESSING:
            t0 = time.perf_counter()
            scorer = KNNClassScorer(layer_sizes=layout, layers=[layer], n_neighbors=k,
                                    preprocessing=pre, n_components=min(256, n_live),
                                    backend="exact", n_jobs=n_jobs,
                                    random_state=random_state).fit(data.X_ref, data.y_ref)
            all_scores = {w: np.empty(len(Q)) for _, w in _KNN_WEIGHTS}
            for lo in range(0, len(Q), _KNN_CHUNK):  # bounded memory: k per row
                hi = min(lo + _KNN_CHUNK, len(Q))
                dist, idx = scorer.kneighbors(Q[lo:hi])
                labels = scorer.ref_labels_[idx]
                for _, w in _KNN_WEIGHTS:
                    all_scores[w][lo:hi] = knn_class_scores(labels, dist,
                                                            predicted[lo:hi], w)
            for w_name, w in _KNN_WEIGHTS:
                s = all_scores[w]
                ev = knn_evaluation(s[:n_det], data.y, data.family,
                                    layer_names=[layer])[layer]
                nat = s[n_det:]
                flagged = float(np.mean(nat <= ev["threshold"])) if nat.size else float("nan")
                acc = ev["eer_accuracy"]
                rows.append({
                    "layer": layer,
                    "weights": w_name,
                    "preprocessing": pre_name,
                    "eer_accuracy": {f: acc.get(f, float("nan")) for f in _FAMILY_NAMES},
                    "aggregated": acc["all"],
                    "natural_errors_flagged": flagged,
                    "threshold": ev["threshold"],
                })
            timings[f"kNN {layer}/{pre_name}"] = time.perf_counter() - t0
        best = max((r for r in rows if r["layer"] == layer), key=lambda r: r["aggregated"])
        log(f"  {layer}: best aggregated EER accuracy {best['aggregated']:.3f} "
            f"({best['weights']}, {best['preprocessing']})")
    return rows, k, timings
