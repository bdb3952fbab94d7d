"""The ``advdet`` sub-commands: each checks its options and inputs before
any work, writes its output so that a failure leaves nothing behind, and
reports through the ``sklearn_advdet`` logger (tables through print)."""

import json
from pathlib import Path

from ._errors import UsageError
from ._inputs import (check_device, load_fitted, load_images, load_model,
                      parse_attack_option, read_detection_set, torch_threads)
from ._output import (check_out_dir, check_out_file, created_dir, staged_dir,
                      staged_file)
__all__ = ["cmd_demo", "cmd_extract", "cmd_attack", "cmd_fit", "cmd_evaluate",
           "cmd_guard_export", "cmd_reproduce", "cmd_benchmark"]


def _log():
    from .._progress import get_logger

    return get_logger("cli")


def _progress(args):
    return not args.quiet


# ------------------------------------------------------------------ demo
def _demo_log(message):
    """The demo's lines: tables (several lines) to stdout, the rest logged."""
    text = str(message).strip("\n")
    if not text.strip():
        return
    if "\n" in text:
        print(text, flush=True)
    else:
        _log().info(text.strip())


def cmd_demo(args):
    from ..experiments.demo import run_demo

    check_out_dir(args.out, overwrite=args.overwrite)
    with created_dir(args.out, overwrite=args.overwrite) as out:
        run_demo(out, random_state=args.seed, n_jobs=args.n_jobs,
                 max_epochs=args.max_epochs, progress=_progress(args), log=_demo_log)
    return 0


# --------------------------------------------------------------- extract
def cmd_extract(args):
    import numpy as np

    device = check_device(args.device)
    check_out_dir(args.out, overwrite=args.overwrite, resume=args.resume,
                  resumable=True)
    torch_threads(args.n_jobs)
    from ..deep.extraction import FeatureExtractor

    model = load_model(args.depth, args.weights)
    images, labels, classes = load_images(args.data, args.limit, "--data")
    _log().info("extracting %d images of %d classes with ResNet-%d on %s -> %s",
                len(images), len(classes), args.depth, device, args.out)
    extractor = FeatureExtractor(model, layers="cifar_resnet", device=device,
                                 batch_size=args.batch_size, progress=_progress(args))
    with created_dir(args.out, overwrite=args.overwrite) as out:
        store = extractor.extract_to_store(images, out, labels=labels,
                                           source=str(args.data), resume=args.resume)
    acc = float(np.mean(np.asarray(store.predictions) == np.asarray(store.labels)))
    _log().info("wrote %d rows x %d columns (%d layers + logits); top-1 accuracy %.4f",
                len(store), store.layout.n_features, store.layout.n_layers, acc)
    return 0


# ---------------------------------------------------------------- attack
def cmd_attack(args):
    import numpy as np

    from ..deep.attacks import ATTACKS

    attacks = [parse_attack_option(a, ATTACKS) for a in args.attack]
    device = check_device(args.device)
    check_out_dir(args.out, overwrite=args.overwrite, resume=args.resume,
                  resumable=True)
    torch_threads(args.n_jobs)
    from ..datasets import save_detection_set
    from ..deep.attack_sets import build_detection_set

    model = load_model(args.depth, args.weights)
    ref_images, ref_labels, _ = load_images(args.reference_data, args.reference_limit,
                                            "--reference-data", args.seed,
                                            limit_option="--reference-limit")
    images, labels, _ = load_images(args.data, args.limit, "--data", args.seed)
    _log().info("reference %d images, attacking %d images with %s",
                len(ref_images), len(images), ", ".join(args.attack))
    with created_dir(args.out, overwrite=args.overwrite) as out:
        data = build_detection_set(
            model, ref_images.astype(np.float32) / 255, ref_labels,
            images.astype(np.float32) / 255, labels,
            attacks=attacks, layers="cifar_resnet", device=device,
            batch_size=args.batch_size, random_state=args.seed,
            progress=_progress(args), out_dir=Path(out) / "stores", noise_attacks=(),
        )
        written = save_detection_set(data, out)
    for info in data.attack_summary:
        _log().info("  %s: %d of %d attacked images became adversarial",
                    info["name"], info["n_adversarial"], info["n_attacked"])
    _log().info("detection set: %d authentic, %d adversarial, %d natural errors -> %s",
                int((data.y == 0).sum()), int(data.y.sum()), len(data.X_errors), written)
    return 0


# ------------------------------------------------------------------- fit
def _reference(args, data):
    import numpy as np

    if args.reference is None:
        return data.X_ref, data.y_ref
    from ..store import open_store

    try:
        store = open_store(args.reference)
        X, labels = store.X, store.labels
    except (OSError, ValueError) as exc:
        raise UsageError(f"--reference {args.reference}: {exc}: give a feature store "
                         "written by `advdet extract`") from None
    if labels is None:
        raise UsageError(f"--reference {args.reference} has no class labels: extract it "
                         "from a labelled image folder")
    if store.layout != data.layout:
        raise UsageError(
            f"--reference layout {store.layout.names} differs from the detection set's "
            f"{data.layout.names}: extract both with the same model"
        )
    return X, np.asarray(labels)


