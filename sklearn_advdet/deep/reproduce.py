"""Reproduce both papers' protocols on CIFAR-10 with a pretrained CIFAR ResNet.

:func:`reproduce` is what ``advdet reproduce`` runs.  From the JPEG CIFAR-10
tars (``train.tar``: the reference set, ``test.tar``: the images that are
attacked) and a CIFAR ResNet it builds a detection set with
:func:`~sklearn_advdet.deep.detection.build_detection_set` (L-BFGS, FGSM, BIM,
PGD and MI-FGSM, the last four at eps 4, 8 and 16/255), splits it by *source
image* into 70 % train, 10 % validation and 20 % test, and writes

* the analogue of Table 2 of Carrara et al., "Adversarial examples detection
  in features distance spaces" (ECCV-W 2018): LSTM / MLP detectors on
  medoid / centroid pivots with cosine / Euclidean distances, ROC AUC per
  attack family (every eps pooled) and macro AUC on the test split, plus the
  per-eps breakdown and a ROC figure of the best configuration per attack;
* the analogue of Tables 2/4 of Carrara et al., "Adversarial image detection
  in deep neural networks" (MTAP 2018): kNN / W-kNN / DW-kNN class scores of
  the deepest hooked blocks with no preprocessing, L2 normalisation or PCA
  whitening; accuracy at the equal-error-rate threshold per attack, pooled,
  and the share of natural errors flagged at that threshold;

as Markdown (``results.md``), JSON (``results.json``) and PNG figures, with
the timing of every stage and the machine.

Three sizes (see :data:`SIZES`): ``"tiny"`` (a smoke test, about a minute),
``"default"`` (the whole training set as reference, 1,500 test images; 6 minutes
for ResNet-20 and about 15 for ResNet-56 on an idle 2-core CPU machine) and
``"full"`` (the papers' sizes, for a GPU).
"""

import datetime
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

__all__ = ["SIZES", "reproduce", "locate_cifar_tars", "locate_weights"]

#: Attack families in table order: (display name, attack function name).
FAMILIES = (
    ("L-BFGS", "lbfgs"),
    ("FGSM", "fgsm"),
    ("BIM", "bim"),
    ("PGD", "pgd"),
    ("MI-FGSM", "mifgsm"),
)
_FAMILY_NAMES = [f for f, _ in FAMILIES]
EPS_255 = (4, 8, 16)
_PIVOT_CONFIGS = [(p, m) for p in ("medoid", "centroid") for m in ("cosine", "euclidean")]
_KNN_WEIGHTS = (("kNN", "uniform"), ("W-kNN", "rank"), ("DW-kNN", "distance"))
_KNN_PREPROCESSING = (("none", None), ("L2", "l2"), ("PCA-whitening", "pca"))

#: Subset sizes and budgets of each ``size``.  ``ref_per_class`` /
#: ``test_per_class``: the first N images of every class of train.tar /
#: test.tar in file-name order (None = all); ``lbfgs_images``: L-BFGS attacks a
#: seeded random subset of at most this many correctly classified test images;
#: ``iterative``: extra parameters of BIM / PGD / MI-FGSM (``alpha_frac``: step =
#: alpha_frac * eps); ``max_epochs`` / ``patience``: detector training with
#: early stopping on the validation macro AUC; ``knn_layers``: how many of the
#: deepest hooked blocks the kNN table uses; ``n_neighbors``: k of the kNN
#: scores, scaled with the reference set to the paper's proportion (k = 1000
#: of 50,000 references, 20 % of a class) and capped by the reference size.
SIZES = {
    "tiny": dict(
        ref_per_class=20,
        test_per_class=4,
        lbfgs_images=3,
        lbfgs_params=dict(binary_search_steps=1, max_iter=10),
        iterative=dict(n_iter=2, alpha_frac=0.6),
        max_epochs=12,
        patience=5,
        knn_layers=3,
        n_neighbors=10,
    ),
    "default": dict(
        ref_per_class=None,
        test_per_class=150,
        lbfgs_images=100,
        lbfgs_params=dict(binary_search_steps=2, max_iter=20),
        iterative=None,
        max_epochs=100,
        patience=10,
        knn_layers=3,
        n_neighbors=1000,
    ),
    "full": dict(
        ref_per_class=None,
        test_per_class=None,
        lbfgs_images=1000,
        lbfgs_params={},
        iterative=None,
        max_epochs=100,
        patience=10,
        knn_layers=3,
        n_neighbors=1000,
    ),
}

