"""The ``advdet`` command (also ``python -m sklearn_advdet``), the top layer.

Sub-commands::

    advdet demo        embedded digits data end to end, report + plots
    advdet extract     deep features of images -> feature store
    advdet attack      reference + authentic + attacked images -> detection set
    advdet fit         fit a detector on a detection set -> .advdet model file
    advdet evaluate    score a detection set with a fitted detector -> report
    advdet guard export
                       classifier + fitted detector, threshold calibrated
                       -> servable PATH.pt2 (torch.export) + PATH.json
    advdet reproduce   both papers' protocols on CIFAR-10

A user's mistake (a missing or corrupt file, a wrong option, an output that
exists) prints ONE line naming the fix and exits with status 2; ``--debug``
shows the traceback instead.  Messages go through the ``sklearn_advdet``
logger to stderr (``-v`` more, ``-q`` warnings only); tables go to stdout.

Inside the package: ``_errors`` and ``_parser`` at the bottom, ``_output``
and ``_inputs`` above them, ``commands`` (with ``_guard`` and ``_benchmark``,
which it dispatches to) above those, ``main`` here on top.
"""

import os
import sys

from ._benchmark import add_benchmark_parser
from ._errors import EXIT_INTERRUPTED, EXIT_USAGE, USER_ERRORS, UsageError, one_line
from ._parser import build_parser, parse_eps

__all__ = ["main", "UsageError", "build_parser"]

_parse_eps = parse_eps  # kept for the tests and older callers


def _dispatch(args):
    from . import commands

    # a command of a group ("guard export") runs cmd_guard_export
    return getattr(commands, "cmd_" + args.command.replace(" ", "_"))(args)


def main(argv=None):
    """Entry point of the ``advdet`` console script; returns the exit status."""
    parser = build_parser(benchmark=add_benchmark_parser)
    args = parser.parse_args(argv)  # exits 2 with one line on a bad option
    n_jobs = getattr(args, "n_jobs", None)
    if n_jobs is not None and n_jobs > 0:
        os.environ.setdefault("OMP_NUM_THREADS", str(n_jobs))
    from ._output import cli_logging

    with cli_logging(verbose=args.verbose, quiet=args.quiet):
        try:
            return _dispatch(args)
        except KeyboardInterrupt:
            print(f"advdet {args.command}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except USER_ERRORS as exc:
            if args.debug:
                raise
            print(f"advdet {args.command}: error: {one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
