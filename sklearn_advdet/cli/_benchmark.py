"""``advdet benchmark``: every detector of the package and every peer under
every evaluation protocol (:func:`sklearn_advdet.experiments.benchmark.run_benchmark`).

The parser part imports nothing heavy; :func:`run` imports the driver."""

from pathlib import Path

from ._errors import UsageError

__all__ = ["add_benchmark_parser", "run"]


def add_benchmark_parser(sub, common, out, existing_path):
    p = sub.add_parser(
        "benchmark",
        help="every detector and peer under every protocol -> Markdown/JSON tables, figures",
        description="Attack a classifier (or take a detection set), extract features once, "
                    "fit every detector and peer, run every protocol (known attacks, "
                    "unseen attacks, leave-one-attack-out, cross-epsilon, transfer) and "
                    "write results.md, results.json and figures/.  Resumable: an "
                    "interrupted run continues with --resume.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=existing_path,
                        help="folder holding cifar10-jpeg/ and weights/ (a CIFAR ResNet run)")
    source.add_argument("--detection-set", type=existing_path,
                        help="a detection set written by `advdet attack`")
    source.add_argument("--digits", action="store_true",
                        help="the embedded digits detection set (small, any machine)")
    p.add_argument("--depth", type=int, default=20, choices=(20, 32, 44, 56, 110),
                   help="CIFAR ResNet depth with --data (default 20)")
    p.add_argument("--weights", type=existing_path, default=None,
                   help="weights file with --data (default: found under --data)")
    p.add_argument("--attack", action="append", default=None, metavar="NAME[:EPS]",
                   help="with --data: attack and epsilon, repeat for several "
                        "(default: the benchmark's attack list)")
    p.add_argument("--transfer-from", type=int, default=None, choices=(20, 32, 44, 56, 110),
                   metavar="DEPTH",
                   help="with --data: also craft FGSM, PGD and MI-FGSM at 8/255 on the "
                        "CIFAR ResNet of this depth (weights under --data) and add the "
                        "images that fool the benchmarked one as families '<attack> from "
                        "resnet<DEPTH>' (black-box transfer)")
    p.add_argument("--test-per-class", type=int, default=150,
                   help="with --data: test images attacked per class (default 150)")
    p.add_argument("--ref-per-class", type=int, default=None,
                   help="with --data: reference images per class (default: all)")
    p.add_argument("--detector", action="append", default=None, metavar="NAME",
                   help="detector to run, repeat for several (default: all)")
    p.add_argument("--protocol", action="append", default=None, metavar="NAME",
                   help="known, unseen (trained on FGSM + PGD), leave_one_attack_out, "
                        "cross_epsilon or transfer; repeat (default: all)")
    p.add_argument("--n-bootstrap", type=int, default=1000,
                   help="bootstrap resamples of the 95%% intervals (default 1000)")
    p.add_argument("--test-size", type=float, default=0.3,
                   help="share of the source images on the test side (default 0.3)")
    p.add_argument("--max-epochs", type=int, default=30,
                   help="epochs of the papers' neural detectors (default 30)")
    a = p.add_argument_group(
        "adaptive attacks (--adaptive, with --data)",
        "Instead of the protocols: each detector (default: pivots_mlp, knn_score, "
        "logit_mahalanobis_logistic, default_hybrid, default_supervised) guarded with the "
        "classifier, its threshold at 5% FPR on clean images, attacked by oblivious, adaptive and "
        "orthogonal PGD at 2, 4 and 8/255; writes adaptive.md and cells.json.")
    a.add_argument("--adaptive", action="store_true",
                   help="run the adaptive-attack figures (needs --data)")
    a.add_argument("--adaptive-training-rounds", type=int, default=0,
                   help="rounds of attack-then-refit of each detector (default 0)")
    a.add_argument("--n-iter", type=int, default=20,
                   help="steps of every attack (default 20)")
    a.add_argument("--n-train", type=int, default=300,
                   help="test images whose clean and PGD versions train a detector (300)")
    a.add_argument("--n-calib", type=int, default=200,
                   help="clean test images that set the threshold (default 200)")
    a.add_argument("--n-eval", type=int, default=200,
                   help="test images attacked for the figures (default 200)")
    out(p, "output folder (tables, figures, cache)", resume=True)
    common(p)


