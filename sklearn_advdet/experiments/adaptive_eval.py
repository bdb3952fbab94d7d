"""Adaptive white-box attacks on guarded models, per detector and budget.

:func:`run_adaptive_benchmark` is what ``advdet benchmark --adaptive`` runs:

1. reference features of the classifier's training images (fitted once);
2. each detector of :data:`~._benchmark_detectors.DETECTORS` asked for is
   trained **obliviously**: clean training images against their PGD
   adversarials at every budget;
3. the detector is wrapped with the classifier in a
   :class:`~.guarded.GuardedModel` whose threshold rejects ``target_fpr`` of
   clean calibration images;
4. per budget, the correctly classified evaluation images are attacked by
   oblivious PGD (the classifier alone), adaptive PGD (classifier CE minus
   ``lam`` times the detector logit, ``lam`` searched) and orthogonal PGD
   (Bryniarski et al., 2022). A detector without a useful gradient (the
   boosted trees of the default) is attacked through a **differentiable
   surrogate**: the same frozen features with a logistic-regression head
   fitted on the same rows (BPDA), kNN scores through their soft-kNN
   surrogate, conformal p-values (the default's fusion, the authentic
   density) through their decision function, the fusion's trees through a
   logistic head; the figures are always those of the real guard;
5. with ``adaptive_training_rounds=R``: R rounds of attack-then-refit, each
   adding adaptive-PGD adversarials of the training images at the largest
   budget to the detector's training rows, then every attack again.

Figures (on the real guard): detection AUC of the attacked images that fool
the classifier against the clean ones, TPR at the calibrated threshold,
share fooling the classifier, share wrong and not rejected, and **robust
accuracy under detection**: share of attacked images classified right or
rejected. Every finished cell is written to ``cells.json`` at once, so an
interrupted run continues where it stopped.
"""

import json
import time
from pathlib import Path

import numpy as np
from sklearn.base import clone

from .._progress import get_logger
from ..evaluation.report import write_text_atomic
from ._benchmark_detectors import DETECTORS

__all__ = ["run_adaptive_benchmark", "run_adaptive_cifar", "ADAPTIVE_DETECTORS",
           "ATTACK_MODES", "guard_figures"]

_log = get_logger("adaptive")

#: detectors attacked when none are named: one per family (the papers' pivots
#: and kNN scores, the latter through its soft-kNN surrogate; logit +
#: Mahalanobis), and make_detector's default (hybrid) and supervised modes
#: (their boosted trees through a surrogate head)
ADAPTIVE_DETECTORS = ("pivots_mlp", "knn_score", "logit_mahalanobis_logistic",
                      "default_hybrid", "default_supervised")
#: attacks run per detector and budget
ATTACK_MODES = ("oblivious", "adaptive", "orthogonal")
#: last steps the guarded model can differentiate through (the conformal ones
#: through their decision function, in surrogate mode)
_DIFFERENTIABLE_HEADS = ("LogisticRegression", "MLPDetector", "SequenceLSTMDetector",
                         "AuthenticDensityDetector", "ScoreThresholdDetector")


def guard_figures(guard, clean, labels, adv):
    """Figures of attacked images ``adv`` (of ``clean``, true ``labels``) under ``guard``.

    Returns
    -------
    dict
        ``auc`` (clean vs attacked images that fool the classifier, by
        ``p_adv``; None when none fools it), ``tpr`` (share of those
        rejected), ``fooled`` (share misclassified), ``undetected`` (share
        misclassified and not rejected), ``robust`` (share classified right
        or rejected), ``n``.
    """
    from sklearn.metrics import roc_auc_score

    from ..deep.adaptive import evaluate_guarded

    _, _, p_clean = evaluate_guarded(guard, clean, labels)
    success, mis, p_adv = evaluate_guarded(guard, adv, labels)
    rejected = p_adv > guard.threshold
    auc = tpr = None
    if bool(mis.any()):
        p_fool = p_adv[mis].numpy()
        scores = np.r_[p_clean.numpy(), p_fool]
        auc = float(roc_auc_score(np.r_[np.zeros(len(p_clean)), np.ones(len(p_fool))],
                                  scores))
        tpr = float(rejected[mis].float().mean())
    return {"auc": auc, "tpr": tpr, "fooled": float(mis.float().mean()),
            "undetected": float(success.float().mean()),
            "robust": float(((~mis) | rejected).float().mean()), "n": int(len(labels)),
            "clean_fpr": float((p_clean > guard.threshold).float().mean())}


def _has_gradient(pipeline):
    last = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    return type(last).__name__ in _DIFFERENTIABLE_HEADS


