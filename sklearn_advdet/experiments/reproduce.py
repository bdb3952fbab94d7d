"""Reproduce both papers' protocols on CIFAR-10 with a pretrained CIFAR ResNet.

:func:`reproduce` is what ``advdet reproduce`` runs.  From the JPEG CIFAR-10
tars (``train.tar``: the reference set, ``test.tar``: the images that are
attacked) and a CIFAR ResNet it builds a detection set with
:func:`~sklearn_advdet.deep.detection.build_detection_set` (the papers'
L-BFGS, FGSM, BIM, PGD and MI-FGSM, the last four at eps 4, 8 and 16/255; and
the minimal-perturbation attacks CW-L2 and DeepFool with APGD-CE at 8/255,
which the papers did not run), splits it by *source image* into 70 % train,
10 % validation and 20 % test, and writes

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
``"default"`` (the whole training set as reference, 1,500 test images; a 2-core
CPU machine's times are in ``benchmarks/results/reproduce_resnet*.md``) and
``"full"`` (the papers' sizes: about 2 h 40 min for ResNet-20 on 2 CPU cores,
53 min of it CW-L2, in ``benchmarks/results/reproduce_resnet20_full.md``; a GPU
helps).
"""

import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from .._device import resolve_device
from .._progress import get_logger
from ._reproduce_config import (EPS_255, FAMILIES, FAMILY_EPS_255, SIZES, _BUILD_ORDER,
                                _DEPTHS, _FAMILY_NAMES, _SPLIT, _attack_specs,
                                _eps_columns)
from ._reproduce_papers import _paper1, _paper2, _roc_figure
from ._reproduce_report import _deviations, _markdown

__all__ = ["SIZES", "FAMILIES", "EPS_255", "FAMILY_EPS_255", "reproduce",
           "locate_cifar_tars", "locate_weights", "machine_info"]


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