def _layer_option(text):
    try:
        return int(text)
    except ValueError:
        return text


def _build_detector(args, data, X_ref, y_ref, device):
    """(fitted feature step, unfitted detector)."""
    from ..detectors import MLPDetector, SequenceLSTMDetector
    from ..embedding import PivotEmbedder
    from ..knn import KNNClassScorer, ScoreThresholdDetector

    layout = data.layout
    if args.method == "knn":
        first = KNNClassScorer(layer_sizes=layout, layers=_layer_option(args.layer),
                               n_neighbors=args.n_neighbors, weights="uniform",
                               n_jobs=args.n_jobs, random_state=args.seed)
        return first.fit(X_ref, y_ref), ScoreThresholdDetector()
    first = PivotEmbedder(layer_sizes=layout, pivots=args.pivots, metric=args.metric,
                          n_jobs=args.n_jobs).fit(X_ref, y_ref)
    common = dict(max_epochs=args.max_epochs, random_state=args.seed, device=device,
                  verbose=1 if args.verbose else 0)
    if args.method == "lstm":  # one step per embedded layer, C pivot distances each
        n_steps = len(first.get_feature_names_out()) // len(first.classes_)
        return first, SequenceLSTMDetector(n_steps=n_steps, **common)
    return first, MLPDetector(**common)


def cmd_fit(args):
    from sklearn.frozen import FrozenEstimator
    from sklearn.pipeline import Pipeline

    from .. import persistence
    from ..detectors import balanced_sample_weight

    out = check_out_file(args.out, overwrite=args.overwrite)
    device = str(check_device(args.device)) if args.method != "knn" else "cpu"
    torch_threads(args.n_jobs)
    data = read_detection_set(args.train, "--train")
    X_ref, y_ref = _reference(args, data)
    first, detector = _build_detector(args, data, X_ref, y_ref, device)
    fit_params = {}
    if args.method != "knn":
        fit_params["sample_weight"] = balanced_sample_weight(data.y, data.attack)
    detector.fit(first.transform(data.X), data.y, **fit_params)
    pipe = Pipeline([("features", FrozenEstimator(first)), ("detector", detector)])
    with staged_file(out) as tmp:
        persistence.save(pipe, tmp, metadata={"layout": data.layout.to_dict(),
                                              "method": args.method})
    _log().info("fitted %s detector on %d rows -> %s", args.method, len(data.y), out)
    return 0


# -------------------------------------------------------------- evaluate
def _write_plots(out, data, score, method):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .. import metrics

    ax = metrics.plot_roc_curves(data.y, score, data.attack, title=f"{method} detector")
    ax.figure.savefig(out / "roc.png", dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    ax = metrics.plot_score_density(score, np.where(data.y == 0, "authentic", data.attack),
                                    xlabel="detector score (higher = adversarial)")
    ax.figure.savefig(out / "density.png", dpi=120, bbox_inches="tight")
    plt.close(ax.figure)


def cmd_evaluate(args):
    import numpy as np

    from .. import metrics
    from .._layout import FeatureLayout

    check_out_dir(args.out, overwrite=args.overwrite)
    pipe, meta = load_fitted(args.model, trust_pickle=args.trust_pickle)
    data = read_detection_set(args.data, "--data")
    if FeatureLayout.from_dict(meta["layout"]) != data.layout:
        raise UsageError("--model was fitted on features of another model or layer list "
                         "than --data: evaluate on a detection set of the same model")
    score = pipe.decision_function(data.X)
    report = metrics.detection_report(data.y, score, data.attack, output_dict=True)
    if len(data.X_errors):
        report["natural errors flagged"] = float(np.mean(pipe.predict(data.X_errors) == 1))
    with staged_dir(args.out) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        _write_plots(tmp, data, score, meta.get("method", "fitted"))
    print(metrics.detection_report(data.y, score, data.attack), flush=True)
    _log().info("report.json, roc.png, density.png written to %s", args.out)
    return 0


# ---------------------------------------------------------- guard export
def cmd_guard_export(args):
    from ._guard import run_export

    return run_export(args)


# ------------------------------------------------------------- reproduce
def cmd_reproduce(args):
    device = check_device(args.device)
    check_out_dir(args.out, overwrite=args.overwrite, resume=args.resume,
                  resumable=True)
    torch_threads(args.n_jobs)
    from ..experiments.reproduce import reproduce

    with created_dir(args.out, overwrite=args.overwrite) as out:
        reproduce(args.data, args.depth, args.weights, out, size=args.size,
                  device=str(device), n_jobs=args.n_jobs, random_state=args.seed,
                  progress=_progress(args))
    return 0


def cmd_benchmark(args):  # in the parser only where its driver exists
    from ._benchmark import run

    return run(args)
