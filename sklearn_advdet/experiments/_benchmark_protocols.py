"""Run the evaluation protocols of a benchmark, one cached cell at a time.

A *cell* is one (protocol, detector, split): the detector is fitted on the
split's training rows and scores its test rows.  The test scores are cached
under ``<out_dir>/cache/<protocol>/<detector>/<split>.npz`` (written to a
temporary file and renamed), so an interrupted benchmark recomputes only the
cells it had not finished.  The frozen leading steps of a detector (its
reference steps: pivots, kNN index, class means, a peer) give the same
features in every split: they are applied once to all rows and cached under
``<out_dir>/cache/features/<detector>.npz``; each cell fits the rest.
Detectors whose frozen steps are equal (a content hash) share those
features.  Splits that train on the same rows (the transfer matrix's row
A -> B, A -> C, ..., every split of the unseen protocol) share one fit: a
detector is fitted once per distinct training side, not once per cell.
"""

import os
import re
import tempfile
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import FeatureUnion, Pipeline

from .._progress import get_logger, progress
from ..evaluation.splitters import (AttackTransferSplit, CrossEpsilonSplit, LeaveOneAttackOut,
                                    UnseenAttackSplit)
from ._benchmark_detectors import detection_scores

__all__ = ["PROTOCOLS", "protocol_splits", "run_cells", "split_frozen"]

#: protocol names, in table order
PROTOCOLS = ("known", "unseen", "leave_one_attack_out", "cross_epsilon", "transfer")

#: families the "unseen" protocol trains on (the gradient-sign attacks a user can
#: generate cheaply); it tests on every other family
UNSEEN_TRAIN_ATTACKS = ("FGSM", "PGD")

_log = get_logger("benchmark")


def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))[:120] or "_"


class _Known:
    """Every attack on both sides: one GroupShuffleSplit of the source images."""

    def __init__(self, test_size, random_state):
        self.test_size = test_size
        self.random_state = random_state

    def split_names(self, y):
        return [("all", "all")]

    def split(self, X, y, groups):
        gss = GroupShuffleSplit(n_splits=1, test_size=self.test_size,
                                random_state=self.random_state)
        yield from gss.split(np.zeros((len(y), 1)), y, groups)


def protocol_splits(protocol, data, *, test_size, random_state):
    """``[(train_name, test_name, train_idx, test_idx)]`` of one protocol.

    Every protocol uses the same partition of the source images (the same
    ``GroupShuffleSplit`` draw), so their test images are the same.
    """
    common = dict(test_size=test_size, random_state=random_state)
    if protocol == "known":
        cv = _Known(**common)
    elif protocol == "unseen":
        present = {str(a).lower() for a in np.unique(data.attack[data.y == 1])}
        train = [a for a in UNSEEN_TRAIN_ATTACKS if a.lower() in present]
        if len(train) < len(UNSEEN_TRAIN_ATTACKS) or len(present) <= len(train):
            _log.info("unseen skipped: it trains on %s and tests on the other families",
                      "+".join(UNSEEN_TRAIN_ATTACKS))
            return []
        cv = UnseenAttackSplit(data.attack, train_attacks=train, **common)
    elif protocol == "leave_one_attack_out":
        cv = LeaveOneAttackOut(data.attack, **common)
    elif protocol == "transfer":
        cv = AttackTransferSplit(data.attack, **common)
    elif protocol == "cross_epsilon":
        eps = getattr(data, "eps", None)
        if eps is None or not np.any(np.isfinite(np.asarray(eps, dtype=float)[data.y == 1])):
            _log.info("cross_epsilon skipped: the data set has no eps per row")
            return []
        cv = CrossEpsilonSplit(eps, **common)
    else:
        raise ValueError(f"unknown protocol {protocol!r}: choose among {list(PROTOCOLS)}")
    names = cv.split_names(data.y)
    splits = list(cv.split(data.X, data.y, data.groups))
    return [(tr, te, a, b) for (tr, te), (a, b) in zip(names, splits)]


def _save_npz_atomic(path, **arrays):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _is_frozen(step):
    if isinstance(step, FrozenEstimator):
        return True
    return isinstance(step, FeatureUnion) and all(
        isinstance(t, FrozenEstimator) for _, t in step.transformer_list)


def split_frozen(estimator):
    """``(frozen prefix or None, trainable rest)`` of a detection estimator.

    The leading steps of a Pipeline that are frozen (fitted on the reference
    set: FrozenEstimator, or a FeatureUnion of them) give the same features
    in every split, so they are applied once to all rows.
    """
    if not isinstance(estimator, Pipeline):
        return None, estimator
    steps = estimator.steps
    n = 0
    while n < len(steps) - 1 and _is_frozen(steps[n][1]):
        n += 1
    if n == 0:
        return None, estimator
    rest = steps[n:]
    return Pipeline(steps[:n]), (rest[0][1] if len(rest) == 1 else Pipeline(rest))


def _from_cache(path, test, extra):
    """``(scores, extra scores)`` stored at ``path`` for these rows, or None."""
    if not path.exists():
        return None
    with np.load(path) as f:
        if not np.array_equal(f["test"], test):
            return None
        if extra is None:
            return f["scores"], None
        if "extra" in f.files and np.array_equal(f["extra"], extra):
            return f["scores"], f["extra_scores"]
    return None


