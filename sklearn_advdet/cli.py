"""The ``advdet`` command (also ``python -m sklearn_advdet``).

Sub-commands::

    advdet demo        embedded digits data end to end, report + plots
    advdet extract     deep features of images -> feature store
    advdet attack      reference + authentic + attacked images -> detection set
    advdet fit         fit a detector on a detection set -> joblib file
    advdet evaluate    score a detection set with a fitted detector -> report
    advdet reproduce   both papers' protocols on CIFAR-10

User errors (a missing file, a wrong format, a bad option) print one line and
exit with status 2; ``--debug`` shows the traceback instead.
"""

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main", "UsageError"]


class UsageError(Exception):
    """An error in what the user asked for: printed as one line, exit 2."""


# Errors that mean "the input or an option is wrong", not "the program is".
_USER_ERRORS = (
    UsageError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,
    TypeError,
)


def _parse_eps(text):
    """'0.03', '8/255' -> float in [0, 1]."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"invalid epsilon {text!r}: give a number in [0, 1] or a fraction like 8/255"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"epsilon {text!r} is outside [0, 1]: pixel units need /255, e.g. 8/255"
        )
    return value


def _existing_path(text):
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text}")
    return path


def _common(p, *, device=True, seed=True, jobs=True):
    if device:
        p.add_argument("--device", default="auto",
                       help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    if jobs:
        p.add_argument("--n-jobs", type=int, default=None,
                       help="parallel jobs for the scikit-learn side (and torch CPU threads)")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _model_args(p):
    p.add_argument("--depth", type=int, default=20, choices=(20, 32, 44, 56, 110),
                   help="CIFAR ResNet depth (default 20)")
    p.add_argument("--weights", type=_existing_path, required=True,
                   help="state-dict file of the CIFAR ResNet (e.g. resnet20-12fca82f.th)")
    p.add_argument("--batch-size", type=int, default=256)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="advdet",
        description="Detect adversarial images from a classifier's deep features.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("demo", help="embedded digits data end to end (about a minute)")
    p.add_argument("--out", default="advdet_out", help="output folder (default advdet_out)")
    p.add_argument("--max-epochs", type=int, default=100,
                   help="epochs of the LSTM/MLP detectors (paper: 100)")
    _common(p, device=False)

    p = sub.add_parser("extract", help="deep features of images -> feature store")
    _model_args(p)
    p.add_argument("--data", type=_existing_path, required=True,
                   help="image folder or tar file in ImageFolder layout")
    p.add_argument("--out", required=True, help="feature-store folder to write")
    p.add_argument("--limit", type=int, default=None,
                   help="use a class-stratified subset of N images")
    _common(p, seed=False)

    p = sub.add_parser("attack", help="attack images -> detection set")
    _model_args(p)
    p.add_argument("--data", type=_existing_path, required=True,
                   help="image folder or tar file (the test images)")
    p.add_argument("--reference-data", type=_existing_path, required=True,
                   help="the classifier's training images (folder or tar): the "
                        "reference set of pivots and kNN")
    p.add_argument("--reference-limit", type=int, default=None,
                   help="use a class-stratified subset of N reference images")
    p.add_argument("--attack", action="append", required=True, metavar="NAME[:EPS]",
                   help="attack and epsilon, e.g. fgsm:8/255, lbfgs; repeat for several")
    p.add_argument("--out", required=True, help="detection-store folder to write")
    p.add_argument("--limit", type=int, default=None,
                   help="attack a class-stratified subset of N images")
    _common(p)

    p = sub.add_parser("fit", help="fit a detector on a detection set -> joblib file")
    p.add_argument("--train", type=_existing_path, required=True,
                   help="detection-set folder written by `advdet attack`")
    p.add_argument("--reference", type=_existing_path, default=None,
                   help="feature store (from `advdet extract`) of the classifier's "
                        "training images; default: the detection set's reference")
    p.add_argument("--method", default="lstm", choices=("lstm", "mlp", "knn"))
    p.add_argument("--pivots", default="medoid", choices=("medoid", "centroid"))
    p.add_argument("--metric", default="euclidean",
                   choices=("euclidean", "cosine", "cosine_similarity"))
    p.add_argument("--layer", default="-1",
                   help="kNN: layer name or index to score (default: last hidden layer)")
    p.add_argument("--n-neighbors", type=int, default=1000)
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--out", required=True, help="joblib file to write")
    _common(p)

    p = sub.add_parser("evaluate", help="score a detection set -> report and plots")
    p.add_argument("--model", type=_existing_path, required=True,
                   help="joblib file written by `advdet fit`")
    p.add_argument("--data", type=_existing_path, required=True,
                   help="detection-set folder written by `advdet attack`")
    p.add_argument("--out", required=True, help="output folder")
    _common(p, device=False, seed=False)

    p = sub.add_parser("reproduce", help="both papers' protocols on CIFAR-10")
    p.add_argument("--data", type=_existing_path, required=True,
                   help="folder holding cifar10-jpeg/{train,test}.tar (or the tars)")
    p.add_argument("--depth", type=int, default=20, choices=(20, 32, 44, 56, 110))
    p.add_argument("--weights", type=_existing_path, required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", default="default", choices=("tiny", "default", "full"),
                   help="subset sizes (see docs/reproduction.rst); tiny is for tests")
    _common(p)
    return parser


def _cmd_demo(args):
    from ._demo import run_demo

    run_demo(args.out, random_state=args.seed, n_jobs=args.n_jobs,
             max_epochs=args.max_epochs, progress=not args.quiet)
    return 0


def _dispatch(args):
    if args.command == "demo":
        return _cmd_demo(args)
    from . import _cli_commands

    return getattr(_cli_commands, "cmd_" + args.command)(args)


def main(argv=None):
    """Entry point of the ``advdet`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with one line on a bad option
    n_jobs = getattr(args, "n_jobs", None)
    if n_jobs is not None and n_jobs < 1 and n_jobs != -1:
        parser.error(f"--n-jobs must be a positive integer or -1, got {n_jobs}")
    if n_jobs and n_jobs > 0:
        os.environ.setdefault("OMP_NUM_THREADS", str(n_jobs))
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("advdet: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as exc:
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"advdet {args.command}: error: {message}", file=sys.stderr)
        return 2
