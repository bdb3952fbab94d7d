"""Benchmark every detector under every evaluation protocol, with intervals.

:func:`run_benchmark` is what ``advdet benchmark`` runs: from a model and
images (or a CIFAR ResNet depth, its weights and the data folder) it builds
the detection set once with the torch side's attack-set builder (features
extracted once, resumable feature stores under ``<out_dir>/detection_set``)
and hands it to :func:`run_benchmark_on_detection_set`, the torch-free part:

1. fit the reference steps of every detector once (papers' methods, new
   compositions, the default detector, the peers: see
   :data:`~sklearn_advdet.experiments._benchmark_detectors.DETECTORS`);
2. for every protocol (``known``, ``unseen``, ``leave_one_attack_out``,
   ``cross_epsilon``, ``transfer``; one partition of the source images for
   all) fit each detector on each split's training rows and score its test
   rows, caching each cell's scores under ``<out_dir>/cache``;
3. write ``results.md``, ``results.json`` (every figure with its bootstrap
   interval over source images) and ``figures/`` (ROC per attack per
   detector; train x test AUC heat map per detector for the transfer and
   cross-epsilon protocols).

An interrupted run started again with the same arguments and ``out_dir``
reuses every finished cell (and every finished attack of the detection set).
"""

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from .._layout import FeatureLayout
from .._progress import get_logger
from ..evaluation.report import write_text_atomic
from ._benchmark_detectors import DETECTORS, resolve_detectors
from ._benchmark_protocols import PROTOCOLS, protocol_splits, run_cells
from ._benchmark_report import markdown, summarise, write_figures

__all__ = ["run_benchmark", "run_benchmark_on_detection_set", "PROTOCOLS", "DETECTORS",
           "DEFAULT_ATTACKS", "DEFAULT_TRANSFER_ATTACKS"]

_log = get_logger("benchmark")

#: attack families of :func:`run_benchmark` when ``attacks=None`` (eps in [0, 1]):
#: gradient-sign attacks at 4 and 8/255, L-BFGS, and the minimal-perturbation
#: attacks (CW-L2, DeepFool) with APGD-CE, the ones the papers' detectors miss
DEFAULT_ATTACKS = [
    ("fgsm", [4 / 255, 8 / 255]),
    ("pgd", [4 / 255, 8 / 255]),
    ("bim", [8 / 255]),
    ("mifgsm", [8 / 255]),
    ("lbfgs", None, {"max_images": 100, "binary_search_steps": 2, "max_iter": 20}),
    ("cw_l2", None, {"max_images": 300}),
    ("deepfool", None),
    ("apgd", [8 / 255]),
]


#: attacks crafted on a second network (``source_depth`` / ``source_model``)
#: and applied to the benchmarked one: the gradient attacks that transfer best
DEFAULT_TRANSFER_ATTACKS = [
    ("fgsm", [8 / 255]),
    ("pgd", [8 / 255]),
    ("mifgsm", [8 / 255]),
]


def _check_data(data):
    missing = [k for k in ("X", "y", "attack", "groups", "X_ref", "y_ref") if k not in data]
    if missing:
        raise ValueError(
            f"the detection set lacks {missing}: pass what load_digits_detection() or "
            "build_detection_set() return (X, y, attack, groups, X_ref, y_ref, layout)"
        )
    layout = data.get("layout", data.get("layer_sizes"))
    if layout is None:
        raise ValueError("the detection set needs its FeatureLayout (layout= or layer_sizes=)")
    if not isinstance(layout, FeatureLayout):
        layout = FeatureLayout(layout)
    return layout


def _protocols(protocols):
    if protocols is None:
        return list(PROTOCOLS)
    protocols = [protocols] if isinstance(protocols, str) else list(protocols)
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown!r}: choose among {list(PROTOCOLS)}")
    return protocols


def _data_digest(data):
    """sha256 state of the detection rows, to be completed with the settings."""
    h = hashlib.sha256()
    for key in ("X", "y", "groups"):
        h.update(np.ascontiguousarray(data[key]))  # the buffer, without a copy
    h.update(np.asarray(data["attack"]).astype(str).tobytes())
    return h


def _reference_digest(data):
    """sha256 of the reference set the detectors' frozen steps are fitted on."""
    h = hashlib.sha256()
    for key in ("X_ref", "y_ref"):
        h.update(np.ascontiguousarray(data[key]))
    return h.hexdigest()[:16]


