"""Build adversarial-detection data sets from a model and labelled images.

:func:`build_detection_set` turns a classifier, its training images (the
*reference* set) and a set of labelled test images into what the detectors of
:mod:`sklearn_advdet` consume:

* the reference features ``X_ref`` (pooled hidden layers + logits) with the
  class labels ``y_ref``: what :class:`~sklearn_advdet.PivotEmbedder` and
  :class:`~sklearn_advdet.KNNClassScorer` are fitted on;
* the detection set ``X``/``y``: the authentic test images that the model
  classifies correctly (``y = 0``) and the successful adversarial versions of
  them produced by every configured attack and epsilon (``y = 1``), with
  per-row metadata: the source test image (``groups``, for
  :class:`~sklearn.model_selection.GroupKFold`), the attack name, epsilon,
  true class, predicted class and (targeted attacks) target class;
* the natural errors: the authentic test images that the model gets wrong,
  kept apart (``X_errors`` and their metadata) for the kNN paper's "errors"
  column.

Random-noise "attacks" (``gaussian_noise``, ``sign_noise``) are treated as in
Carrara et al.: every noisy image is kept; those the model still classifies
correctly are authentic (``y = 0``, their ``attack`` column still names the
noise and ``eps`` its budget), those it now gets wrong are adversarial
(``y = 1``).
"""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.utils import Bunch, check_random_state

from .._device import resolve_device
from .._progress import get_logger
from ..store import (StoreBusyError, StoreError, _atomic_write_json, array_digest,
                     open_store)
from ._checks import as_tensor, check_images, check_labels
from .attack_specs import (_SEED_MAX, NOISE_ATTACKS, AttackSpec, _jsonable, _spec_seed,
                           parse_attacks)
from .attacks import ATTACKS, run_attack
from .extraction import FeatureExtractor

__all__ = ["AttackSpec", "NOISE_ATTACKS", "build_detection_set", "parse_attacks"]

_log = get_logger("attack_sets")


def _as_images(images, name):
    """Float32 numpy images, checked in full before anything runs or is written."""
    images = check_images(images, name=name)  # floats in [0, 1], NCHW, finite
    if images.shape[0] == 0:
        raise ValueError(f"{name} holds no images")
    return np.ascontiguousarray(images.detach().cpu().to(torch.float32).numpy())


def _as_labels(labels, n, name):
    """Int64 numpy class indices >= 0, one per image."""
    labels = as_tensor(labels, name)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{name} must have one class label per image, shape ({n},), got "
            f"{tuple(labels.shape)}"
        )
    return check_labels(labels, n, name=name).cpu().numpy()


# -------------------------------------------------------------- the stores
def _safe(text):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _source_correct(source_model, images, labels, device, batch_size):
    """Where ``source_model`` classifies ``images`` correctly."""
    dev = resolve_device(device)
    was = next(iter(source_model.parameters()), torch.empty(0)).device
    preds = []
    source_model.eval().to(dev)
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = as_tensor(images[i:i + batch_size]).to(dev)
                preds.append(source_model(x).argmax(1).cpu().numpy())
    finally:
        source_model.to(was)
    return np.concatenate(preds) == labels


def _check_build_dir(root, ref_images, ref_labels, test_images, test_labels, layers,
                     base_seed, source_model=None):
    """Refuse to resume a build of ``out_dir`` made from other inputs."""
    build = {
        "format": "sklearn_advdet.detection_set",
        "version": 1,
        "reference": array_digest(ref_images, ref_labels),
        "test": array_digest(test_images, test_labels),
        "layers": _jsonable(layers),
        "seed": base_seed,
    }
    if source_model is not None:  # absent otherwise: earlier builds stay valid
        from .sources import model_digest

        build["source_model"] = model_digest(source_model)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "build.json"
    if path.exists():
        old = _read_json(path)
        if old != build:
            diff = sorted(k for k in set(build) | set(old) if old.get(k) != build.get(k))
            raise ValueError(
                f"{root} holds a detection set built from other inputs "
                f"(differs in {diff}): pass an empty out_dir, or the same images, "
                "layers, source_model and int random_state to resume"
            )
    else:
        _atomic_write_json(path, build)
    (root / "attacks").mkdir(exist_ok=True)


