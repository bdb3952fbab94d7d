"""The embedded default data set and loaders for feature stores.

:func:`load_digits_detection` builds a complete adversarial-detection data
set from scikit-learn's 8x8 digits on any machine, without downloads: it
trains a small CNN, extracts its pooled hidden-layer features, runs every
attack family of :mod:`sklearn_advdet.deep.attacks`, and caches the result
under the data home (see :func:`get_data_home`).  A warm load reads a few
``.npy`` files and never imports torch.

This module imports without torch; the cold build imports it lazily.
"""

import hashlib
import json
import os
import shutil
import tempfile
from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._layout import FeatureLayout

__all__ = [
    "get_data_home",
    "clear_data_home",
    "load_feature_store",
    "save_detection_set",
    "load_detection_set",
    "load_digits_detection",
    "DIGITS_DETECTION_CONFIG",
]

DATA_HOME_ENV = "SKLEARN_ADVDET_DATA_HOME"

#: Bumped whenever the build changes what it produces for the same arguments.
_CACHE_VERSION = 1
_CACHE_DIR = "digits_detection"
_META = "meta.json"


def get_data_home(data_home=None):
    """Folder where sklearn_advdet caches its data sets (created if missing).

    Parameters
    ----------
    data_home : str or path-like, default=None
        The folder.  None: the environment variable
        ``SKLEARN_ADVDET_DATA_HOME`` when set, else ``~/sklearn_advdet_data``.
        ``~`` is expanded.

    Returns
    -------
    data_home : str

    Examples
    --------
    >>> import os, tempfile
    >>> from sklearn_advdet.datasets import get_data_home
    >>> home = get_data_home(os.path.join(tempfile.mkdtemp(), "cache"))
    >>> os.path.isdir(home)
    True
    """
    if data_home is None:
        data_home = os.environ.get(DATA_HOME_ENV, os.path.join("~", "sklearn_advdet_data"))
    data_home = os.path.expanduser(os.fspath(data_home))
    os.makedirs(data_home, exist_ok=True)
    return data_home


def clear_data_home(data_home=None):
    """Delete all cached data sets (the whole data home folder).

    Parameters
    ----------
    data_home : str or path-like, default=None
        As for :func:`get_data_home`.
    """
    shutil.rmtree(get_data_home(data_home))


def load_feature_store(path, *, mmap_mode="r"):
    """Read a feature store written by the torch side (no torch needed).

    Parameters
    ----------
    path : str or path-like
        Store directory (written by
        :meth:`sklearn_advdet.deep.extraction.FeatureExtractor.extract_to_store`).
    mmap_mode : {"r", None}, default="r"
        Memory-map the per-layer arrays (``X`` itself is materialised).

    Returns
    -------
    data : sklearn.utils.Bunch
        X : ndarray of float32 (n_samples, n_features)
            Every layer, then the logits block (when the store has one).
        layer_sizes : FeatureLayout
            Column layout of ``X``: pass it to the estimators.
        layer_names : list of str
            Hooked module names.
        labels, predictions, logits : ndarray or None
            True classes (when stored), argmax of the logits, the logits.
        metadata : dict of ndarray
            Per-sample metadata arrays.
        store : FeatureStore
            The open store (per-layer access, manifest).

    Raises
    ------
    ValueError
        (``StoreError``) when the store is missing, incomplete or damaged.
    """
    from .deep.store import open_store

    store = open_store(path, mmap_mode=mmap_mode)
    layout = store.layout
    return Bunch(
        X=store.X,
        layer_sizes=layout,
        layer_names=layout.layer_names,
        labels=store.labels,
        predictions=store.predictions,
        logits=store.logits,
        metadata=store.metadata,
        store=store,
    )


_DETECTION_FILE = "detection_set.npz"
_DETECTION_ARRAYS = (
    "X_ref", "y_ref", "X", "y", "groups", "attack", "eps", "true_class",
    "pred_class", "X_errors", "errors_groups", "errors_true_class",
    "errors_pred_class",
)


