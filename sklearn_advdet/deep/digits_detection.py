"""The embedded default data set: adversarial detection on scikit-learn's digits.

:func:`load_digits_detection` builds a complete adversarial-detection data
set from scikit-learn's 8x8 digits on any machine, without downloads: it
trains a small CNN, extracts its pooled hidden-layer features, runs every
attack family of :mod:`sklearn_advdet.deep.attacks`, and caches the result
under the data home (see :func:`sklearn_advdet.datasets.get_data_home`).  A
warm load reads a few ``.npy`` files and never imports torch: this module
imports torch only inside the cold build.
"""

import hashlib
import json
import shutil
from numbers import Integral
from pathlib import Path

import numpy as np

from .._layout import FeatureLayout
from ..datasets import _ARRAYS, _is_complete, _load_cache, _write_cache, get_data_home

__all__ = ["load_digits_detection", "DIGITS_DETECTION_CONFIG"]

#: Bumped whenever the build changes what it produces for the same arguments.
_CACHE_VERSION = 2
_CACHE_DIR = "digits_detection"


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
    # the minimal-perturbation attacks have no budget.  CW-L2 is the slowest
    # attack of the set (5 x 100 Adam steps), so it runs on a subset like
    # L-BFGS; its Adam rate is 0.1 in the tanh space instead of the paper's
    # 0.01, which was tuned for 3,072 pixels of 256 levels: on 64 pixels of
    # 17 levels 0.01 left some images unfooled after 5 x 100 steps and found
    # larger perturbations than DeepFool, 0.1 fools all with smaller ones
    attacks.append(("cw_l2", None, {"max_images": 200, "lr": 0.1}))
    attacks.append(("deepfool", None, {}))
    # APGD-CE at the budgets of PGD where it is informative: 8/255 (half a
    # grey level of the 17-level digits) would fool almost nothing, and eps
    # 0.05 fools about one image in eight.  50 iterations instead of 100:
    # the step-halving checkpoints scale with n_iter, and on this CNN 100
    # iterations fool the same share of images at twice the cost
    for eps in (0.1, 0.2):
        attacks.append(("apgd", eps, {"n_iter": 50}))
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

def _cache_key(random_state):
    payload = json.dumps(
        {"version": _CACHE_VERSION, "random_state": random_state,
         "config": DIGITS_DETECTION_CONFIG},
        sort_keys=True,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return f"v{_CACHE_VERSION}-rs{random_state}-{digest}"


def _build(random_state, progress):
    """Train, extract and attack: the arrays and metadata of the cache."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from . import detection as _detection
    from . import digits as _digits

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
    configs = meta["config"]["attacks"]
    (lbfgs,) = [p for name, _, p in configs if name == "lbfgs"]
    (cw,) = [p for name, _, p in configs if name == "cw_l2"]
    apgd_eps = [e for name, e, _ in configs if name == "apgd"]
    (apgd_iter,) = {p["n_iter"] for name, _, p in configs if name == "apgd"}
    lines = [
        ".. _digits_detection:",
        "",
        "Adversarial detection on scikit-learn's digits",
        "-----------------------------------------------",
        "",
        "Built by ``sklearn_advdet.load_digits_detection`` "
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
        "with GroupKFold); ``attack``, ``eps`` (NaN for authentic rows and the "
        "attacks without a budget: L-BFGS, CW-L2, DeepFool), ``true_class``, "
        "``pred_class`` (argmax of the logits block), "
        "``target`` (targeted attacks, else -1).",
        "- ``X_errors`` (+ ``errors_groups``, ``errors_true_class``, "
        "``errors_pred_class``): the natural errors, test images the CNN gets wrong.",
        "- ``train_index``, ``test_index``: the split of ``load_digits()``.",
        "",
        "Every attack runs on all correctly classified test images, except "
        "L-BFGS and CW-L2, which are slow and run on seeded random subsets of "
        f"{lbfgs['max_images']} (L-BFGS: {lbfgs['binary_search_steps']} values of "
        f"its constant, at most {lbfgs['max_iter']} L-BFGS-B iterations each) and "
        f"{cw['max_images']} of them (CW-L2: 5 values of c, 100 Adam steps each at "
        f"rate {cw['lr']:g} in the tanh space; the paper's 0.01 suits 3,072 pixels "
        "of 256 levels, and left digits unfooled with larger perturbations). BIM "
        "and the iterative target class attack take steps of eps/5 (10 steps) "
        "and eps/10 (20 steps): one pixel level (1/255) would be meaningless on "
        "17-level digits.",
        "",
        "The minimal-perturbation attacks CW-L2 and DeepFool (L2, overshoot "
        "0.02) have no budget: they stop just past the decision boundary. "
        "APGD-CE runs at eps "
        f"{', '.join(f'{e:g}' for e in apgd_eps)} ({apgd_iter} iterations), the "
        "budgets at which PGD fools some but not all digits: the usual 8/255 is "
        "half a grey level of the 17-level digits and would fool almost none.",
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
    FGSM, BIM, PGD, MI-FGSM (eps 0.05, 0.1, 0.2), L-BFGS, CW-L2, DeepFool,
    APGD-CE (eps 0.1, 0.2), Gaussian and sign noise and the iterative target
    class attack, and caches the result under ``get_data_home(data_home)``
    (well under a minute on two CPU cores; the cache is a few MB).  The
    ``DESCR`` says which budgets each attack gets and why.  Later calls load
    the cache without importing torch.  The cache is written to a temporary
    folder and renamed into place, so an interrupted build never leaves a
    cache that looks complete.

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
        layout : FeatureLayout of the columns (logits block last); also
        available as ``layer_sizes``.
        layer_names : hooked module names.
        cnn_accuracy : the CNN's test accuracy.
        attack_summary : per attack configuration, counts of attacked,
        successful and kept images.
        train_index, test_index : the split of ``load_digits()``.
        DESCR : description of the data set.

    Examples
    --------
    >>> from sklearn_advdet import load_digits_detection
    >>> data = load_digits_detection()  # doctest: +SKIP
    >>> data.X.shape[1] == data.layout.n_features  # doctest: +SKIP
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