class _Features:
    """Features of one image set, from memory or from a store."""

    def __init__(self, X, layout, predictions, labels=None, metadata=None):
        self.X = X
        self.layout = layout
        self.predictions = predictions
        self.labels = labels
        self.metadata = metadata or {}


def _extract(extractor, images, labels, path, metadata, source, nested=False):
    """Features of ``images`` in memory, or through a resumable store at ``path``.

    ``nested``: one step inside an attack's stage (its bar is not left behind).
    """
    desc = f"extract {source}"
    if path is None:
        feats = extractor.extract(images, labels=labels, nested=nested, desc=desc)
        return _Features(feats.X, feats.layout, feats.predictions, feats.labels,
                         {k: np.asarray(v) for k, v in (metadata or {}).items()})
    kwargs = dict(labels=labels, metadata=metadata, source=source, nested=nested,
                  desc=desc)
    try:  # resumes (or reopens) the store; its fingerprint must match the images
        store = extractor.extract_to_store(images, path, resume=True, **kwargs)
    except StoreBusyError:
        raise  # another live process is writing it: never delete its work
    except StoreError as exc:
        # out_dir's build.json matched, so this store is damaged or stale: redo it
        _log.warning("%s: %s; extracting it again", path, exc)
        shutil.rmtree(path, ignore_errors=True)
        store = extractor.extract_to_store(images, path, resume=False, **kwargs)
    return _Features(store.X, store.layout, np.asarray(store.predictions),
                     None if store.labels is None else np.asarray(store.labels),
                     {k: np.asarray(v) for k, v in store.metadata.items()})