class _LastFit:
    """The detector fitted on the most recent training rows, refitted when they change.

    The splits of a protocol that share a training side come one after the
    other (the transfer matrix row by row), so remembering one fit is enough
    and keeps a single fitted detector in memory.
    """

    def __init__(self, estimator, X, y):
        self.estimator, self.X, self.y = estimator, X, y
        self._train, self._fitted = None, None

    def __call__(self, train):
        if self._train is None or not np.array_equal(self._train, train):
            self._fitted = clone(self.estimator).fit(self.X[train], self.y[train])
            self._train = np.asarray(train).copy()
        return self._fitted


def _cell(cache, fitted, X, train, test, extra=None):
    """Test scores of one cell (and of the ``extra`` rows), cached or by fitting."""
    hit = _from_cache(cache, test, extra)
    if hit is not None:
        return hit
    est = fitted(train)
    scores = detection_scores(est, X[test])
    arrays = dict(test=test, scores=scores)
    extra_scores = None
    if extra is not None:
        extra_scores = detection_scores(est, X[extra])
        arrays.update(extra=extra, extra_scores=extra_scores)
    _save_npz_atomic(cache, **arrays)
    return scores, extra_scores


def _rows(data):
    """The detection rows, then the natural errors when the data set has them."""
    errors = data.get("X_errors")
    if errors is None or len(errors) == 0:
        return np.asarray(data.X)
    return np.vstack([np.asarray(data.X), np.asarray(errors, dtype=np.asarray(data.X).dtype)])


def _prefix_key(prefix):
    """Content hash of a fitted frozen prefix, or None when it cannot be hashed.

    Two detectors whose frozen steps are equal (make_detector's hybrid and
    supervised modes share their feature union) get the same key, so the
    features are computed once.  Equal keys mean equal fitted states, hence
    equal features; unequal keys only cost a recomputation.
    """
    import joblib

    try:
        return joblib.hash(prefix)
    except Exception:  # noqa: BLE001 - an unpicklable step: no sharing, nothing wrong
        return None


def _shared_features(features_dir, key, n_rows):
    """Features another detector of this cache computed from an equal prefix."""
    if key is None or not features_dir.is_dir():
        return None
    for other in sorted(features_dir.glob("*.npz")):
        with np.load(other) as f:
            if "key" in f.files and str(f["key"]) == key and f["Z"].shape[0] == n_rows:
                return f["Z"]
    return None


def _features_once(name, estimator, data, cache_dir):
    """The detector's input and trainable part: frozen steps applied once (cached).

    The input holds the detection rows and, after them, the natural errors.
    A detector whose frozen steps equal another's reuses its features.
    """
    prefix, rest = split_frozen(estimator)
    rows = _rows(data)
    if prefix is None:
        return rows, rest
    features_dir = Path(cache_dir) / "features"
    path = features_dir / f"{_slug(name)}.npz"
    if path.exists():
        with np.load(path) as f:
            if f["Z"].shape[0] == rows.shape[0]:
                return f["Z"], rest
    key = _prefix_key(prefix)
    Z = _shared_features(features_dir, key, rows.shape[0])
    if Z is None:
        Z = np.asarray(prefix.transform(rows))
    else:
        _log.info("%s: features shared with an equal detector's frozen steps", name)
    _save_npz_atomic(path, Z=Z, **({} if key is None else {"key": np.asarray(key)}))
    return Z, rest


def run_cells(protocol, splits, detectors, data, cache_dir, *, show_progress=False):
    """Scores of every (detector, split) of one protocol.

    The ``known`` protocol's detectors also score the natural errors
    (``data.X_errors``, the authentic test images the classifier gets
    wrong, never in any training side).

    Parameters
    ----------
    protocol : str
    splits : list of (train_name, test_name, train_idx, test_idx)
    detectors : dict of str to estimator
        Unfitted detection estimators (their reference steps frozen).
    data : Bunch
    cache_dir : Path

    Returns
    -------
    cells : dict of str to list of (train_name, test_name, test_idx, scores)
    natural_errors : dict of str to ndarray
        ``{detector: scores of data.X_errors}`` for ``known`` when the data
        set has natural errors, else empty.
    """
    out = {name: [] for name in detectors}
    n_errors = len(data.get("X_errors", ())) if protocol == "known" else 0
    extra = np.arange(len(data.y), len(data.y) + n_errors) if n_errors else None
    errors = {}
    bar = progress(len(splits) * len(detectors), enabled=show_progress,
                   desc=f"protocol {protocol}", unit="fit")
    with bar:
        for name, est in detectors.items():
            X, fitted = None, None
            for tr_name, te_name, train, test in splits:
                path = Path(cache_dir) / protocol / _slug(name) / (
                    f"{_slug(tr_name)}__{_slug(te_name)}.npz")
                hit = _from_cache(path, test, extra) if X is None else None
                if hit is None:
                    if X is None:
                        X, rest = _features_once(name, est, data, cache_dir)
                        fitted = _LastFit(rest, X, data.y)
                    hit = _cell(path, fitted, X, train, test, extra)
                scores, extra_scores = hit
                out[name].append((tr_name, te_name, test, scores))
                if extra_scores is not None:
                    errors[name] = extra_scores
                bar.update(1)
            _log.info("%s: %s done (%d splits)", protocol, name, len(splits))
    return out, errors
