"""The allocation lock of a feature store: who holds it, and what to do when
its holder is gone.

The lock is the file ``_allocating.lock`` in the store directory, locked with
:func:`fcntl.flock` and holding its owner as JSON (pid, host, time).  The
kernel releases a ``flock`` when its process dies, so a lock file left by a
killed writer is simply taken over (with a logged message naming the dead
owner); a live holder is waited for up to ``lock_timeout`` seconds, then a
:class:`StoreBusyError` (a ``StoreError``) names it.  Where ``fcntl`` is
missing (Windows), the lock is an exclusively created file, and a leftover
whose owner is on this host and no longer running is taken over the same way.
"""

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from ._progress import get_logger
from ._store_format import StoreBusyError, _pid_alive

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["store_lock"]

_log = get_logger("store")
_POLL = 0.05


def _owner():
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _describe(owner):
    if not owner:
        return "an unknown process (the lock file names no owner)"
    return (f"pid {owner.get('pid')} on host {owner.get('host')!r} since "
            f"{owner.get('time')}")


def _read_owner(fd_or_path):
    try:
        if isinstance(fd_or_path, int):
            os.lseek(fd_or_path, 0, os.SEEK_SET)
            raw = os.read(fd_or_path, 4096)
        else:
            raw = Path(fd_or_path).read_bytes()[:4096]
        owner = json.loads(raw.decode("utf-8"))
        return owner if isinstance(owner, dict) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _timeout_error(lock, owner, timeout):
    return StoreBusyError(
        f"{lock} is held by {_describe(owner)}, still running after waiting "
        f"{timeout:g} s (lock_timeout): wait for that extraction to finish, or stop it; "
        "pass a larger lock_timeout to wait longer"
    )


def _write_owner(fd):
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(_owner()).encode())
    os.fsync(fd)


@contextmanager
def _flock(lock, timeout):
    deadline = time.monotonic() + timeout
    while True:
        # a holder unlinks the file before it lets go of the flock, so a file
        # that is there and not locked was left by a process that died
        existed = os.path.lexists(lock)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise _timeout_error(lock, _read_owner(fd), timeout) from None
                    time.sleep(_POLL)
            # the path may have been unlinked (and made anew) while we waited
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        if existed:
            _log.warning("%s: taking over the lock left by %s (that process is gone)",
                         lock, _describe(_read_owner(fd)))
        _write_owner(fd)
        yield
    finally:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def _exclusive_file(lock, timeout):  # pragma: no cover - where fcntl is missing
    deadline = time.monotonic() + timeout
    host = socket.gethostname()
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            owner = _read_owner(lock)
            if owner and owner.get("host") == host and not _pid_alive(owner.get("pid")):
                _log.warning("%s: taking over the lock left by %s (that process is "
                             "gone)", lock, _describe(owner))
                try:
                    os.unlink(lock)
                except FileNotFoundError:
                    pass
                continue
            if time.monotonic() > deadline:
                raise _timeout_error(lock, owner, timeout) from None
            time.sleep(_POLL)
    try:
        _write_owner(fd)
        yield
    finally:
        os.close(fd)
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass


def store_lock(lock, timeout):
    """Context manager holding the lock file ``lock`` (waits ``timeout`` s at most)."""
    lock = Path(lock)
    if fcntl is not None:
        return _flock(lock, float(timeout))
    return _exclusive_file(lock, float(timeout))  # pragma: no cover