def build_detection_set(
    model,
    ref_images,
    ref_labels,
    test_images,
    test_labels,
    *,
    attacks,
    layers="auto",
    noise_attacks=NOISE_ATTACKS,
    device="auto",
    batch_size=256,
    random_state=None,
    progress=False,
    out_dir=None,
    source_model=None,
):
    """Reference features and an adversarial-detection set for ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier taking images in [0, 1] and returning logits.
    ref_images : ndarray or Tensor of shape (n_ref, C, H, W)
        The classifier's training images (floats in [0, 1]).
    ref_labels : array-like of shape (n_ref,)
        Their classes.
    test_images : ndarray or Tensor of shape (n_test, C, H, W)
        Images the detection set is built from; ``groups`` are indices into
        this array.
    test_labels : array-like of shape (n_test,)
        Their true classes.
    attacks : list or dict
        Attack configurations, see :func:`parse_attacks`; e.g.
        ``[("fgsm", [0.05, 0.1]), ("lbfgs", None, {"max_images": 100})]``.
        Every attack runs on the test images the model classifies correctly
        (or a random subset of them, ``max_images``).
    layers : "auto", preset name or list of str, default="auto"
        Modules to hook, see
        :func:`sklearn_advdet.deep.extraction.resolve_layers`.
    noise_attacks : sequence of str, default=("gaussian_noise", "sign_noise")
        Attacks treated as random noise: all their images are kept, with
        ``y = 0`` where the prediction stays correct.
    device : "auto", str or torch.device, default="auto"
        Where attacks and extraction run.
    batch_size : int, default=256
        Images per batch for attacks and extraction.
    random_state : int, RandomState or None, default=None
        Seeds the attacks (each configuration gets its own seed derived from
        this one and the configuration, so adding a configuration does not
        change the others) and the ``max_images`` subsets.
    progress : bool, default=False
        Show progress bars.
    out_dir : str or path-like, default=None
        When given, write every feature set into feature stores under this
        directory (``reference/``, ``test/`` and ``attacks/<config>/``, each
        attack with an ``attack.json`` written once its store is complete)
        and read them back from there.  A build that is interrupted and
        started again with the same arguments keeps the finished attacks and
        stores and computes only the rest; pass an int ``random_state`` for
        this (with ``None`` the rerun draws different seeds).
    source_model : torch.nn.Module, default=None
        Transfer attacks: craft every attack on this model (e.g. another
        network trained on the same task) and apply the images to ``model``.
        Attacked are the test images both models classify correctly; a row
        is adversarial when the attack succeeded on ``source_model`` *and*
        ``model`` is fooled too (``n_success`` of the summary counts the
        source's successes, ``n_inconsistent`` those that did not transfer).

    Returns
    -------
    data : sklearn.utils.Bunch
        X_ref : ndarray (n_ref, n_features)
            Reference features (logits block last).
        y_ref : ndarray (n_ref,)
            Class labels of the reference images.
        X : ndarray (n_samples, n_features)
            Detection set: authentic rows first (in test-image order), then
            the rows of each attack configuration in the order given.
        y : ndarray (n_samples,)
            0 authentic, 1 adversarial.
        groups : ndarray (n_samples,)
            Index of the source test image.
        attack : ndarray of str (n_samples,)
            ``"authentic"`` or the attack (label) that made the row.
        eps : ndarray of float (n_samples,)
            Budget of the attack; NaN for authentic rows and attacks run
            without one.
        true_class, pred_class : ndarray of int (n_samples,)
            True class and the model's prediction (argmax of the logits
            block of the row).
        target : ndarray of int (n_samples,)
            Target class of targeted attacks, -1 elsewhere.
        X_errors : ndarray (n_errors, n_features)
            Natural errors: the authentic test images the model gets wrong.
        errors_groups, errors_true_class, errors_pred_class : ndarray
            Their test-image indices, true classes and predictions.
        layout : FeatureLayout
            Column layout of ``X`` and ``X_ref`` (alias ``layer_sizes``).
        layer_names : list of str
            Hooked module names.
        test_accuracy : float
            The model's accuracy on ``test_images``.
        attack_summary : list of dict
            Per configuration: attack, name, eps, params, n_attacked,
            n_success (as the attack reports it), n_adversarial (rows with
            ``y = 1``), n_authentic (noise rows with ``y = 0``) and
            n_inconsistent (reported successes whose prediction, recomputed
            by the extractor, is still the true class; dropped) and seconds
            (wall time of the attack and the extraction of its images when
            it ran: a configuration read back from ``out_dir`` keeps the time
            it took then; absent from configurations cached before it was
            recorded).

    Notes
    -----
    An adversarial row is kept when its attack reports success *and* the
    model's prediction on the adversarial image, as recomputed during
    feature extraction, differs from the true class (the two agree except for
    float round-off on images that sit on a decision boundary, which
    minimal-perturbation attacks such as L-BFGS produce).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_digits
    >>> from sklearn_advdet.deep.digits import train_digits_cnn
    >>> from sklearn_advdet.deep.attack_sets import build_detection_set
    >>> digits = load_digits()
    >>> images = (digits.images / 16).astype(np.float32)[:, None]
    >>> model = train_digits_cnn(images[:300], digits.target[:300], epochs=5)
    >>> data = build_detection_set(
    ...     model, images[:300], digits.target[:300], images[300:360],
    ...     digits.target[300:360], attacks=[("fgsm", 0.2)], device="cpu",
    ...     random_state=0)
    >>> data.X.shape[1] == data.X_ref.shape[1] == data.layout.n_features
    True
    >>> sorted(set(data.attack.tolist()))
    ['authentic', 'fgsm']
    """
    specs = parse_attacks(attacks)
    noise_attacks = tuple(noise_attacks or ())
    unknown = [n for n in noise_attacks if n not in ATTACKS]
    if unknown:
        raise ValueError(f"noise_attacks names unknown attacks {unknown}; "
                         f"choose among {sorted(ATTACKS)}")
    ref_images = _as_images(ref_images, "ref_images")
    ref_labels = _as_labels(ref_labels, ref_images.shape[0], "ref_labels")
    test_images = _as_images(test_images, "test_images")
    test_labels = _as_labels(test_labels, test_images.shape[0], "test_labels")
    if ref_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(
            f"ref_images have shape {ref_images.shape[1:]} per image but "
            f"test_images {test_images.shape[1:]}: both must be inputs of the model"
        )
    rng = check_random_state(random_state)
    base_seed = int(rng.randint(_SEED_MAX))

    root = None if out_dir is None else Path(out_dir)
    if root is not None:
        _check_build_dir(root, ref_images, ref_labels, test_images, test_labels,
                         layers, base_seed, source_model)
    extractor = FeatureExtractor(model, layers=layers, device=device,
                                 batch_size=batch_size, progress=progress,
                                 include_logits=True)

    ref = _extract(extractor, ref_images, ref_labels,
                   None if root is None else root / "reference", None, "reference images")
    n_test = test_images.shape[0]
    test = _extract(extractor, test_images, test_labels,
                    None if root is None else root / "test",
                    {"image_id": np.arange(n_test)}, "test images")
    layout = ref.layout
    if test.layout != layout:
        raise RuntimeError(f"layouts differ: {layout} and {test.layout}")
    correct = test.predictions == test_labels
    attackable = correct if source_model is None else correct & _source_correct(
        source_model, test_images, test_labels, device, batch_size)
    idx_correct = np.flatnonzero(correct)
    idx_errors = np.flatnonzero(~correct)
    if idx_correct.size == 0:
        raise ValueError("the model classifies none of the test images correctly: "
                         "there is nothing to attack")

    blocks = [dict(
        X=test.X[idx_correct],
        y=np.zeros(idx_correct.size, dtype=np.int64),
        groups=idx_correct,
        attack=np.full(idx_correct.size, "authentic"),
        eps=np.full(idx_correct.size, np.nan),
        true_class=test_labels[idx_correct],
        pred_class=test.predictions[idx_correct],
        target=np.full(idx_correct.size, -1, dtype=np.int64),
    )]
    summary = []
    for spec in specs:
        seed = _spec_seed(base_seed, spec)
        adir = None
        if root is not None:
            adir = root / "attacks" / f"{_safe(spec.attack)}-{spec.key}"
        block, info = _attack_block(
            spec, seed, model if source_model is None else source_model, extractor,
            test_images, test_labels, np.flatnonzero(attackable),
            spec.name in noise_attacks, adir, device, batch_size, progress, layout)
        blocks.append(block)
        summary.append(info)

    def cat(k):
        return np.concatenate([b[k] for b in blocks])

    X = np.concatenate([b["X"] for b in blocks]).astype(np.float32, copy=False)
    return Bunch(
        X_ref=np.asarray(ref.X, dtype=np.float32),
        y_ref=ref_labels,
        X=X,
        y=cat("y"),
        groups=cat("groups").astype(np.int64),
        attack=cat("attack").astype(str),
        eps=cat("eps").astype(np.float64),
        true_class=cat("true_class").astype(np.int64),
        pred_class=cat("pred_class").astype(np.int64),
        target=cat("target").astype(np.int64),
        X_errors=np.asarray(test.X[idx_errors], dtype=np.float32),
        errors_groups=idx_errors.astype(np.int64),
        errors_true_class=test_labels[idx_errors],
        errors_pred_class=test.predictions[idx_errors].astype(np.int64),
        layout=layout,
        layer_sizes=layout,
        layer_names=layout.layer_names,
        test_accuracy=float(correct.mean()),
        attack_summary=summary,
    )


