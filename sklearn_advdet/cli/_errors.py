"""The CLI's error convention (bottom layer of :mod:`sklearn_advdet.cli`).

A mistake of the user (a missing or corrupt file, a wrong option, a machine
without the asked-for device) ends in ONE line on stderr that names the fix,
and exit status 2; ``advdet --debug ...`` shows the traceback instead.  A bug
of the program keeps its traceback (exit 1).
"""

import errno
import zipfile

__all__ = ["UsageError", "USER_ERRORS", "one_line", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """An error in what the user asked for: printed as one line, exit 2."""


# Errors that mean "the input or an option is wrong", not "the program is".
# OSError covers missing files, permissions, a folder given for a file, a
# full disk; zipfile.BadZipFile and EOFError a truncated archive; MemoryError
# a batch too large for the machine.
USER_ERRORS = (
    UsageError,
    OSError,
    ValueError,
    TypeError,
    EOFError,
    zipfile.BadZipFile,
    MemoryError,
)

_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.EACCES: "check the permissions or choose another path",
    errno.EPERM: "check the permissions or choose another path",
    errno.EISDIR: "give a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOSPC: "free disk space or choose another --out",
    errno.EEXIST: "choose another path or pass --overwrite",
    errno.EROFS: "the file system is read-only: choose another --out",
}


def one_line(exc):
    """The message of ``exc`` as one line that says what to do."""
    if isinstance(exc, MemoryError):
        return "out of memory: lower --batch-size or --limit"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename is not None else ""
        hint = _OS_HINTS.get(exc.errno)
        return f"{exc.strerror}{where}" + (f" ({hint})" if hint else "")
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) if len(lines) <= 3 else lines[0]