def _fingerprint(data, settings, digest=None):
    """Fingerprint of the cells; ``digest``: ``_data_digest(data)``, when at hand."""
    h = (digest if digest is not None else _data_digest(data)).copy()
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _check_cache(cache, fingerprint, legacy=(), reference=None):
    """Refuse a cache made from other data, settings or reference set.

    ``legacy``: older fingerprints of the same cells (accepted, and the
    manifest updated); ``reference``: ``_reference_digest(data)``, kept
    beside the fingerprint (the cells' scores depend on the reference set
    through the fitted kNN, LID and Mahalanobis steps).  A cache written
    before the reference was recorded is accepted with a warning and the
    reference added.
    """
    manifest = cache / "manifest.json"
    new = {"fingerprint": fingerprint, "reference": reference}
    if not manifest.exists():
        write_text_atomic(manifest, json.dumps(new))
        return
    old = json.loads(manifest.read_text())
    if old.get("fingerprint") != fingerprint and old.get("fingerprint") not in legacy:
        raise ValueError(
            f"{cache} holds cells of another data set or other settings "
            f"(fingerprint {old.get('fingerprint')} != {fingerprint}): pass another "
            "out_dir or delete that cache folder"
        )
    stored = old.get("reference")
    if stored is not None and reference is not None and stored != reference:
        raise ValueError(
            f"{cache} holds cells scored by detectors fitted on another reference set "
            f"({stored} != {reference}; e.g. another ref_per_class): pass another "
            "out_dir or delete that cache folder"
        )
    if stored is None and reference is not None:
        _log.warning("%s was written before its reference set was recorded: assumed to "
                     "be the same reference set (delete the folder if it is not)", cache)
    if old != new:
        write_text_atomic(manifest, json.dumps(new))


def _fit_reference_steps(chosen, layout, data, settings):
    built, seconds = {}, {}
    for name, (_, factory) in chosen.items():
        t0 = time.perf_counter()
        built[name] = factory(layout, np.asarray(data["X_ref"]), np.asarray(data["y_ref"]),
                              settings)
        seconds[name] = time.perf_counter() - t0
    return built, seconds


def _summary_text(data, layout, settings, timings):
    fams = sorted(set(np.asarray(data["attack"])[np.asarray(data["y"]) == 1]))
    return (f"{len(data['y'])} rows ({int(np.sum(data['y']))} adversarial) from "
            f"{len(np.unique(data['groups']))} source images; {len(data['y_ref'])} reference "
            f"rows; layout {list(layout.sizes)} (logits: {layout.has_logits}); attacks: "
            f"{', '.join(fams)}. Test side: {settings['test_size']} of the source images "
            f"(the same for every protocol); intervals: {settings['n_bootstrap']} bootstrap "
            f"resamples of source images. Benchmark time (detection set excluded) "
            f"{timings['total']:.1f} s.\n")


def run_benchmark_on_detection_set(data, out_dir, *, detectors=None, protocols=None,
                                   n_bootstrap=1000, test_size=0.3, max_epochs=30,
                                   random_state=0, n_jobs=None, progress=False):
    """Every detector under every protocol on a detection set (no torch needed).

    Parameters
    ----------
    data : dict or Bunch
        ``X``, ``y``, ``attack``, ``groups``, ``X_ref``, ``y_ref``, the
        ``layout`` (or ``layer_sizes``) and optionally ``eps`` (needed by
        the cross-epsilon protocol), as returned by
        :func:`~sklearn_advdet.load_digits_detection` or
        :func:`~sklearn_advdet.deep.attack_sets.build_detection_set`.
    out_dir : str or path-like
        Where ``results.md``, ``results.json``, ``figures/`` and the cell
        cache ``cache/`` go.
    detectors : list of str or dict of str to callable, default=None
        Names from ``DETECTORS`` (None = ``DEFAULT_DETECTORS``: all but
        ``"pivots_lstm"``), or ``{name: factory}`` with
        ``factory(layout, X_ref, y_ref, settings)`` returning an unfitted
        detection estimator.
    protocols : list of str, default=None
        Among ``PROTOCOLS`` (None = all).
    n_bootstrap : int, default=1000
        Bootstrap resamples of the intervals.
    test_size : float, default=0.3
        Share of the source images on the test side.
    max_epochs : int, default=30
        Training epochs of the papers' neural detectors.
    random_state : int, default=0
    n_jobs : int, default=None
        Workers of the reference steps (kNN search) and of the reports'
        bootstrap (one joblib task per protocol and detector); the results do
        not depend on it.
    progress : bool, default=False
        One progress bar per protocol.

    Returns
    -------
    dict
        The content of ``results.json`` plus ``"paths"`` (the files written).
    """
    t0 = time.perf_counter()
    layout = _check_data(data)
    from sklearn.utils import Bunch

    data = Bunch(**{k: data[k] for k in data})
    for key in ("y", "groups", "attack"):
        data[key] = np.asarray(data[key])
    data.attack = data.attack.astype(str)
    chosen = resolve_detectors(detectors)
    protocols = _protocols(protocols)
    settings = {"test_size": test_size, "random_state": random_state, "n_bootstrap": n_bootstrap,
                "max_epochs": max_epochs, "n_jobs": n_jobs, "detectors": sorted(chosen)}
    out = Path(out_dir)
    # cells are kept per detector name: adding a detector to a finished run
    # reuses the others' cells, so the detector list is not in the fingerprint;
    # nor is n_jobs, which changes no score (caches written while it was are
    # accepted under their old fingerprint)
    kept = {k: v for k, v in settings.items() if k not in ("n_bootstrap", "detectors")}
    digest = _data_digest(data)  # the rows are hashed once for both fingerprints
    _check_cache(out / "cache",
                 _fingerprint(data, {k: v for k, v in kept.items() if k != "n_jobs"}, digest),
                 legacy=(_fingerprint(data, kept, digest),), reference=_reference_digest(data))
    built, timings = _fit_reference_steps(chosen, layout, data, settings)
    cells, natural = {}, {}
    for protocol in protocols:
        splits = protocol_splits(protocol, data, test_size=test_size, random_state=random_state)
        if splits:
            cells[protocol], errors = run_cells(protocol, splits, built, data, out / "cache",
                                                show_progress=progress)
            natural.update(errors)
    results = summarise(cells, data, n_bootstrap=n_bootstrap, random_state=random_state,
                        natural_errors=natural, n_jobs=n_jobs)
    timings["total"] = time.perf_counter() - t0
    groups = {name: group for name, (group, _) in chosen.items()}
    figures = write_figures(cells, results, data, out / "figures")
    doc = {"settings": settings, "detectors": groups, "results": results,
           "reference_fit_seconds": timings}
    write_text_atomic(out / "results.json", json.dumps(doc, indent=1, default=float))
    write_text_atomic(out / "results.md", markdown(
        results, _summary_text(data, layout, settings, timings), groups))
    _log.info("benchmark written to %s (%.1f s)", out, timings["total"])
    doc["paths"] = [str(out / "results.md"), str(out / "results.json")] + [str(p) for p in figures]
    return doc