def _attack_block(spec, seed, model, extractor, test_images, test_labels, idx_correct,
                  is_noise, adir, device, batch_size, progress, layout):
    """Rows of one attack configuration (+ its summary), resuming from ``adir``."""
    done_file = None if adir is None else adir / "attack.json"
    if done_file is not None and done_file.exists():
        info = _read_json(done_file)
        if (info.get("key"), info.get("seed"), info.get("is_noise")) == (
                spec.key, seed, bool(is_noise)):
            loaded = _load_attack_arrays(adir, info, layout)
            if loaded is not None:
                block, _ = _rows(spec, *loaded, test_labels, is_noise)
                return block, info["summary"]
    if adir is not None and adir.exists():
        # unfinished, stale or damaged: start this configuration over (the
        # attack has to run again anyway to give the images)
        shutil.rmtree(adir)

    t0 = time.perf_counter()
    src = idx_correct
    if spec.max_images is not None and spec.max_images < src.size:
        sub_rng = np.random.RandomState(seed)
        src = np.sort(sub_rng.choice(src, size=spec.max_images, replace=False))
    res = run_attack(spec.name, model, test_images[src], test_labels[src], eps=spec.eps,
                     batch_size=batch_size, device=device, random_state=seed,
                     progress=progress, **spec.params)
    success = res.success.cpu().numpy().astype(bool)
    keep = np.ones(src.size, dtype=bool) if is_noise else success
    kept = np.flatnonzero(keep)
    target = (np.full(src.size, -1, dtype=np.int64) if res.target is None
              else res.target.cpu().numpy().astype(np.int64))
    meta = {"image_id": src[kept], "success": success[kept], "target": target[kept]}
    if kept.size:
        images = res.images[torch.from_numpy(kept)]
        feats = _extract(extractor, images, test_labels[src[kept]],
                         None if adir is None else adir / "store", meta,
                         f"{spec.describe()} adversarial images", nested=True)
        X, pred = feats.X, feats.predictions
    else:
        X = np.empty((0, layout.n_features), dtype=np.float32)
        pred = np.empty(0, dtype=np.int64)
    block, n_inconsistent = _rows(spec, X, pred, meta, test_labels, is_noise)
    info = dict(
        attack=spec.attack, name=spec.name, eps=spec.eps, params=_jsonable(spec.params),
        max_images=spec.max_images, n_attacked=int(src.size),
        n_success=int(success.sum()), n_adversarial=int(block["y"].sum()),
        n_authentic=int((block["y"] == 0).sum()), n_inconsistent=int(n_inconsistent),
        seconds=time.perf_counter() - t0,
    )
    if done_file is not None:
        adir.mkdir(parents=True, exist_ok=True)  # no store made when no row was kept
        _atomic_write_json(done_file, {"key": spec.key, "seed": seed,
                                       "is_noise": bool(is_noise),
                                       "n_kept": int(kept.size), "summary": info})
    return block, info


