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
            device=str(_device(args)))
    if args.attack or args.weights is not None:
        raise UsageError("--attack and --weights go with --data (a CIFAR ResNet run)")
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


def run(args):
    from ._output import check_out_dir, created_dir

    if args.n_bootstrap < 1 or args.max_epochs < 1 or not 0.0 < args.test_size < 1.0:
        raise UsageError("--n-bootstrap and --max-epochs must be positive and --test-size "
                         "in (0, 1)")
    check_out_dir(args.out, overwrite=args.overwrite, resume=args.resume,
                  resumable=True)
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
