"""Where the CLI's messages and files go: logging set-up, and output paths
that are checked before any work and never left half-written."""

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from ._errors import UsageError

__all__ = ["cli_logging", "check_out_dir", "check_out_file", "staged_dir", "staged_file",
           "created_dir"]

_LOGGER = "sklearn_advdet"


class _Formatter(logging.Formatter):
    def format(self, record):
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"advdet: {record.levelname.lower()}: {text}"
        return text


@contextlib.contextmanager
def cli_logging(verbose=0, quiet=False):
    """A stderr handler on the ``sklearn_advdet`` logger for one CLI call.

    Default level INFO (one line per finished stage), ``-q`` WARNING, ``-v``
    DEBUG.  The handler is removed afterwards (``main`` may run in-process).
    """
    logger = logging.getLogger(_LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(message)s"))
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    old_showwarning = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        # a warning is one log line, not the source file and line twice
        text = str(message).strip().splitlines()
        logger.warning("%s: %s", category.__name__, text[0] if text else "")

    warnings.showwarning = showwarning
    try:
        yield logger
    finally:
        warnings.showwarning = old_showwarning
        handler.flush()
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def _non_empty(path):
    return path.is_dir() and any(path.iterdir())


def check_out_dir(path, *, overwrite=False, resume=False, resumable=False, option="--out"):
    """Refuse a folder ``path`` that is a file, or not empty without a flag
    (``--overwrite``, or ``--resume`` for a ``resumable`` command)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file: give a folder path")
    if _non_empty(path) and not (overwrite or resume):
        hint = "--resume to continue it, --overwrite" if resumable else "--overwrite"
        raise UsageError(
            f"{option} {path} exists and is not empty: pass {hint} to replace it, "
            "or choose another folder"
        )
    parent = path.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is a file, not a folder")
    return path


def check_out_file(path, *, overwrite=False, option="--out"):
    """Refuse a file ``path`` that is a folder, or exists without --overwrite."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder: give a file path, e.g. model.advdet")
    if path.exists() and not overwrite:
        raise UsageError(f"{option} {path} exists: pass --overwrite to replace it")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{option} {path}: {parent} is a file, not a folder")
            break
    return path


@contextlib.contextmanager
def staged_dir(path):
    """Write a folder under a temporary name beside ``path``; rename on success.

    On failure nothing is left: neither the temporary folder nor a changed
    ``path`` (an existing ``path`` is replaced only once the new one is whole).
    """
    path = Path(path)
    path.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp",
                                dir=path.absolute().parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_file(path):
    """Write a file under a temporary name beside ``path``; rename on success."""
    path = Path(path)
    path.absolute().parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                dir=path.absolute().parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def created_dir(path, *, overwrite=False):
    """A folder written in place (a resumable store): ``--overwrite`` empties
    it first; a folder this call created is removed again if the call fails
    (an interrupt keeps it, so that ``--resume`` can continue)."""
    path = Path(path)
    if overwrite and path.exists():
        shutil.rmtree(path)
    created = not path.exists()
    try:
        yield path
    except KeyboardInterrupt:
        raise
    except BaseException:
        if created and path.exists():
            shutil.rmtree(path, ignore_errors=True)
        raise
