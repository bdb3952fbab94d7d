"""Implementations of the ``advdet`` sub-commands that work on a user's data.

Kept apart from :mod:`sklearn_advdet.cli` so that ``advdet --help`` and
argument errors answer without importing torch or scikit-learn.
"""

import json
import os
from pathlib import Path

import numpy as np

from .cli import UsageError
from .datasets import load_detection_set, save_detection_set



def _log(args, *msg):
    print(*msg, flush=True)


def _torch_threads(args):
    if getattr(args, "n_jobs", None) and args.n_jobs > 0:
        import torch

        torch.set_num_threads(args.n_jobs)


def _load_model(args):
    from .deep.models import cifar_resnet

    return cifar_resnet(args.depth, weights=args.weights)


def _load_images(path, limit, what, seed=0):
    """Images of a folder/tar; ``limit`` keeps a seeded class-stratified subset."""
    from .deep.data import load_image_folder

    images, labels, classes = load_image_folder(path)
    if len(images) == 0:
        raise UsageError(f"{what} {path} holds no images")
    if limit is not None:
        if limit < len(classes):
            raise UsageError(f"--limit {limit} is smaller than the {len(classes)} classes")
        if limit < len(images):
            from sklearn.model_selection import train_test_split

            keep, _ = train_test_split(np.arange(len(images)), train_size=limit,
                                       stratify=labels, random_state=seed)
            keep = np.sort(keep)
            images, labels = images[keep], labels[keep]
    return images, labels, classes


# ------------------------------------------------------------------ commands
def cmd_extract(args):
    _torch_threads(args)
    from .deep.extraction import FeatureExtractor

    model = _load_model(args)
    images, labels, classes = _load_images(args.data, args.limit, "--data")
    _log(args, f"extracting {len(images)} images of {len(classes)} classes "
               f"with ResNet-{args.depth} -> {args.out}")
    extractor = FeatureExtractor(model, layers="cifar_resnet", device=args.device,
                                 batch_size=args.batch_size, progress=not args.quiet)
    store = extractor.extract_to_store(images, args.out, labels=labels,
                                       source=str(args.data))
    acc = float(np.mean(np.asarray(store.predictions) == np.asarray(store.labels)))
    _log(args, f"wrote {len(store)} rows x {store.layout.n_features} columns "
               f"({store.layout.n_layers} layers + logits); top-1 accuracy {acc:.4f}")
    return 0


def _parse_attack_option(text):
    from .cli import _parse_eps

    name, _, eps = text.partition(":")
    name = name.strip().lower().replace("-", "")
    aliases = {"mifgsm": "mifgsm", "lbfgs": "lbfgs", "itc": "iterative_target_class"}
    name = aliases.get(name, name)
    if eps:
        try:
            value = _parse_eps(eps)
        except Exception as exc:  # argparse.ArgumentTypeError
            raise UsageError(f"--attack {text}: {exc}") from None
        return (name, value)
    return (name, None)


def cmd_attack(args):
    _torch_threads(args)
    from .deep.attacks import ATTACKS
    from .deep.detection import build_detection_set

    attacks = [_parse_attack_option(a) for a in args.attack]
    unknown = [n for n, _ in attacks if n not in ATTACKS]
    if unknown:
        raise UsageError(f"unknown attack {unknown[0]!r}; choose among {sorted(ATTACKS)}")
    model = _load_model(args)
    ref_images, ref_labels, _ = _load_images(args.reference_data, args.reference_limit,
                                             "--reference-data", args.seed)
    images, labels, _ = _load_images(args.data, args.limit, "--data", args.seed)
    out = Path(args.out)
    _log(args, f"reference {len(ref_images)} images, attacking {len(images)} images "
               f"with {', '.join(a for a in args.attack)}")
    data = build_detection_set(
        model, ref_images.astype(np.float32) / 255, ref_labels,
        images.astype(np.float32) / 255, labels,
        attacks=attacks, layers="cifar_resnet", device=args.device,
        batch_size=args.batch_size, random_state=args.seed,
        progress=not args.quiet, out_dir=out / "stores", noise_attacks=(),
    )
    written = save_detection_set(data, out)
    for info in data.attack_summary:
        _log(args, f"  {info['name']}: {info['n_adversarial']} of "
                   f"{info['n_attacked']} attacked images became adversarial")
    _log(args, f"detection set: {int((data.y == 0).sum())} authentic, "
               f"{int(data.y.sum())} adversarial, {len(data.X_errors)} natural errors "
               f"-> {written}")
    return 0


