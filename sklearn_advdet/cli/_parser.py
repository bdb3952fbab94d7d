"""The ``advdet`` argument parser (imports argparse only, so that ``--help``
and option errors answer without importing numpy, torch or scikit-learn)."""

import argparse
from pathlib import Path

__all__ = ["build_parser", "parse_eps", "PICKLE_WARNING"]

PICKLE_WARNING = (
    "WARNING: loading a pickle or joblib file can run arbitrary code; pass "
    "--trust-pickle only for a file you made yourself or got from someone you trust. "
    "Files written by `advdet fit` (.advdet) load without running code."
)

_DEPTHS = (20, 32, 44, 56, 110)


def parse_eps(text):
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
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"epsilon {text!r} is outside [0, 1]: pixel units need /255, e.g. 8/255"
        )
    return value


def _existing_path(text):
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text}")
    return path


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _rate(text):
    """'0.05' -> float in [0, 1) (a false-positive rate)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value < 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"expected a false-positive rate in [0, 1), e.g. 0.05, got {text!r}")
    return value


def _n_jobs(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 and value != -1:
        raise argparse.ArgumentTypeError(
            f"--n-jobs must be a positive integer or -1, got {text!r}"
        )
    return value


class _Parser(argparse.ArgumentParser):
    """An option error is ONE line on stderr naming the fix, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _verbosity(p, top):
    default = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of "
                   "one-line errors", **({"default": False} if top else default))
    group = p.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", dest="verbose",
                       help="debug messages too (and the detectors' epoch tables)", **({"default": 0} if top else default))
    group.add_argument("-q", "--quiet", action="store_true", dest="quiet",
                       help="warnings and errors only, no progress bars",
                       **({"default": False} if top else default))


def _common(p, *, device=True, seed=True, jobs=True):
    if device:
        p.add_argument("--device", default="auto",
                       help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    if jobs:
        p.add_argument("--n-jobs", type=_n_jobs, default=None,
                       help="parallel jobs for the scikit-learn side (and torch CPU threads)")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _verbosity(p, top=False)


def _out(p, what, *, resume=False):
    p.add_argument("--out", type=Path, required=True, help=what)
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it exists and is not empty")
    if resume:
        p.add_argument("--resume", action="store_true",
                       help="continue an interrupted run into the existing --out")


def _model_args(p):
    p.add_argument("--depth", type=int, default=20, choices=_DEPTHS,
                   help="CIFAR ResNet depth (default 20)")
    p.add_argument("--weights", type=_existing_path, required=True,
                   help="state-dict file of the CIFAR ResNet (e.g. resnet20-12fca82f.th)")
    p.add_argument("--batch-size", type=_positive_int, default=256)


def _add_data_commands(sub):
    p = sub.add_parser("extract", help="deep features of images -> feature store")
    _model_args(p)
    p.add_argument("--data", type=_existing_path, required=True,
                   help="image folder or tar file in ImageFolder layout")
    _out(p, "feature-store folder to write", resume=True)
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="use a class-stratified subset of N images")
    _common(p, seed=False)

    p = sub.add_parser("attack", help="attack images -> detection set")
    _model_args(p)
    p.add_argument("--data", type=_existing_path, required=True,
                   help="image folder or tar file (the test images)")
    p.add_argument("--reference-data", type=_existing_path, required=True,
                   help="the classifier's training images (folder or tar): the "
                        "reference set of pivots and kNN")
    p.add_argument("--reference-limit", type=_positive_int, default=None,
                   help="use a class-stratified subset of N reference images")
    p.add_argument("--attack", action="append", required=True, metavar="NAME[:EPS]",
                   help="attack and epsilon, e.g. fgsm:8/255, lbfgs; repeat for several")
    _out(p, "detection-set folder to write", resume=True)
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="attack a class-stratified subset of N images")
    _common(p)


def _add_model_commands(sub):
    p = sub.add_parser("fit", help="fit a detector on a detection set -> .advdet file")
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
    p.add_argument("--n-neighbors", type=_positive_int, default=1000)
    p.add_argument("--max-epochs", type=_positive_int, default=100)
    _out(p, "model file to write (sklearn_advdet format, loads without running code; "
            "e.g. model.advdet)")
    _common(p)

    p = sub.add_parser("evaluate", help="score a detection set -> report and plots",
                       epilog=PICKLE_WARNING)
    p.add_argument("--model", type=_existing_path, required=True,
                   help="model file written by `advdet fit`")
    p.add_argument("--data", type=_existing_path, required=True,
                   help="detection-set folder written by `advdet attack`")
    _out(p, "output folder")
    p.add_argument("--trust-pickle", action="store_true",
                   help="also accept a pickle/joblib model file (older advdet versions). "
                        + PICKLE_WARNING)
    _common(p, device=False, seed=False)