_SPLIT = (0.7, 0.1, 0.2)
_KNN_CHUNK = 8192  # query rows per neighbour search
_DEPTHS = (20, 32, 44, 56, 110)


# ------------------------------------------------------------------ inputs
def locate_cifar_tars(data_dir):
    """Paths of ``train.tar`` and ``test.tar`` under ``data_dir``.

    ``data_dir`` may hold ``cifar10-jpeg/{train,test}.tar`` (the layout of the
    shared data folder) or the two tars directly.

    Raises
    ------
    FileNotFoundError
        With the paths that were looked for.
    """
    root = Path(data_dir)
    if not root.exists():
        raise FileNotFoundError(
            f"data directory {str(root)!r} does not exist: pass the folder holding "
            "cifar10-jpeg/train.tar and cifar10-jpeg/test.tar (or the two tars)"
        )
    if not root.is_dir():
        raise NotADirectoryError(
            f"data directory {str(root)!r} is not a directory: pass the folder "
            "holding cifar10-jpeg/train.tar and test.tar (or the two tars)"
        )
    candidates = [root / "cifar10-jpeg", root]
    for base in candidates:
        if (base / "train.tar").is_file() and (base / "test.tar").is_file():
            return base / "train.tar", base / "test.tar"
    found = [str(b / n) for b in candidates for n in ("train.tar", "test.tar")
             if (b / n).is_file()]
    wanted = " and ".join(str(candidates[0] / n) for n in ("train.tar", "test.tar"))
    raise FileNotFoundError(
        f"CIFAR-10 tars not found: expected {wanted} (or train.tar and test.tar "
        f"directly in {str(root)!r})"
        + (f"; found only {found}" if found else "")
    )


def locate_weights(data_dir, depth):
    """The published weights ``resnet<depth>-*.th`` near ``data_dir``.

    Looks in ``<data_dir>/weights/`` and ``<data_dir>/../weights/``.

    Raises
    ------
    FileNotFoundError
    """
    root = Path(data_dir)
    for folder in (root / "weights", root.parent / "weights", root):
        hits = sorted(folder.glob(f"resnet{depth}-*.th")) if folder.is_dir() else []
        if hits:
            return hits[0]
    raise FileNotFoundError(
        f"no weights for ResNet-{depth} given and no resnet{depth}-*.th in "
        f"{str(root / 'weights')!r}: pass weights=<path of the checkpoint>"
    )


def _check_args(depth, size, random_state):
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) \
            or int(depth) not in _DEPTHS:
        raise ValueError(f"depth must be one of {list(_DEPTHS)}, got {depth!r}")
    if not isinstance(size, str) or size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise ValueError(
            "random_state must be an int (it also names the resumable cache of "
            f"the detection set), got {random_state!r}"
        )


def machine_info():
    """Platform, CPU count, Python / torch / scikit-learn versions, date."""
    import sklearn
    import torch

    info = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        info["load_average_at_start"] = None
    return info


def _attack_specs(cfg, random_state):
    from .attacks import eps_from_255

    specs = []
    lb = dict(cfg["lbfgs_params"])
    lb.update(label="L-BFGS", max_images=int(cfg["lbfgs_images"]))
    specs.append(("lbfgs", None, lb))
    for family, name in FAMILIES[1:]:
        for e in EPS_255:
            eps = eps_from_255(e)
            params = {"label": family}
            it = cfg["iterative"]
            if it is not None and name != "fgsm":
                params["n_iter"] = int(it["n_iter"])
                params["alpha"] = float(it["alpha_frac"]) * eps
            specs.append((name, eps, params))
    return specs