def _rows(spec, X, pred, meta, test_labels, is_noise):
    true = test_labels[meta["image_id"]]
    fooled = pred != true
    if is_noise:
        keep = np.ones(len(pred), dtype=bool)
        n_inconsistent = 0
    else:
        keep = meta["success"] & fooled
        n_inconsistent = int((meta["success"] & ~fooled).sum())
    eps = np.nan if spec.eps is None else spec.eps
    n = int(keep.sum())
    return dict(
        X=np.asarray(X)[keep],
        y=fooled[keep].astype(np.int64),
        groups=meta["image_id"][keep].astype(np.int64),
        attack=np.full(n, spec.attack),
        eps=np.full(n, eps, dtype=np.float64),
        true_class=true[keep],
        pred_class=np.asarray(pred)[keep].astype(np.int64),
        target=meta["target"][keep].astype(np.int64),
    ), n_inconsistent


def _load_attack_arrays(adir, info, layout):
    """(X, predictions, metadata) of a finished configuration, or None."""
    n_kept = int(info.get("n_kept", -1))
    if n_kept == 0:
        return (np.empty((0, layout.n_features), dtype=np.float32),
                np.empty(0, dtype=np.int64),
                {"image_id": np.empty(0, np.int64), "success": np.empty(0, bool),
                 "target": np.empty(0, np.int64)})
    try:
        store = open_store(adir / "store")
    except (StoreError, OSError):
        return None
    if len(store) != n_kept or store.layout != layout:
        return None
    meta = {k: np.asarray(v) for k, v in store.metadata.items()}
    if set(meta) != {"image_id", "success", "target"}:
        return None
    return store.X, np.asarray(store.predictions), meta