def run_benchmark(model=None, ref_images=None, ref_labels=None, test_images=None,
                  test_labels=None, *, depth=None, weights=None, data_dir=None,
                  out_dir="advdet-benchmark", attacks=None, layers="auto",
                  ref_per_class=None, test_per_class=150, detectors=None, protocols=None,
                  n_bootstrap=1000, test_size=0.3, max_epochs=30, device="auto",
                  random_state=0, n_jobs=None, progress=False, source_model=None,
                  source_depth=None, source_name=None, transfer_attacks=None):
    """Attack a model, extract features once, and benchmark every detector.

    Either pass ``model`` with ``ref_images``/``ref_labels`` (its training
    images, floats in [0, 1], NCHW) and ``test_images``/``test_labels``, or
    a CIFAR ResNet ``depth`` with ``data_dir`` (the folder holding
    ``cifar10-jpeg/`` and ``weights/``, see
    :func:`~sklearn_advdet.experiments.reproduce.locate_cifar_tars`) and
    optionally ``weights``.

    Parameters
    ----------
    model : torch.nn.Module, default=None
    ref_images, ref_labels, test_images, test_labels : arrays, default=None
    depth : int, default=None
        CIFAR ResNet depth (20, 32, 44, 56, 110) when no model is given.
    weights : str or path-like, default=None
        Weights file (default: located under ``data_dir``).
    data_dir : str or path-like, default=None
    out_dir : str or path-like, default="advdet-benchmark"
        Detection set stores (``detection_set/``), cell cache, tables, figures.
    attacks : list, default=None
        Attack configurations for :func:`~sklearn_advdet.deep.attack_sets.parse_attacks`
        (default :data:`DEFAULT_ATTACKS`).
    layers : "auto", preset name or list of str, default="auto"
        Hooked modules (``"cifar_resnet"`` is used with ``depth``).
    ref_per_class, test_per_class : int or None, default=None, 150
        Images per class read from the CIFAR tars (None = all).
    detectors, protocols, n_bootstrap, test_size, max_epochs, random_state, n_jobs, progress
        As in :func:`run_benchmark_on_detection_set`.
    device : "auto", str or torch.device, default="auto"
        Where attacks and extraction run.
    source_model : torch.nn.Module, default=None
        A second network: ``transfer_attacks`` are crafted on it and applied
        to the benchmarked model (black-box transfer), and their successful
        rows join the detection set as families named ``"<attack> from
        <source_name>"`` (their ``eps`` is NaN: the cross-epsilon protocol
        keeps to the white-box attacks).
    source_depth : int, default=None
        With ``data_dir``: a CIFAR ResNet of this depth (weights found under
        ``data_dir``) as ``source_model``.
    source_name : str, default=None
        Its name in the attack labels (default ``"resnet<source_depth>"`` or
        ``"source"``).
    transfer_attacks : list, default=None
        Attack configurations crafted on the source (default
        :data:`DEFAULT_TRANSFER_ATTACKS`).

    Returns
    -------
    dict
        As :func:`run_benchmark_on_detection_set`.
    """
    model, ref_images, ref_labels, test_images, test_labels, layers = _inputs(
        model, ref_images, ref_labels, test_images, test_labels, depth, weights, data_dir,
        layers, ref_per_class, test_per_class)
    data = _detection_set(model, ref_images, ref_labels, test_images, test_labels,
                          attacks if attacks is not None else DEFAULT_ATTACKS, layers,
                          device, random_state, progress, Path(out_dir) / "detection_set")
    source_model, source_name = _source(source_model, source_depth, source_name, data_dir)
    if source_model is not None:
        transfer = _detection_set(
            model, ref_images, ref_labels, test_images, test_labels,
            transfer_attacks if transfer_attacks is not None else DEFAULT_TRANSFER_ATTACKS,
            layers, device, random_state, progress,
            Path(out_dir) / f"detection_set_from_{source_name}", source_model=source_model)
        data = _with_transfer_rows(data, transfer, source_name)
    return run_benchmark_on_detection_set(
        data, out_dir, detectors=detectors, protocols=protocols, n_bootstrap=n_bootstrap,
        test_size=test_size, max_epochs=max_epochs, random_state=random_state,
        n_jobs=n_jobs, progress=progress)


