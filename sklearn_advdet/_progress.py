"""Progress bars and log messages, one convention for the whole package.

- Messages go through ``logging.getLogger("sklearn_advdet")`` (child loggers
  ``sklearn_advdet.<module>``), never ``print`` -- except the CLI's own tables.
- One bar per stage: a stage opens a bar with :func:`progress`; work nested
  inside a stage passes ``nested=True`` (the bar is then removed when done,
  ``leave=False``) or reports through the parent's postfix.
- ``enabled=False`` gives no bar at all; a bar writes to stderr and only when
  stderr is a terminal, so ``advdet demo > log 2>&1`` holds log lines only.
"""

import logging
import sys

__all__ = ["get_logger", "progress"]

LOGGER_NAME = "sklearn_advdet"


def get_logger(name=None):
    """The package logger, or its child ``sklearn_advdet.<name>``."""
    if not name:
        return logging.getLogger(LOGGER_NAME)
    if name.startswith(LOGGER_NAME + ".") or name == LOGGER_NAME:
        return logging.getLogger(name)
    return logging.getLogger(f"{LOGGER_NAME}.{name}")


def _is_terminal(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(total=None, *, enabled=True, desc=None, nested=False, unit="it"):
    """A tqdm bar for one stage (a no-op bar when disabled or not on a terminal).

    Parameters
    ----------
    total : int, default=None
    enabled : bool, default=True
        ``False`` shows nothing.
    desc : str, default=None
    nested : bool, default=False
        The bar belongs to work inside another stage: it disappears when
        done (``leave=False``) instead of leaving one line per call.
    unit : str, default="it"
    """
    from tqdm.auto import tqdm

    disable = (not enabled) or not _is_terminal(sys.stderr)
    return tqdm(total=total, desc=desc, unit=unit, disable=disable,
                leave=not nested, dynamic_ncols=True, file=sys.stderr)