def _source(args):
    """(function, its first arguments) for the chosen source."""
    from ..experiments import benchmark

    if args.data is not None:
        attacks = None
        if args.attack:
            from ..deep.attacks import ATTACKS
            from ._inputs import parse_attack_option

            attacks = [parse_attack_option(a, ATTACKS) for a in args.attack]
        return benchmark.run_benchmark, dict(
            depth=args.depth, weights=args.weights, data_dir=args.data, attacks=attacks,
            ref_per_class=args.ref_per_class, test_per_class=args.test_per_class,
            device=str(_device(args)), source_depth=args.transfer_from)
    if args.attack or args.weights is not None or args.transfer_from is not None:
        raise UsageError("--attack, --weights and --transfer-from go with --data (a CIFAR "
                         "ResNet run)")
    if args.detection_set is not None:
        from ._inputs import read_detection_set

        data = read_detection_set(args.detection_set, "--detection-set")
    else:
        from ..deep.digits_detection import load_digits_detection

        data = load_digits_detection(random_state=args.seed, progress=not args.quiet)
    return benchmark.run_benchmark_on_detection_set, dict(data=data)


def _device(args):
    from ._inputs import check_device

    return check_device(args.device)


def _check_adaptive(args):
    if args.data is None:
        raise UsageError("--adaptive attacks the classifier itself: pass --data (the "
                         "folder holding cifar10-jpeg/ and weights/), not --digits or "
                         "--detection-set")
    sizes = (args.adaptive_training_rounds, args.n_iter, args.n_train, args.n_calib,
             args.n_eval)
    if min(sizes) < 0 or min(sizes[1:]) < 1:
        raise UsageError("--n-iter, --n-train, --n-calib and --n-eval must be positive and "
                         "--adaptive-training-rounds at least 0")


def _adaptive(args, out):
    from ..experiments.adaptive_eval import run_adaptive_cifar

    return run_adaptive_cifar(
        args.depth, args.data, weights=args.weights,
        ref_per_class=500 if args.ref_per_class is None else args.ref_per_class,
        n_train=args.n_train, n_calib=args.n_calib, n_eval=args.n_eval,
        random_state=args.seed, detectors=args.detector, n_iter=args.n_iter,
        adaptive_training_rounds=args.adaptive_training_rounds, out_dir=out,
        max_epochs=args.max_epochs, n_jobs=args.n_jobs)


def run(args):
    from ._output import check_out_dir, created_dir

    if args.n_bootstrap < 1 or args.max_epochs < 1 or not 0.0 < args.test_size < 1.0:
        raise UsageError("--n-bootstrap and --max-epochs must be positive and --test-size "
                         "in (0, 1)")
    check_out_dir(args.out, overwrite=args.overwrite, resume=args.resume,
                  resumable=True)
    if args.adaptive:
        _check_adaptive(args)
        with created_dir(args.out, overwrite=args.overwrite) as out:
            doc = _adaptive(args, out)
        print(doc["markdown"], flush=True)
        return 0
    function, source = _source(args)
    with created_dir(args.out, overwrite=args.overwrite) as out:
        doc = function(out_dir=out, **source, detectors=args.detector,
                       protocols=args.protocol, n_bootstrap=args.n_bootstrap,
                       test_size=args.test_size, max_epochs=args.max_epochs,
                       random_state=args.seed, n_jobs=args.n_jobs,
                       progress=not args.quiet)
    markdown = Path(args.out) / "results.md"
    if markdown.exists():
        print(markdown.read_text(), flush=True)
    from .._progress import get_logger

    get_logger("cli").info("wrote %d files under %s", len(doc.get("paths", [])), args.out)
    return 0