def _eps_key(family, eps):
    if not np.isfinite(eps):
        return family
    return f"{family}-{int(round(eps * 255))}"


# ------------------------------------------------------------------ split
def _split_groups(n_images, random_state):
    """70/10/20 of the source-image ids; returns (train+val ids, test ids)."""
    rng = np.random.RandomState(random_state)
    perm = rng.permutation(n_images)
    n_test = int(round(_SPLIT[2] * n_images))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


# ------------------------------------------------------------------ paper 1
def _paper1(data, fit_rows, test_rows, cfg, n_layers, device, n_jobs, random_state, log):
    from sklearn_advdet.detectors import (
        MLPDetector,
        SequenceLSTMDetector,
        balanced_sample_weight,
    )
    from sklearn_advdet.embedding import PivotEmbedder
    from sklearn_advdet.metrics import eer_accuracy, macro_auc, overall_auc, roc_auc_per_attack

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

    from ..metrics import _finish_roc_axes

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
def _paper2(data, cfg, n_jobs, random_state, log):
    from sklearn_advdet.knn import KNNClassScorer, knn_class_scores, knn_evaluation

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
        for pre_name, pre in _KNN_PREPROCESSING:
            t0 = time.perf_counter()
            scorer = KNNClassScorer(layer_sizes=layout, layers=[layer], n_neighbors=k,
                                    preprocessing=pre, backend="exact", n_jobs=n_jobs,
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


# ------------------------------------------------------------------ report
def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _markdown(res):
    c, d, m = res["config"], res["data"], res["machine"]
    out = [f"# Reproduction on CIFAR-10: ResNet-{c['depth']} (size `{c['size']}`)", ""]
    out += [
        f"Date: {m['date']}. Machine: {m['platform']}, {m['cpu_count']} CPU(s) "
        f"(torch threads {m['torch_threads']}), "
        f"{'GPU ' + m['cuda'] if m['cuda'] else 'no GPU'}; Python {m['python']}, "
        f"torch {m['torch']}, scikit-learn {m['sklearn']}. Device used: `{c['device']}`. "
        f"Load average at start: {m['load_average_at_start']}.",
        "",
        f"Total wall time: **{res['timings']['total']:.0f} s** "
        f"({res['timings']['total'] / 60:.1f} min).",
        "",
    ]
    if c.get("note"):
        out += [c["note"], ""]
    out += ["## Set-up", ""]
    out += [
        f"- Model: ResNet-{c['depth']} (`{Path(c['weights']).name}`), hooked blocks: "
        f"{', '.join(d['layer_names'])} (globally average-pooled) + logits.",
        f"- Reference set (pivots, kNN index): {d['n_ref']} train.tar images "
        + (f"({c['ref_per_class']} per class, the first in file-name order), "
           if c['ref_per_class'] else "(the whole training set), ")
        + "with their true classes.",
        f"- Attacked images: {d['n_test_images']} test.tar images "
        + (f"({c['test_per_class']} per class, the first in file-name order); "
           if c['test_per_class'] else "(the whole test set); ")
        + f"model accuracy on them {d['test_accuracy']:.3f}: {d['n_authentic']} authentic "
        f"(correctly classified) and {d['n_natural_errors']} natural errors (kept apart).",
        f"- Attacks on the authentic images (adversarial = successful attacks): "
        f"L-BFGS (targeted at a random class other than the true one, on a random "
        f"subset of at most "
        f"{c['lbfgs_images']} images, parameters {c['lbfgs_params'] or 'defaults'}), "
        "FGSM, BIM, PGD, MI-FGSM at eps 4, 8, 16/255"
        + (f" (iterative attacks with {c['iterative']})" if c["iterative"] else
           " (BIM: alpha 1/255, n_iter = min(eps+4, 1.25 eps); PGD, MI-FGSM: 10 steps)")
        + ".",
        f"- Split by source image: {d['split']['n_train_images']} / "
        f"{d['split']['n_val_images']} / {d['split']['n_test_images']} images "
        "(train / validation / test, 70/10/20 %), i.e. "
        f"{d['split']['n_train_rows']} / {d['split']['n_val_rows']} / "
        f"{d['split']['n_test_rows']} detection rows; an image and its adversarial "
        "versions never straddle two parts.",
        f"- Detectors: trained on the train part with `balanced_sample_weight` (authentic "
        f"and every attack family equally likely), Adam lr 3e-4, batch 128, at most "
        f"{c['max_epochs']} epochs, early stopping (patience {c['patience']}) on the "
        "validation macro AUC, best epoch restored.",
        f"- kNN: k = {res['paper2']['k']} (the paper's 1000 of 50,000, scaled to the "
        "reference size), "
        "exact search; PCA whitening keeps min(256, layer width) components; evaluated on "
        "all detection rows (no training involved).",
        "",
        "Attack success (successful / attacked):",
        "",
    ]
    out.append(_table(
        ["attack", "eps", "attacked", "adversarial rows", "success rate"],
        [[a["attack"], "-" if a["eps"] is None else f"{a['eps255']}/255", a["n_attacked"],
          a["n_adversarial"], _fmt(a["n_adversarial"] / max(a["n_attacked"], 1))]
         for a in d["attacks"]]))
    out += ["", "## Paper 1 (features distance spaces): ROC AUC on the test split", ""]
    p1 = res["paper1"]
    out.append(_table(
        ["detector", "pivots", "distance"] + _FAMILY_NAMES + ["macro AUC", "epochs"],
        [[r["detector"], r["pivots"], r["metric"]]
         + [_fmt(r["auc"][f]) for f in _FAMILY_NAMES]
         + [f"**{_fmt(r['macro_auc'])}**" if r["config"] == p1["best_macro"]
            else _fmt(r["macro_auc"]), f"{r['best_epoch']}/{r['n_epochs']}"]
         for r in p1["rows"]]))
    out += ["", "Epochs: best (restored) / run. Each attack family pools its three eps; "
            "every column compares that family's adversarial test rows with all "
            "authentic test rows.", ""]
    keys = p1["eps_columns"]
    out += ["Per-eps breakdown (ROC AUC):", ""]
    out.append(_table(
        ["config"] + keys,
        [[r["config"]] + [_fmt(r["auc_per_eps"].get(k, float("nan"))) for k in keys]
         for r in p1["rows"]]))
    if res.get("figures"):
        out += ["", f"![ROC, best configuration per attack]({res['figures']['roc']})", "",
                "Best configuration per attack: "
                + "; ".join(f"{k}: {v}" for k, v in p1["best_per_attack"].items()) + "."]
    out += ["", "## Paper 2 (kNN class score): accuracy at the EER threshold", ""]
    out.append(_table(
        ["layer", "scoring", "preprocessing"] + _FAMILY_NAMES
        + ["aggregated", "natural errors flagged"],
        [[r["layer"], r["weights"], r["preprocessing"]]
         + [_fmt(r["eer_accuracy"][f]) for f in _FAMILY_NAMES]
         + [_fmt(r["aggregated"]), _fmt(r["natural_errors_flagged"])]
         for r in res["paper2"]["rows"]]))
    out += ["", "Per attack: that family's adversarial rows vs all authentic rows, each at "
            "its own EER threshold; aggregated: every attack pooled, one threshold; "
            f"natural errors flagged: share of the {d['n_natural_errors']} natural errors "
            "whose score is at or below the aggregated EER threshold. A low class score "
            "means adversarial; an EER accuracy below 0.5 means that attack's adversarial "
            "images get *higher* scores for their (wrong) predicted class than the "
            "authentic images get for theirs.", ""]
    out += ["## Deviations from the papers", ""]
    out += [f"- {x}" for x in c["deviations"]]
    out += ["", "## Timings (s)", ""]
    out.append(_table(["stage", "seconds"],
                      [[k, f"{v:.1f}"] for k, v in res["timings"].items()]))
    out.append("")
    return "\n".join(out)


def _deviations(cfg, size, k):
    dev = [
        "CIFAR-10 images are the JPEG re-encoded ones of ../shared/data (about 10 points "
        "less accurate than the original PNGs), so natural errors are more frequent.",
    ]
    if cfg["ref_per_class"] is not None:
        dev.append(f"Reference set: {cfg['ref_per_class']} training images per class "
                   "instead of all 5,000 (pivots and kNN index from a subset).")
    if cfg["test_per_class"] is not None:
        dev.append(f"Only {cfg['test_per_class']} test images per class are attacked "
                   "(the papers use the whole test set), so the test split is small and "
                   "the AUC / EER figures carry a sampling error of a few points.")
    if k < 1000:
        dev.append(f"k = {k} instead of 1000: k is scaled with the reference set to the "
                   "paper's proportion (1000 of 50,000 references, a fifth of a class); "
                   "with k close to the reference size the plain kNN score degenerates "
                   "to the class prior.")
    dev.append(f"L-BFGS on at most {cfg['lbfgs_images']} images with "
               f"{cfg['lbfgs_params'] or 'the default'} budget (it is slow on a CPU).")
    if cfg["iterative"]:
        dev.append(f"BIM / PGD / MI-FGSM shortened to {cfg['iterative']['n_iter']} steps of "
                   f"{cfg['iterative']['alpha_frac']} eps.")
    if cfg["max_epochs"] < 100:
        dev.append(f"Detectors trained for at most {cfg['max_epochs']} epochs "
                   "(paper: 100).")
    dev.append("Detector model selection by early stopping on the validation macro AUC "
               "(as in the authors' code); the paper trains for a fixed 100 epochs.")
    dev.append("Adversarial images are kept as floats (not re-quantised to 8 bits).")
    return dev


# ------------------------------------------------------------------ driver
def reproduce(data_dir, depth=20, weights=None, out_dir="advdet-reproduce", *,
              size="default", device="auto", n_jobs=None, random_state=0,
              progress=True, log=print, note=None):
    """Run both papers' protocols on CIFAR-10 and write the results.

    Parameters
    ----------
    data_dir : str or path-like
        Folder holding ``cifar10-jpeg/train.tar`` and ``cifar10-jpeg/test.tar``
        (or the two tars directly).
    depth : {20, 32, 44, 56, 110}, default=20
        Depth of the CIFAR ResNet.
    weights : str, path-like or None, default=None
        Checkpoint of the ResNet (see
        :func:`sklearn_advdet.deep.models.cifar_resnet`); None looks for
        ``resnet<depth>-*.th`` in ``<data_dir>/weights`` and
        ``<data_dir>/../weights``.
    out_dir : str or path-like, default="advdet-reproduce"
        Output folder: ``results.md``, ``results.json``, ``figures/`` and the
        resumable feature stores of the detection set (``detection_set/``;
        an interrupted run started again with the same arguments reuses the
        finished stores and attacks).
    size : {"tiny", "default", "full"}, default="default"
        Subset sizes and budgets, see :data:`SIZES`.
    device : str, default="auto"
        torch device for the attacks, the feature extraction and the
        detectors (``"auto"``: CUDA when available).
    n_jobs : int or None, default=None
        Parallel jobs of the pivot and kNN computations.
    random_state : int, default=0
        Seeds the attacks, the split and the detectors.
    progress : bool, default=True
        Progress bars of the extraction and the attacks.
    log : callable or None, default=print
        Receives one line of text per stage; None is silent.
    note : str or None, default=None
        A paragraph written under the title of ``results.md`` (e.g. that the
        machine was shared during the run).

    Returns
    -------
    results : dict
        What ``results.json`` holds: ``config``, ``machine``, ``data`` (sizes,
        attack success, split), ``split`` (train / validation / test source
        image ids), ``paper1`` (rows of the first paper's table, per-eps
        AUCs, best configuration per attack), ``paper2`` (rows of the kNN
        table), ``figures`` and ``timings``; plus ``markdown``, the text of
        ``results.md``, and ``paths``.

    Raises
    ------
    FileNotFoundError
        When the tars or the weights are missing.
    ValueError
        On a bad ``depth``, ``size`` or ``random_state``.
    """
    log = log if log is not None else (lambda *a, **k: None)
    t_start = time.perf_counter()
    _check_args(depth, size, random_state)
    depth, random_state = int(depth), int(random_state)
    cfg = dict(SIZES[size])
    train_tar, test_tar = locate_cifar_tars(data_dir)
    if weights is None:
        weights = locate_weights(data_dir, depth)
    elif not Path(weights).is_file():
        raise FileNotFoundError(
            f"weights file {str(weights)!r} does not exist: pass the path of the "
            f"ResNet-{depth} checkpoint (e.g. resnet{depth}-*.th)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)

    from .data import load_image_folder
    from .detection import build_detection_set
    from .models import cifar_resnet

    from ..detectors import _resolve_device

    device = _resolve_device(device)
    machine = machine_info()
    timings = {}
    log(f"reproduce: ResNet-{depth}, size {size!r}, device {device}, out {out}")

    t0 = time.perf_counter()
    model = cifar_resnet(depth, weights)
    ref_u8, ref_labels, classes = load_image_folder(train_tar,
                                                    per_class=cfg["ref_per_class"])
    test_u8, test_labels, test_classes = load_image_folder(test_tar,
                                                           per_class=cfg["test_per_class"])
    if classes != test_classes:
        raise ValueError(f"train.tar and test.tar have different classes: {classes} "
                         f"and {test_classes}")
    ref_images = ref_u8.astype(np.float32) / 255.0
    test_images = test_u8.astype(np.float32) / 255.0
    del ref_u8, test_u8
    timings["load images and model"] = time.perf_counter() - t0
    log(f"loaded {len(ref_images)} reference and {len(test_images)} test images "
        f"({timings['load images and model']:.1f} s)")

    # build the detection set one attack family at a time (the cache under
    # out/detection_set keeps what is done, so each call adds one family)
    specs = _attack_specs(cfg, random_state)
    order = ["fgsm", "bim", "pgd", "mifgsm", "lbfgs"]
    done = []
    data = None
    cache = out / "detection_set"
    for name in order:
        done += [s for s in specs if s[0] == name]
        t0 = time.perf_counter()
        data = build_detection_set(
            model, ref_images, ref_labels, test_images, test_labels, attacks=list(done),
            layers="cifar_resnet", device=device, random_state=random_state,
            progress=progress, out_dir=cache)
        label = dict(FAMILIES[i][::-1] for i in range(len(FAMILIES)))[name]
        stage = f"attack {label}"
        if name == order[0]:
            stage = f"features (reference + test) and {stage}"
        timings[stage] = time.perf_counter() - t0
        log(f"{stage}: {timings[stage]:.1f} s")
    del ref_images
    layout = data.layout
    n_layers = layout.n_layers
    data.family = np.where(data.y == 1, data.attack, "authentic")
    data.eps_key = np.array([_eps_key(f, e) if y else "authentic"
                             for f, e, y in zip(data.attack, data.eps, data.y)])

    # split by source image
    n_images = len(test_images)
    fitval_ids, test_ids = _split_groups(n_images, random_state)
    fit_rows = np.flatnonzero(np.isin(data.groups, fitval_ids))
    test_rows = np.flatnonzero(np.isin(data.groups, test_ids))
    if np.unique(data.y[test_rows]).size < 2 or np.unique(data.y[fit_rows]).size < 2:
        raise ValueError("the split left one class only in a part: use a larger size")

    log("paper 1: pivot trajectories + LSTM / MLP")
    t0 = time.perf_counter()
    p1_rows, p1_scores, p1_t, (train_ids, val_ids) = _paper1(
        data, fit_rows, test_rows, cfg, n_layers, device, n_jobs, random_state, log)
    timings["paper 1 (pivots + 8 detectors)"] = time.perf_counter() - t0
    # the detectors split the train+val images that have detection rows; the
    # other ones (natural errors only) count as train images (unused)
    train_ids = np.setdiff1d(fitval_ids, val_ids)

    figures = {}
    y_test, fam_test = data.y[test_rows], data.family[test_rows]
    best_per_attack = _roc_figure(
        out / "figures" / "roc_best_per_attack.png", y_test, fam_test, p1_rows, p1_scores,
        f"ResNet-{depth}, CIFAR-10 test split: best configuration per attack")
    figures["roc"] = "figures/roc_best_per_attack.png"
    best_macro = max(p1_rows, key=lambda r: r["macro_auc"])["config"]
    eps_cols = ["L-BFGS"] + [f"{f}-{e}" for f in _FAMILY_NAMES[1:] for e in EPS_255]

    log("paper 2: kNN class scores")
    t0 = time.perf_counter()
    p2_rows, k, p2_t = _paper2(data, cfg, n_jobs, random_state, log)
    timings["paper 2 (kNN indexes and scores)"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    rows_in = {"train": np.isin(data.groups, train_ids),
               "val": np.isin(data.groups, val_ids),
               "test": np.isin(data.groups, test_ids)}
    attacks = []
    for a in data.attack_summary:
        eps = a.get("eps")
        attacks.append({
            "attack": a["attack"],
            "eps": eps,
            "eps255": None if eps is None else int(round(eps * 255)),
            "n_attacked": int(a["n_attacked"]),
            "n_success": int(a["n_success"]),
            "n_adversarial": int(a["n_adversarial"]),
        })
    res = {
        "config": {
            "depth": depth, "weights": str(weights), "size": size, "device": device,
            "random_state": random_state, "n_jobs": n_jobs,
            **{k_: v for k_, v in cfg.items()},
            "deviations": _deviations(cfg, size, k),
            "note": note,
        },
        "machine": machine,
        "data": {
            "n_ref": int(len(data.y_ref)),
            "n_test_images": int(n_images),
            "test_accuracy": float(data.test_accuracy),
            "n_authentic": int(np.sum(data.y == 0)),
            "n_adversarial": int(np.sum(data.y == 1)),
            "n_natural_errors": int(len(data.X_errors)),
            "layer_names": list(layout.layer_names),
            "attacks": attacks,
            "split": {
                "n_train_images": int(len(train_ids)), "n_val_images": int(len(val_ids)),
                "n_test_images": int(len(test_ids)),
                "n_train_rows": int(rows_in["train"].sum()),
                "n_val_rows": int(rows_in["val"].sum()),
                "n_test_rows": int(rows_in["test"].sum()),
            },
        },
        "split": {"train": train_ids.tolist(), "val": val_ids.tolist(),
                  "test": test_ids.tolist()},
        "paper1": {"columns": _FAMILY_NAMES + ["macro"], "eps_columns": eps_cols,
                   "rows": p1_rows, "best_macro": best_macro,
                   "best_per_attack": best_per_attack},
        "paper2": {"columns": _FAMILY_NAMES + ["aggregated", "natural_errors_flagged"],
                   "k": int(k), "layers": list(layout.layer_names[-int(cfg["knn_layers"]):]),
                   "rows": p2_rows},
        "figures": figures,
        "timings": {**timings, **{f"- {k_}": v for k_, v in {**p1_t, **p2_t}.items()}},
    }
    # keep "total" last in the table
    res["timings"]["total"] = res["timings"].pop("total")
    md = _markdown(res)
    with open(out / "results.md", "w") as f:
        f.write(md)
    with open(out / "results.json", "w") as f:
        json.dump(res, f, indent=1, default=_json_default)
    res["markdown"] = md
    res["paths"] = {"markdown": str(out / "results.md"), "json": str(out / "results.json"),
                    "roc": str(out / figures["roc"])}
    log(f"results written to {out / 'results.md'} (total {timings['total']:.0f} s)")
    return res


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