def _reference(args, data):
    if args.reference is None:
        return data.X_ref, data.y_ref
    from .deep.store import open_store

    store = open_store(args.reference)
    if store.labels is None:
        raise UsageError(f"reference store {args.reference} has no class labels")
    if store.layout != data.layout:
        raise UsageError(
            f"reference store layout {store.layout.names} differs from the "
            f"detection set's {data.layout.names}: extract both with the same model"
        )
    return store.X, np.asarray(store.labels)


def cmd_fit(args):
    import joblib
    from sklearn.frozen import FrozenEstimator
    from sklearn.pipeline import Pipeline

    from .detectors import MLPDetector, SequenceLSTMDetector, balanced_sample_weight
    from .embedding import PivotEmbedder
    from .knn import KNNClassScorer, ScoreThresholdDetector

    _torch_threads(args)
    data = load_detection_set(args.train)
    X_ref, y_ref = _reference(args, data)
    layout = data.layout
    if args.method == "knn":
        try:
            layer = int(args.layer)
        except ValueError:
            layer = args.layer
        first = KNNClassScorer(
            layer_sizes=layout, layers=layer, n_neighbors=args.n_neighbors,
            weights="uniform", n_jobs=args.n_jobs, random_state=args.seed,
        ).fit(X_ref, y_ref)
        detector = ScoreThresholdDetector()
    else:
        first = PivotEmbedder(layer_sizes=layout, pivots=args.pivots, metric=args.metric,
                              n_jobs=args.n_jobs).fit(X_ref, y_ref)
        common = dict(max_epochs=args.max_epochs, random_state=args.seed,
                      device=args.device, verbose=0 if args.quiet else 1)
        detector = (SequenceLSTMDetector(n_steps=len(first.layer_indices_), **common)
                    if args.method == "lstm" else MLPDetector(**common))
    Z = first.transform(data.X)
    fit_params = {}
    if args.method != "knn":
        fit_params["sample_weight"] = balanced_sample_weight(data.y, data.attack)
    detector.fit(Z, data.y, **fit_params)
    pipe = Pipeline([("features", FrozenEstimator(first)), ("detector", detector)])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    joblib.dump({"pipeline": pipe, "layout": layout.to_dict(), "method": args.method}, tmp)
    os.replace(tmp, out)
    _log(args, f"fitted {args.method} detector on {len(data.y)} rows -> {out}")
    return 0


def _load_fitted(path):
    import joblib

    try:
        obj = joblib.load(path)
    except Exception as exc:  # a file that is not a joblib pickle
        raise UsageError(f"cannot read {path} as a fitted detector: {exc}") from None
    if not isinstance(obj, dict) or "pipeline" not in obj:
        raise UsageError(f"{path} was not written by `advdet fit`")
    return obj


def cmd_evaluate(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import metrics
    from ._layout import FeatureLayout

    fitted = _load_fitted(args.model)
    data = load_detection_set(args.data)
    if FeatureLayout.from_dict(fitted["layout"]) != data.layout:
        raise UsageError("the detector was fitted on features of another model/layout")
    pipe = fitted["pipeline"]
    score = pipe.decision_function(data.X)
    report = metrics.detection_report(data.y, score, data.attack, output_dict=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if len(data.X_errors):
        report["natural errors flagged"] = float(np.mean(pipe.predict(data.X_errors) == 1))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(metrics.detection_report(data.y, score, data.attack))
    ax = metrics.plot_roc_curves(data.y, score, data.attack,
                                 title=f"{fitted['method']} detector")
    ax.figure.savefig(out / "roc.png", dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    ax = metrics.plot_score_density(score, np.where(data.y == 0, "authentic", data.attack),
                                    xlabel="detector score (higher = adversarial)")
    ax.figure.savefig(out / "density.png", dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    _log(args, f"report.json, roc.png, density.png written to {out}")
    return 0


def cmd_reproduce(args):
    _torch_threads(args)
    from .deep.reproduce import reproduce

    reproduce(args.data, args.depth, args.weights, args.out, size=args.size,
              device=args.device, n_jobs=args.n_jobs, random_state=args.seed,
              progress=not args.quiet)
    return 0
