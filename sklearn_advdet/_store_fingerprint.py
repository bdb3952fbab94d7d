"""Fingerprints of what a feature store was made from (numpy only).

A fingerprint is a dict of short strings, one per input ("data", "labels",
"model", "layers"), recorded in the manifest; a resume compares it with the
fingerprint of the new input and refuses any difference, naming it.

- arrays: a SHA-256 of dtype, shape and content (:func:`array_digest`);
- folders and tar files: names, sizes and modification times of the files
  (:func:`files_digest`), so that a changed, added or removed image shows;
- the model's weights: hashed by the torch side with :func:`digest_chunks`.
"""

import hashlib
import os
from pathlib import Path

import numpy as np

from ._store_format import StoreError

__all__ = ["array_digest", "files_digest", "digest_chunks", "check_fingerprint"]

#: how each fingerprint key is named in messages
_WHAT = {
    "data": "the images",
    "labels": "the labels",
    "model": "the model's weights",
    "layers": "the hooked layers",
}


def digest_chunks(chunks, kind):
    """``"<kind>:sha256:<hex>"`` of an iterable of bytes-like objects."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return f"{kind}:sha256:{h.hexdigest()[:32]}"


def _array_bytes(a):
    a = np.ascontiguousarray(a)
    yield str((a.dtype.str, a.shape)).encode()
    flat = a.reshape(-1).view(np.uint8) if a.size else np.empty(0, np.uint8)
    step = 1 << 24
    for i in range(0, flat.size, step):
        yield memoryview(flat[i:i + step])


def array_digest(*arrays):
    """SHA-256 of the dtypes, shapes and contents of numpy arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet._store_fingerprint import array_digest
    >>> array_digest(np.zeros(3)) == array_digest(np.zeros(3))
    True
    >>> array_digest(np.zeros(3)) == array_digest(np.zeros(3, dtype=np.float32))
    False
    """
    def chunks():
        for a in arrays:
            yield from _array_bytes(np.asarray(a))
    return digest_chunks(chunks(), "array")


def files_digest(path):
    """SHA-256 of the relative names, sizes and mtimes of a folder's files
    (or of one file, e.g. a tar)."""
    path = Path(path)

    def chunks():
        if path.is_dir():
            for dirpath, dirs, files in os.walk(path):
                dirs.sort()
                for f in sorted(files):
                    p = Path(dirpath) / f
                    st = p.stat()
                    rel = p.relative_to(path).as_posix()
                    yield f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
        else:
            st = path.stat()
            yield f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
    return digest_chunks(chunks(), "files")


def check_fingerprint(path, old, new):
    """Raise a StoreError naming what differs between two fingerprints.

    ``new`` None checks nothing; an ``old`` of None (a store written before
    fingerprints) differs from every ``new``.
    """
    if new is None:
        return
    old = old or {}
    diff = [k for k in sorted(set(new) | set(old)) if old.get(k) != new.get(k)]
    if not diff:
        return
    parts = []
    for k in diff:
        was = old.get(k, "not recorded")
        parts.append(f"{_WHAT.get(k, k)} differ (stored {_short(was)}, now "
                     f"{_short(new.get(k, 'not recorded'))})")
    raise StoreError(
        f"the feature store at {path} was extracted from other input: "
        + "; ".join(parts)
        + ". Pass resume=False to overwrite it, or write to another path"
    )


def _short(value):
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