def _inputs(model, ref_images, ref_labels, test_images, test_labels, depth, weights,
            data_dir, layers, ref_per_class, test_per_class):
    if model is not None:
        if any(a is None for a in (ref_images, ref_labels, test_images, test_labels)):
            raise ValueError(
                "with a model, pass ref_images, ref_labels (its training images) and "
                "test_images, test_labels (the images to attack)"
            )
        return model, ref_images, ref_labels, test_images, test_labels, layers
    if depth is None or data_dir is None:
        raise ValueError(
            "pass either model= with its images, or depth= (a CIFAR ResNet) and "
            "data_dir= (the folder holding cifar10-jpeg/ and weights/)"
        )
    from ..deep.data import load_image_folder
    from ..deep.models import cifar_resnet
    from .reproduce import locate_cifar_tars, locate_weights

    train_tar, test_tar = locate_cifar_tars(data_dir)
    model = cifar_resnet(depth, weights if weights is not None else
                         locate_weights(data_dir, depth))
    ref_u8, ref_labels, _ = load_image_folder(train_tar, per_class=ref_per_class)
    test_u8, test_labels, _ = load_image_folder(test_tar, per_class=test_per_class)
    return (model, ref_u8.astype(np.float32) / 255.0, ref_labels,
            test_u8.astype(np.float32) / 255.0, test_labels,
            "cifar_resnet" if layers == "auto" else layers)


def _detection_set(model, ref_images, ref_labels, test_images, test_labels, attacks,
                   layers, device, random_state, progress, store_dir, source_model=None):
    from ..deep.attack_sets import build_detection_set

    _log.info("building the detection set under %s", store_dir)
    return build_detection_set(model, ref_images, ref_labels, test_images, test_labels,
                               attacks=attacks, layers=layers, device=device,
                               random_state=random_state, progress=progress,
                               out_dir=store_dir, source_model=source_model)


def _source(source_model, source_depth, source_name, data_dir):
    """``(source model, its name)`` of a transfer run, or ``(None, None)``."""
    if source_model is None and source_depth is None:
        return None, None
    if source_model is None:
        if data_dir is None:
            raise ValueError("source_depth= needs data_dir= (its weights are found there); "
                             "or pass source_model=")
        from ..deep.models import cifar_resnet
        from .reproduce import locate_weights

        source_model = cifar_resnet(source_depth, locate_weights(data_dir, source_depth))
    name = source_name or (f"resnet{source_depth}" if source_depth else "source")
    return source_model.eval(), str(name)


def _with_transfer_rows(data, transfer, source_name):
    """``data`` plus the adversarial rows of ``transfer``, families renamed."""
    from sklearn.utils import Bunch

    keep = np.asarray(transfer.y) == 1
    n = len(data.y)
    out = Bunch(**data)
    for key, value in data.items():
        if isinstance(value, np.ndarray) and value.shape[:1] == (n,) and key in transfer:
            extra = np.asarray(transfer[key])[keep]
            if key == "attack":
                extra = np.char.add(extra.astype(str), f" from {source_name}")
            elif key == "eps":
                extra = np.full(extra.shape, np.nan)
            out[key] = np.concatenate([value, extra])
    out.attack_summary = list(data.get("attack_summary", [])) + [
        dict(s, attack=f"{s['attack']} from {source_name}")
        for s in transfer.get("attack_summary", [])]
    _log.info("transfer attacks from %s: %d rows added", source_name, int(keep.sum()))
    return out