def _add_guard_commands(sub):
    g = sub.add_parser("guard", help="classifier + fitted detector as one servable "
                                     "program (advdet guard export)",
                       description="Serve a fitted detector: `advdet guard export` writes "
                                   "a CIFAR ResNet and the detector as one program.")
    gsub = g.add_subparsers(dest="guard_command", metavar="GUARD_COMMAND")
    gsub.required = True
    p = gsub.add_parser(
        "export", help="ResNet + .advdet detector -> calibrated PATH.pt2 + PATH.json",
        description="Wrap a CIFAR ResNet and a fitted detector in a GuardedModel (one "
                    "forward gives the logits and p_adv), set its reject threshold at "
                    "--target-fpr on the correctly classified calibration images, and "
                    "write PATH.pt2 (torch.export) and PATH.json (threshold, layers, "
                    "layout).", epilog=PICKLE_WARNING)
    p.set_defaults(command="guard export")
    p.add_argument("--model", type=_existing_path, required=True,
                   help="detector file written by `advdet fit` (or "
                        "sklearn_advdet.persistence.save)")
    _model_args(p)
    p.add_argument("--calibration-data", type=_existing_path, required=True,
                   help="clean images (folder or tar in ImageFolder layout) that set the "
                        "threshold, e.g. cifar10-jpeg/test.tar")
    p.add_argument("--calibration-limit", type=_positive_int, default=None,
                   help="use a class-stratified subset of N calibration images")
    p.add_argument("--target-fpr", type=_rate, default=0.05,
                   help="share of correctly classified images rejected at most (default 0.05)")
    p.add_argument("--layers", default="cifar_resnet",
                   help="hooked modules: a preset (default cifar_resnet, every basic block, "
                        "as `advdet extract` and `advdet attack` hook them) or "
                        "comma-separated module names")
    _out(p, "path of the files to write: PATH.pt2 and PATH.json")
    p.add_argument("--trust-pickle", action="store_true",
                   help="also accept a pickle/joblib model file (older advdet versions). "
                        + PICKLE_WARNING)
    _common(p)


def _add_demo(sub):
    p = sub.add_parser("demo", help="embedded digits data end to end (about a minute)")
    p.add_argument("--out", type=Path, default=Path("advdet_out"),
                   help="output folder (default advdet_out)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it exists and is not empty")
    p.add_argument("--max-epochs", type=_positive_int, default=100,
                   help="epochs of the LSTM/MLP detectors (paper: 100)")
    _common(p, device=False)


def _add_run_commands(sub, benchmark):
    p = sub.add_parser("reproduce", help="both papers' protocols on CIFAR-10")
    p.add_argument("--data", type=_existing_path, required=True,
                   help="folder holding cifar10-jpeg/{train,test}.tar (or the tars)")
    p.add_argument("--depth", type=int, default=20, choices=_DEPTHS)
    p.add_argument("--weights", type=_existing_path, required=True)
    _out(p, "output folder", resume=True)
    p.add_argument("--size", default="default", choices=("tiny", "default", "full"),
                   help="subset sizes (see docs/reproduction.rst); tiny is for tests")
    _common(p)
    if benchmark is not None:
        benchmark(sub, _common, _out, _existing_path)


def build_parser(benchmark=None):
    """The ``advdet`` parser; ``benchmark(sub, common, out, existing_path)``
    adds the ``benchmark`` sub-command (defined beside its runner in
    :mod:`._benchmark`)."""
    parser = _Parser(
        prog="advdet",
        description="Detect adversarial images from a classifier's deep features.",
        epilog="A mistake in the input ends in one line and exit status 2; "
               "--debug shows the traceback. " + PICKLE_WARNING,
    )
    _verbosity(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_demo(sub)
    _add_data_commands(sub)
    _add_model_commands(sub)
    _add_guard_commands(sub)
    _add_run_commands(sub, benchmark)
    return parser