def save_detection_set(data, path):
    """Write a detection set to ``path/detection_set.npz`` (atomically).

    Parameters
    ----------
    data : Bunch
        As returned by :func:`sklearn_advdet.deep.detection.build_detection_set`
        or :func:`load_digits_detection`.
    path : str or path-like
        Folder to write into (created if needed).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    missing = [k for k in _DETECTION_ARRAYS if k not in data]
    if missing:
        raise ValueError(f"not a detection set: it lacks {missing}")
    path.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(data[k]) for k in _DETECTION_ARRAYS}
    arrays["attack"] = arrays["attack"].astype("U")
    arrays["layout"] = np.array(json.dumps(data["layer_sizes"].to_dict()))
    final = path / _DETECTION_FILE
    tmp = path / (_DETECTION_FILE + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, final)
    return final


def load_detection_set(path):
    """Read a detection set written by :func:`save_detection_set` (no torch).

    ``advdet attack`` writes one; ``advdet fit`` and ``advdet evaluate`` read it.

    Parameters
    ----------
    path : str or path-like
        The folder (or the ``.npz`` file itself).

    Returns
    -------
    data : sklearn.utils.Bunch
        ``X_ref``, ``y_ref``, ``X``, ``y``, ``groups``, ``attack``, ``eps``,
        ``true_class``, ``pred_class``, the natural errors (``X_errors``,
        ``errors_*``) and ``layer_sizes`` (FeatureLayout).
    """
    path = Path(path)
    file = path / _DETECTION_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(
            f"{path} is not a detection set (no {_DETECTION_FILE}): write one with "
            "save_detection_set or `advdet attack ... --out DIR`"
        )
    try:
        with np.load(file, allow_pickle=False) as npz:
            out = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read detection set {file}: {exc}") from None
    missing = [k for k in _DETECTION_ARRAYS if k not in out]
    if missing or "layout" not in out:
        raise ValueError(f"{file} is not a complete detection set (it lacks {missing})")
    layout = FeatureLayout.from_dict(json.loads(str(out.pop("layout"))))
    return Bunch(layer_sizes=layout, layout=layout, **out)


# --------------------------------------------------------------- digits set
def _digits_attacks():
    """Attack configurations of the embedded set: (name, eps, params)."""
    attacks = []
    for eps in (0.05, 0.1, 0.2):
        attacks.append(("fgsm", eps, {}))
    for eps in (0.05, 0.1, 0.2):
        # Kurakin et al.'s 1/255 steps are meaningless on 17-level digits:
        # 10 steps of eps/5 instead
        attacks.append(("bim", eps, {"alpha": round(eps / 5, 6), "n_iter": 10}))
    for eps in (0.05, 0.1, 0.2):
        attacks.append(("pgd", eps, {}))
    for eps in (0.05, 0.1, 0.2):
        attacks.append(("mifgsm", eps, {}))
    attacks.append(
        ("lbfgs", None, {"max_images": 100, "binary_search_steps": 4, "max_iter": 30})
    )
    attacks.append(("gaussian_noise", 0.3, {}))
    attacks.append(("sign_noise", 0.2, {}))
    for eps in (0.2, 0.3):
        attacks.append(
            ("iterative_target_class", eps, {"alpha": round(eps / 10, 6), "n_iter": 20})
        )
    return attacks


#: Everything that determines the embedded data set (part of its cache key).
DIGITS_DETECTION_CONFIG = {
    "test_size": 0.5,
    "cnn_epochs": 30,
    "layers": ["conv1", "conv2", "conv3", "fc1"],
    "attacks": _digits_attacks(),
    "noise_attacks": ["gaussian_noise", "sign_noise"],
    "batch_size": 512,
}

_ARRAYS = (
    "X_ref", "y_ref", "X", "y", "groups", "attack", "eps", "true_class",
    "pred_class", "target", "X_errors", "errors_groups", "errors_true_class",
    "errors_pred_class", "train_index", "test_index",
)


def _cache_key(random_state):
    payload = json.dumps(
        {"version": _CACHE_VERSION, "random_state": random_state,
         "config": DIGITS_DETECTION_CONFIG},
        sort_keys=True,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return f"v{_CACHE_VERSION}-rs{random_state}-{digest}"


def _is_complete(path):
    meta = path / _META
    if not meta.is_file():
        return False
    try:
        with open(meta) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    return bool(info.get("complete")) and all(
        (path / f"{name}.npy").is_file() for name in _ARRAYS
    )


def _save_array(path, array):
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _write_cache(final, arrays, meta):
    """Write into a temporary sibling folder, then rename it into place."""
    parent = final.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=parent))
    try:
        for name in _ARRAYS:
            _save_array(tmp / f"{name}.npy", arrays[name])
        with open(tmp / _META, "w") as f:
            json.dump({**meta, "complete": True}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        if final.exists() and not _is_complete(final):
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            if not _is_complete(final):  # not another process's finished build
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_cache(path):
    with open(path / _META) as f:
        meta = json.load(f)
    arrays = {
        name: np.load(path / f"{name}.npy", allow_pickle=False) for name in _ARRAYS
    }
    layout = FeatureLayout.from_dict(meta["layout"])
    for name in ("X_ref", "X", "X_errors"):
        layout.check_n_features(arrays[name].shape[1])
    return Bunch(
        **arrays,
        layer_sizes=layout,
        layer_names=layout.layer_names,
        cnn_accuracy=float(meta["cnn_accuracy"]),
        attack_summary=meta["attack_summary"],
        DESCR=meta["DESCR"],
    )


def _build(random_state, progress):
    """Train, extract and attack: the arrays and metadata of the cache."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from .deep import detection as _detection
    from .deep import digits as _digits

    cfg = DIGITS_DETECTION_CONFIG
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    train_index, test_index = train_test_split(
        np.arange(labels.size), test_size=cfg["test_size"], stratify=labels,
        random_state=random_state,
    )
    train_index, test_index = np.sort(train_index), np.sort(test_index)
    # the model is tiny: one thread avoids synchronisation overhead (a lot of
    # it on a busy machine) and keeps the float results machine-independent
    with _digits.torch_threads(1):
        model = _digits.train_digits_cnn(
            images[train_index], labels[train_index], epochs=cfg["cnn_epochs"],
            random_state=random_state,
        )
        data = _detection.build_detection_set(
            model, images[train_index], labels[train_index],
            images[test_index], labels[test_index],
            attacks=cfg["attacks"], layers=cfg["layers"],
            noise_attacks=cfg["noise_attacks"], device="cpu",
            batch_size=cfg["batch_size"], random_state=random_state, progress=progress,
        )
    arrays = {name: data[name] for name in _ARRAYS if name in data}
    # ids of the source images in load_digits() rather than in the test part
    arrays["groups"] = test_index[data.groups]
    arrays["errors_groups"] = test_index[data.errors_groups]
    arrays["train_index"] = train_index
    arrays["test_index"] = test_index
    meta = {
        "version": _CACHE_VERSION,
        "random_state": random_state,
        "config": DIGITS_DETECTION_CONFIG,
        "layout": data.layout.to_dict(),
        "cnn_accuracy": data.test_accuracy,
        "attack_summary": data.attack_summary,
    }
    meta["DESCR"] = _describe(arrays, meta)
    return arrays, meta


