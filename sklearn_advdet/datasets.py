"""Cached data sets and loaders for feature stores and detection sets (no torch).

The data home (:func:`get_data_home`), feature stores as ``(X, y, layout)``
(:func:`load_feature_store`), saved detection sets, and the cache format of
the embedded digits data set, whose builder (it trains a CNN and attacks it)
lives on the torch side, :func:`sklearn_advdet.load_digits_detection`.
"""

import json
import os
import shutil
import tempfile
import zipfile
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
]

DATA_HOME_ENV = "SKLEARN_ADVDET_DATA_HOME"

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
        layout : FeatureLayout
            Column layout of ``X`` (logits block last): pass it to the
            estimators as ``layer_sizes``; ``layer_sizes`` is the same object.
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
    from .store import open_store

    store = open_store(path, mmap_mode=mmap_mode)
    layout = store.layout
    return Bunch(
        X=store.X,
        layout=layout,
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
        # the file handle is ours: np.load leaks it on a damaged archive
        with open(file, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
            out = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read detection set {file}: {exc}") from None
    missing = [k for k in _DETECTION_ARRAYS if k not in out]
    if missing or "layout" not in out:
        raise ValueError(f"{file} is not a complete detection set (it lacks {missing})")
    layout = FeatureLayout.from_dict(json.loads(str(out.pop("layout"))))
    return Bunch(layer_sizes=layout, layout=layout, **out)


# ------------------------------------------------------ cached data sets
_ARRAYS = (
    "X_ref", "y_ref", "X", "y", "groups", "attack", "eps", "true_class",
    "pred_class", "target", "X_errors", "errors_groups", "errors_true_class",
    "errors_pred_class", "train_index", "test_index",
)


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
        layout=layout,
        layer_sizes=layout,
        layer_names=layout.layer_names,
        cnn_accuracy=float(meta["cnn_accuracy"]),
        attack_summary=meta["attack_summary"],
        DESCR=meta["DESCR"],
    )




_MOVED = {"load_digits_detection", "DIGITS_DETECTION_CONFIG"}


def __getattr__(name):
    # deprecated path (the docs named it): the builder needs torch and lives
    # on the torch side now; kept one release
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(
            f"sklearn_advdet.datasets.{name} moved: use sklearn_advdet.{name} "
            f"(defined in sklearn_advdet.deep.digits_detection); the old path goes "
            "in the next release",
            FutureWarning, stacklevel=2,
        )
        return getattr(importlib.import_module("sklearn_advdet.deep.digits_detection"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