# ------------------------------------------------------------------ driver
def reproduce(data_dir, depth=20, weights=None, out_dir="advdet-reproduce", *,
              size="default", device="auto", n_jobs=None, random_state=0,
              progress=True, log=None, note=None):
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
    log : callable or None, default=None
        Receives one line of text per stage; None sends them to the
        ``sklearn_advdet.reproduce`` logger (``logging.INFO``).
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
    log = log if log is not None else get_logger("reproduce").info
    t_start = time.perf_counter()
    _check_args(depth, size, random_state)
    depth, random_state = int(depth), int(random_state)
    cfg = dict(SIZES[size])
    train_tar, test_tar = locate_cifar_tars(data_dir)
    weights = _check_weights_path(data_dir, depth, weights)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    device = str(resolve_device(device))
    machine = machine_info()
    timings = {}
    log(f"reproduce: ResNet-{depth}, size {size!r}, device {device}, out {out}")

    model, ref_images, ref_labels, test_images, test_labels = _load_inputs(
        depth, weights, train_tar, test_tar, cfg, timings, log)
    data = _build_set(model, ref_images, ref_labels, test_images, test_labels, cfg,
                      device, random_state, progress, out / "detection_set", timings, log)
    del ref_images
    n_images = len(test_images)
    fitval_ids, test_ids = _split_groups(n_images, random_state)
    fit_rows = np.flatnonzero(np.isin(data.groups, fitval_ids))
    test_rows = np.flatnonzero(np.isin(data.groups, test_ids))
    if np.unique(data.y[test_rows]).size < 2 or np.unique(data.y[fit_rows]).size < 2:
        raise ValueError("the split left one class only in a part: use a larger size")

    log("paper 1: pivot trajectories + LSTM / MLP")
    t0 = time.perf_counter()
    p1_rows, p1_scores, p1_t, (train_ids, val_ids) = _paper1(
        data, fit_rows, test_rows, cfg, data.layout.n_layers, device, n_jobs,
        random_state, log)
    timings["paper 1 (pivots + 8 detectors)"] = time.perf_counter() - t0
    # the detectors split the train+val images that have detection rows; the
    # other ones (natural errors only) count as train images (unused)
    train_ids = np.setdiff1d(fitval_ids, val_ids)
    y_test, fam_test = data.y[test_rows], data.family[test_rows]
    best_per_attack = _roc_figure(
        out / "figures" / "roc_best_per_attack.png", y_test, fam_test, p1_rows, p1_scores,
        f"ResNet-{depth}, CIFAR-10 test split: best configuration per attack")
    figures = {"roc": "figures/roc_best_per_attack.png"}

    log("paper 2: kNN class scores")
    t0 = time.perf_counter()
    p2_rows, k, p2_t = _paper2(data, cfg, n_jobs, random_state, log)
    timings["paper 2 (kNN indexes and scores)"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    splits = {"train": train_ids, "val": val_ids, "test": test_ids}
    res = {
        "config": {
            "depth": depth, "weights": str(weights), "size": size, "device": device,
            "random_state": random_state, "n_jobs": n_jobs,
            **{k_: v for k_, v in cfg.items()},
            "deviations": _deviations(cfg, size, k),
            "note": note,
        },
        "machine": machine,
        "data": _data_summary(data, n_images, splits),
        "split": {name: ids.tolist() for name, ids in splits.items()},
        "paper1": {"columns": _FAMILY_NAMES + ["macro"], "eps_columns": _EPS_COLUMNS,
                   "rows": p1_rows,
                   "best_macro": max(p1_rows, key=lambda r: r["macro_auc"])["config"],
                   "best_per_attack": best_per_attack},
        "paper2": {"columns": _FAMILY_NAMES + ["aggregated", "natural_errors_flagged"],
                   "k": int(k),
                   "layers": list(data.layout.layer_names[-int(cfg["knn_layers"]):]),
                   "rows": p2_rows},
        "figures": figures,
        "timings": {**timings, **{f"- {k_}": v for k_, v in {**p1_t, **p2_t}.items()}},
    }
    # keep "total" last in the table
    res["timings"]["total"] = res["timings"].pop("total")
    _write(res, out, log)
    return res


_EPS_COLUMNS = _eps_columns()


def _check_weights_path(data_dir, depth, weights):
    if weights is None:
        return locate_weights(data_dir, depth)
    if not Path(weights).is_file():
        raise FileNotFoundError(
            f"weights file {str(weights)!r} does not exist: pass the path of the "
            f"ResNet-{depth} checkpoint (e.g. resnet{depth}-*.th)"
        )
    return weights


def _load_inputs(depth, weights, train_tar, test_tar, cfg, timings, log):
    from ..deep.data import load_image_folder
    from ..deep.models import cifar_resnet

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
    return model, ref_images, ref_labels, test_images, test_labels


def _build_set(model, ref_images, ref_labels, test_images, test_labels, cfg, device,
               random_state, progress, cache, timings, log):
    """The detection set, one attack family at a time.

    The cache under ``cache`` keeps what is done, so each call adds one
    family and an interrupted run resumes.
    """
    from ..deep.detection import build_detection_set

    specs = _attack_specs(cfg)
    labels = {name: family for family, name in FAMILIES}
    done, data = [], None
    for name in _BUILD_ORDER:
        done += [s for s in specs if s[0] == name]
        t0 = time.perf_counter()
        data = build_detection_set(
            model, ref_images, ref_labels, test_images, test_labels, attacks=list(done),
            layers="cifar_resnet", device=device, random_state=random_state,
            progress=progress, out_dir=cache)
        stage = f"attack {labels[name]}"
        if name == _BUILD_ORDER[0]:
            stage = f"features (reference + test) and {stage}"
        timings[stage] = time.perf_counter() - t0
        log(f"{stage}: {timings[stage]:.1f} s")
    data.family = np.where(data.y == 1, data.attack, "authentic")
    data.eps_key = np.array([_eps_key(f, e) if y else "authentic"
                             for f, e, y in zip(data.attack, data.eps, data.y)])
    return data


def _data_summary(data, n_images, splits):
    rows_in = {name: int(np.isin(data.groups, ids).sum()) for name, ids in splits.items()}
    on_test = np.isin(data.groups, splits["test"])
    adv_test = {f: int(np.sum(on_test & (data.family == f))) for f in _FAMILY_NAMES}
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
            "seconds": a.get("seconds"),
        })
    return {
        "n_ref": int(len(data.y_ref)),
        "n_test_images": int(n_images),
        "test_accuracy": float(data.test_accuracy),
        "n_authentic": int(np.sum(data.y == 0)),
        "n_adversarial": int(np.sum(data.y == 1)),
        "n_natural_errors": int(len(data.X_errors)),
        "layer_names": list(data.layout.layer_names),
        "attacks": attacks,
        "split": {
            "n_train_images": int(len(splits["train"])),
            "n_val_images": int(len(splits["val"])),
            "n_test_images": int(len(splits["test"])),
            "n_train_rows": rows_in["train"],
            "n_val_rows": rows_in["val"],
            "n_test_rows": rows_in["test"],
            "n_authentic_test_rows": int(np.sum(on_test & (data.y == 0))),
            "n_adversarial_test_rows": adv_test,
        },
    }


def _write(res, out, log):
    md = _markdown(res)
    with open(out / "results.md", "w") as f:
        f.write(md)
    with open(out / "results.json", "w") as f:
        json.dump(res, f, indent=1, default=_json_default)
    res["markdown"] = md
    res["paths"] = {"markdown": str(out / "results.md"), "json": str(out / "results.json"),
                    "roc": str(out / res["figures"]["roc"])}
    log(f"results written to {out / 'results.md'} (total {res['timings']['total']:.0f} s)")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