def _describe(arrays, meta):
    layout = FeatureLayout.from_dict(meta["layout"])
    lines = [
        ".. _digits_detection:",
        "",
        "Adversarial detection on scikit-learn's digits",
        "-----------------------------------------------",
        "",
        "Built by ``sklearn_advdet.datasets.load_digits_detection`` "
        f"(random_state={meta['random_state']}, cache version {meta['version']}).",
        "",
        "A small CNN (``sklearn_advdet.deep.digits.DigitsCNN``) is trained on a "
        f"stratified half of ``sklearn.datasets.load_digits`` ({len(arrays['y_ref'])} "
        "images, pixel values / 16); its test accuracy on the other half "
        f"({len(arrays['test_index'])} images) is {meta['cnn_accuracy']:.4f}.",
        "",
        "Features: the globally average-pooled outputs of the blocks "
        f"{', '.join(layout.layer_names)} (sizes {list(layout.layer_sizes)}), "
        f"then the {layout.n_logits} logits; {layout.n_features} columns.",
        "",
        "- ``X_ref``, ``y_ref``: features and classes of the CNN's training images "
        "(the reference set for pivots and kNN).",
        "- ``X``, ``y``: the detection set. ``y = 0``: test images the CNN "
        "classifies correctly, plus the random-noise images that it still "
        "classifies correctly (their ``attack`` says which noise); ``y = 1``: "
        "the successful adversarial images (and the noise images it now gets wrong).",
        "- ``groups``: index in ``load_digits()`` of the source image (use it "
        "with GroupKFold); ``attack``, ``eps`` (NaN for authentic rows and "
        "L-BFGS), ``true_class``, ``pred_class`` (argmax of the logits block), "
        "``target`` (targeted attacks, else -1).",
        "- ``X_errors`` (+ ``errors_groups``, ``errors_true_class``, "
        "``errors_pred_class``): the natural errors, test images the CNN gets wrong.",
        "- ``train_index``, ``test_index``: the split of ``load_digits()``.",
        "",
        "Every attack runs on all correctly classified test images, except "
        "L-BFGS, which is slow and runs on a seeded random subset of 100 of them "
        "(4 values of its constant, at most 30 L-BFGS-B iterations each). BIM "
        "and the iterative target class attack take steps of eps/5 (10 steps) "
        "and eps/10 (20 steps): one pixel level (1/255) would be meaningless on "
        "17-level digits.",
        "",
        f"Rows: {len(arrays['y'])} ({int(np.sum(arrays['y'] == 0))} authentic, "
        f"{int(np.sum(arrays['y']))} adversarial); {len(arrays['X_errors'])} "
        "natural errors.",
        "",
        "=========================  =====  ========  ========  ===========  =========",
        "attack                     eps    attacked  success   adversarial  authentic",
        "=========================  =====  ========  ========  ===========  =========",
    ]
    for s in meta["attack_summary"]:
        eps = "-" if s["eps"] is None else f"{s['eps']:g}"
        lines.append(
            f"{s['attack']:<25}  {eps:<5}  {s['n_attacked']:<8}  {s['n_success']:<8}  "
            f"{s['n_adversarial']:<11}  {s['n_authentic']:<9}"
        )
    lines.append(lines[-len(meta["attack_summary"]) - 3])
    return "\n".join(lines) + "\n"