def _logistic_head(Z, y):
    """StandardScaler + LogisticRegression fitted on ``Z, y``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()),
                     ("classifier", LogisticRegression(C=0.1, max_iter=2000))]).fit(Z, y)


def _surrogate(pipeline, Z, y):
    """Frozen feature steps + StandardScaler + LogisticRegression fitted on ``Z, y``."""
    from sklearn.pipeline import Pipeline

    return Pipeline(pipeline.steps[:-1] + _logistic_head(Z, y).steps)


class _Guards:
    """The real guard of one fitted detector and the module the attacks differentiate.

    A ConformalFusionDetector (the default, hybrid) is attacked through its
    own decision function (surrogate mode of the guarded model): the density
    exactly, a supervised component without a gradient (boosted trees)
    through a logistic head fitted on the same features (BPDA).
    """

    def __init__(self, model, pipeline, layers, X, y, calib, target_fpr):
        from .guarded import GuardedModel

        self.real = GuardedModel(model, pipeline, layers=layers).calibrate(calib, target_fpr)
        last = pipeline.steps[-1][1]
        helper, self.surrogate = None, None
        if type(last).__name__ == "ConformalFusionDetector":
            target = pipeline
            classifier = last.classifier_
            inner = classifier.steps[-1][1] if hasattr(classifier, "steps") else classifier
            if type(inner).__name__ not in _DIFFERENTIABLE_HEADS:
                helper = _logistic_head(pipeline[:-1].transform(X), y)
                self.surrogate = (f"ConformalFusionDetector's {type(inner).__name__} "
                                  "(its density exact)")
        elif _has_gradient(pipeline):
            target = pipeline
        else:
            target = _surrogate(pipeline, pipeline[:-1].transform(X), y)
            self.surrogate = type(last).__name__
        self.attack = GuardedModel(model, target, layers=layers, surrogate=True,
                                   classifier_surrogate=helper)
        self.attack.calibrate(calib, target_fpr)

    def close(self):
        self.real.remove_hooks()
        self.attack.remove_hooks()


def _oblivious_pgd(model, x, y, eps, n_iter, seed):
    from ..deep.attacks import pgd

    return pgd(model, x, y, eps, n_iter=n_iter, random_state=seed, quantize=True).images


def _attack(mode, guards, model, x, y, eps, n_iter, lam, seed):
    from ..deep.adaptive import adaptive_pgd, orthogonal_pgd

    if mode == "oblivious":
        return _oblivious_pgd(model, x, y, eps, n_iter, seed)
    if mode == "adaptive":
        return adaptive_pgd(guards.attack, x, y, eps, lam=lam, n_iter=n_iter,
                            random_state=seed, quantize=True).images
    return orthogonal_pgd(guards.attack, x, y, eps, n_iter=n_iter, random_state=seed,
                          quantize=True).images


def _training_rows(model, layers, x, y, eps_list, n_iter, seed, cache):
    """Clean training features and those of their successful PGD adversarials (cached)."""
    import torch

    from ..deep.extraction import extract_features

    if cache.exists():
        with np.load(cache) as f:
            return f["X"], f["y"]
    parts, labels = [extract_features(model, x, layers=layers)[0]], [np.zeros(len(x), int)]
    for i, eps in enumerate(eps_list):
        adv = _oblivious_pgd(model, x, y, eps, n_iter, seed + i)
        with torch.no_grad():
            fooled = (model(adv).argmax(1) != y).numpy()
        parts.append(extract_features(model, adv[fooled], layers=layers)[0])
        labels.append(np.ones(int(fooled.sum()), int))
    X, yy = np.vstack(parts), np.concatenate(labels)
    np.savez(cache, X=X, y=yy)
    return X, yy


def _adaptive_rows(guards, model, layers, x, y, eps, n_iter, lam, seed):
    """Features of the adaptive adversarials of the training images that fool the classifier."""
    import torch

    from ..deep.extraction import extract_features

    adv = _attack("adaptive", guards, model, x, y, eps, n_iter, lam, seed)
    with torch.no_grad():
        fooled = (model(adv).argmax(1) != y).numpy()
    X = extract_features(model, adv[fooled], layers=layers)[0]
    return X, np.ones(len(X), int)


def _load_cells(path, fingerprint):
    if path.exists():
        doc = json.loads(path.read_text())
        if doc.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{path} holds cells of other settings: pass another out_dir or delete it")
        return doc["cells"]
    return {}


def _key(det, rnd, mode, eps):
    return f"{det}|{rnd}|{mode}|{eps * 255:.1f}"


def run_adaptive_benchmark(model, ref_images, ref_labels, train_images, train_labels,
                           calib_images, eval_images, eval_labels, *, layers="auto",
                           detectors=None, eps_list=(2 / 255, 4 / 255, 8 / 255), n_iter=20,
                           lam=(0.1, 1.0, 10.0), target_fpr=0.05,
                           adaptive_training_rounds=0, out_dir="advdet-adaptive",
                           random_state=0, max_epochs=30, n_jobs=None):
    """Oblivious, adaptive and orthogonal PGD against guarded detectors.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier (eval mode, CPU or CUDA).
    ref_images, ref_labels : Tensor
        Its training images (float in [0, 1], NCHW) and classes: the reference set.
    train_images, train_labels : Tensor
        Images whose clean and PGD versions train each detector.
    calib_images : Tensor
        Clean images setting each threshold at ``target_fpr``.
    eval_images, eval_labels : Tensor
        Images attacked for the figures (the correctly classified ones are used).
    layers : "auto", preset name or list of str, default="auto"
    detectors : list of str, default=None
        Names of :data:`~._benchmark_detectors.DETECTORS`; None =
        :data:`ADAPTIVE_DETECTORS`.
    eps_list : sequence of float, default=(2/255, 4/255, 8/255)
    n_iter : int, default=20
        Steps of every attack (per ``lam`` for adaptive PGD).
    lam : sequence of float, default=(0.1, 1.0, 10.0)
    target_fpr : float, default=0.05
    adaptive_training_rounds : int, default=0
        Rounds of attack-then-refit after the oblivious training.
    out_dir : path-like, default="advdet-adaptive"
        ``cells.json`` (resumable), ``adaptive.md``, training-set cache.
    random_state : int, default=0
    max_epochs : int, default=30
    n_jobs : int, default=None

    Returns
    -------
    dict
        ``{"cells": {key: figures}, "markdown": text, "paths": [...]}``.
    """
    import torch

    from ..deep.extraction import extract_features

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(ADAPTIVE_DETECTORS if detectors is None else detectors)
    unknown = [d for d in names if d not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown!r}: choose among {list(DETECTORS)}")
    eps_list = [float(e) for e in eps_list]
    settings = {"eps": eps_list, "n_iter": int(n_iter), "lam": list(lam),
                "target_fpr": float(target_fpr), "seed": int(random_state),
                "max_epochs": int(max_epochs), "n_train": len(train_images),
                "n_eval": len(eval_images), "n_ref": len(ref_images)}
    fingerprint = json.dumps(settings, sort_keys=True)
    cells_path = out / "cells.json"
    cells = _load_cells(cells_path, fingerprint)
    model.eval()
    with torch.no_grad():
        right = model(eval_images).argmax(1) == eval_labels
    x_ev, y_ev = eval_images[right], eval_labels[right]
    X_ref, layout = extract_features(model, ref_images, layers=layers)
    y_ref = np.asarray(ref_labels)
    X_tr, y_tr = _training_rows(model, layers, train_images, train_labels, eps_list,
                                int(n_iter), int(random_state), out / "train_rows.npz")
    fit_settings = {"max_epochs": max_epochs, "random_state": random_state, "n_jobs": n_jobs}
    for det in names:
        unfitted = DETECTORS[det][1](layout, X_ref, y_ref, fit_settings)
        X, y = X_tr, y_tr
        for rnd in range(int(adaptive_training_rounds) + 1):
            keys = [_key(det, rnd, m, e) for e in eps_list for m in ATTACK_MODES]
            last = rnd == int(adaptive_training_rounds)
            if all(k in cells for k in keys) and last:
                continue
            t0 = time.perf_counter()
            pipe = clone(unfitted).fit(X, y)
            guards = _Guards(model, pipe, layers, X, y, calib_images, target_fpr)
            _log.info("%s round %d: fitted on %d rows (%d adversarial) in %.0f s%s", det,
                      rnd, len(y), int(y.sum()), time.perf_counter() - t0,
                      f", attacked through a logistic surrogate of its {guards.surrogate}"
                      if guards.surrogate else "")
            for i, eps in enumerate(eps_list):
                for mode in ATTACK_MODES:
                    key = _key(det, rnd, mode, eps)
                    if key in cells:
                        continue
                    t = time.perf_counter()
                    adv = _attack(mode, guards, model, x_ev, y_ev, eps, int(n_iter), lam,
                                  int(random_state) + 100 + i)
                    fig = guard_figures(guards.real, x_ev, y_ev, adv)
                    fig.update(seconds=time.perf_counter() - t, surrogate=guards.surrogate,
                               n_train=int(len(y)), n_train_adv=int(y.sum()))
                    cells[key] = fig
                    write_text_atomic(cells_path, json.dumps(
                        {"fingerprint": fingerprint, "cells": cells}, indent=1))
                    _log.info("%s round %d %s %.0f/255: robust %.3f, AUC %s (%.0f s)", det,
                              rnd, mode, eps * 255, fig["robust"],
                              "-" if fig["auc"] is None else f"{fig['auc']:.3f}",
                              fig["seconds"])
            if not last:
                Xa, ya = _adaptive_rows(guards, model, layers, train_images, train_labels,
                                        max(eps_list), int(n_iter), lam,
                                        int(random_state) + 1000 + rnd)
                X, y = np.vstack([X, Xa]), np.concatenate([y, ya])
            guards.close()
    # every cell of the folder: earlier calls may have run other detectors or rounds
    text = adaptive_markdown(cells, _detectors_in(cells, names), eps_list,
                             _max_round(cells, int(adaptive_training_rounds)), settings)
    write_text_atomic(out / "adaptive.md", text)
    return {"cells": cells, "markdown": text,
            "paths": [str(cells_path), str(out / "adaptive.md")]}


def run_adaptive_cifar(depth, data_dir, *, weights=None, ref_per_class=500, n_train=300,
                       n_calib=200, n_eval=200, random_state=0, **params):
    """:func:`run_adaptive_benchmark` on a CIFAR-10 ResNet and the JPEG tars.

    The reference set is ``ref_per_class`` training images per class; the
    test tar's images, shuffled with ``random_state``, give ``n_train``
    detector-training, ``n_calib`` calibration and ``n_eval`` evaluation
    images (disjoint). ``params`` go to :func:`run_adaptive_benchmark`.
    """
    import torch

    from ..deep.data import load_image_folder
    from ..deep.models import cifar_resnet
    from .reproduce import locate_cifar_tars, locate_weights

    train_tar, test_tar = locate_cifar_tars(data_dir)
    model = cifar_resnet(depth, weights if weights is not None
                         else locate_weights(data_dir, depth)).eval()
    ref, ref_y, _ = load_image_folder(train_tar, per_class=ref_per_class)
    n = n_train + n_calib + n_eval
    test, test_y, _ = load_image_folder(test_tar, per_class=-(-n // 10))
    order = np.random.RandomState(random_state).permutation(len(test))[:n]
    test, test_y = test[order], test_y[order]

    def f(u8):
        return torch.from_numpy(u8.astype(np.float32) / 255.0)

    tr, ca = slice(0, n_train), slice(n_train, n_train + n_calib)
    ev = slice(n_train + n_calib, n)
    return run_adaptive_benchmark(
        model, f(ref), torch.from_numpy(ref_y), f(test[tr]), torch.from_numpy(test_y[tr]),
        f(test[ca]), f(test[ev]), torch.from_numpy(test_y[ev]), layers="cifar_resnet",
        random_state=random_state, **params)


def _detectors_in(cells, names):
    """``names`` first, then the other detectors of ``cells`` in their order."""
    seen = list(names)
    for key in cells:
        det = key.split("|")[0]
        if det not in seen:
            seen.append(det)
    return seen


def _max_round(cells, rounds):
    return max([rounds] + [int(key.split("|")[1]) for key in cells])


def _fmt(v):
    return "-" if v is None else f"{v:.3f}"


def adaptive_markdown(cells, detectors, eps_list, rounds, settings):
    """The Markdown table of :func:`run_adaptive_benchmark`'s cells."""
    lines = ["# Adaptive attacks on guarded models\n",
             f"{settings['n_eval']} evaluation images (the correctly classified ones "
             f"attacked), {settings['n_train']} training images (clean + PGD at every "
             f"budget), {settings['n_ref']} reference images; threshold at "
             f"{settings['target_fpr']:.0%} FPR on clean calibration images; "
             f"{settings['n_iter']} steps per attack (adaptive PGD: per lam in "
             f"{settings['lam']}); every attack quantised to 8 bits.\n",
             "Robust accuracy under detection = share of attacked images classified "
             "right or rejected. AUC: clean images vs the attacked images that fool the "
             "classifier, by p_adv. Round r > 0: the detector refitted with adaptive "
             "adversarials of the training images added r times.\n",
             "| detector | round | attack | eps | detection AUC | TPR at threshold | fools "
             "the classifier | wrong and not rejected | robust accuracy under detection "
             "| clean FPR | attacked through | time (s) |",
             "|" + "---|" * 12]
    for det in detectors:
        for rnd in range(rounds + 1):
            for eps in eps_list:
                for mode in ATTACK_MODES:
                    c = cells.get(_key(det, rnd, mode, eps))
                    if c is None:
                        continue
                    through = ("the classifier" if mode == "oblivious" else
                               f"logistic surrogate of {c['surrogate']}" if c["surrogate"]
                               else "the guard")
                    lines.append(
                        f"| {det} | {rnd} | {mode} | {eps * 255:.0f}/255 | {_fmt(c['auc'])} "
                        f"| {_fmt(c['tpr'])} | {_fmt(c['fooled'])} | {_fmt(c['undetected'])} "
                        f"| {_fmt(c['robust'])} | {_fmt(c['clean_fpr'])} | {through} "
                        f"| {c['seconds']:.0f} |")
    return "\n".join(lines) + "\n"