def load_digits_detection(
    *,
    data_home=None,
    refresh=False,
    build_if_missing=True,
    random_state=0,
    progress=False,
):
    """Adversarial-detection data set built from scikit-learn's digits.

    The first call trains a small CNN on half of
    :func:`sklearn.datasets.load_digits`, extracts its pooled hidden-layer
    features and logits, attacks the correctly classified test images with
    FGSM, BIM, PGD, MI-FGSM (eps 0.05, 0.1, 0.2), L-BFGS, Gaussian and sign
    noise and the iterative target class attack, and caches the result under
    ``get_data_home(data_home)`` (well under a minute on two CPU cores; the
    cache is a few MB).  Later calls load the cache without importing torch.
    The cache is written to a temporary folder and renamed into place, so an
    interrupted build never leaves a cache that looks complete.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Cache folder, see :func:`get_data_home`.
    refresh : bool, default=False
        Rebuild even when a cached copy exists.
    build_if_missing : bool, default=True
        Build the data set when it is not cached; when False, raise an
        OSError instead.
    random_state : int, default=0
        Seeds the train/test split, the CNN's training and the attacks; part
        of the cache key.
    progress : bool, default=False
        Show progress bars while building.

    Returns
    -------
    data : sklearn.utils.Bunch
        X_ref, y_ref : reference features and class labels (the CNN's
        training images).
        X, y : detection set (``y = 1`` adversarial).
        groups, attack, eps, true_class, pred_class, target : per-row
        metadata (``groups`` = index of the source image in ``load_digits()``).
        X_errors, errors_groups, errors_true_class, errors_pred_class : the
        natural errors.
        layer_sizes : FeatureLayout of the columns (logits block last).
        layer_names : hooked module names.
        cnn_accuracy : the CNN's test accuracy.
        attack_summary : per attack configuration, counts of attacked,
        successful and kept images.
        train_index, test_index : the split of ``load_digits()``.
        DESCR : description of the data set.

    Examples
    --------
    >>> from sklearn_advdet.datasets import load_digits_detection
    >>> data = load_digits_detection()  # doctest: +SKIP
    >>> data.X.shape[1] == data.layer_sizes.n_features  # doctest: +SKIP
    True
    """
    if isinstance(random_state, bool) or not isinstance(random_state, Integral):
        raise ValueError(
            "random_state must be an int: it is part of the cache key of the "
            f"data set, got {random_state!r}"
        )
    random_state = int(random_state)
    parent = Path(get_data_home(data_home)) / _CACHE_DIR
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / _cache_key(random_state)
    if not refresh and _is_complete(final):
        try:
            return _load_cache(final)
        except (OSError, ValueError, KeyError):
            if not build_if_missing:
                raise
            # damaged cache: build it again below
    if not build_if_missing:
        raise OSError(
            f"the digits detection data set is not cached in {parent}: call "
            "load_digits_detection(build_if_missing=True) to build it"
        )
    arrays, meta = _build(random_state, progress)
    if final.exists():
        shutil.rmtree(final)
    _write_cache(final, arrays, meta)
    return _load_cache(final)
