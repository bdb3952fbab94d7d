"""Chunked, resumable writer of a feature store (see :mod:`sklearn_advdet.store`)."""

import numbers
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from ._store_fingerprint import check_fingerprint
from ._store_format import (_CHUNKS, _LOCK, _MANIFEST, STORE_FORMAT, STORE_VERSION,
                            StoreError, _array_entries, _atomic_write_json, _check_npy,
                            _committed, _load_npy, _marker_text, _n_chunks,
                            _read_generation, _read_manifest, _remove_stale_tmp,
                            _safe)
from ._store_lock import store_lock
from ._validation import check_int

__all__ = ["FeatureStoreWriter"]


def _normalise_metadata(metadata, count):
    out = {}
    for name, values in (metadata or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", str(name)):
            raise ValueError(
                f"metadata names must be letters, digits or _, got {name!r}"
            )
        arr = np.asarray(values)
        if arr.dtype == object:
            arr = arr.astype(str)
        if arr.ndim == 0 or arr.shape[0] != count:
            raise ValueError(
                f"metadata {name!r} has {arr.shape[0] if arr.ndim else 0} rows "
                f"but the store holds {count} samples: give one value per sample"
            )
        out[str(name)] = arr
    return out


def _new_manifest(count, layer_names, layer_sizes, n_classes, chunk_size, has_labels,
                  metadata, model, source, dtype, extra, fingerprint):
    layers = [
        {"name": str(n), "file": f"{i:03d}_{_safe(n)}.npy",
         "shape": [count, int(s)], "dtype": str(np.dtype(dtype))}
        for i, (n, s) in enumerate(zip(layer_names, layer_sizes))
    ]
    arrays = {"logits": None, "predictions": None, "labels": None}
    if n_classes is not None:
        arrays["logits"] = {"file": "logits.npy", "shape": [count, int(n_classes)],
                            "dtype": str(np.dtype(dtype))}
        arrays["predictions"] = {"file": "predictions.npy", "shape": [count],
                                 "dtype": "int64"}
    if has_labels:
        arrays["labels"] = {"file": "labels.npy", "shape": [count], "dtype": "int64"}
    if fingerprint is not None:
        fingerprint = {str(k): (None if v is None else str(v))
                       for k, v in dict(fingerprint).items()}
    return {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "generation": uuid.uuid4().hex,
        "fingerprint": fingerprint,
        "model": model,
        "source": source,
        "count": count,
        "chunk_size": chunk_size,
        "dtype": str(np.dtype(dtype)),
        "layers": layers,
        "arrays": arrays,
        "metadata": {
            name: {"file": f"meta_{name}.npy", "shape": list(a.shape),
                   "dtype": a.dtype.str}
            for name, a in metadata.items()
        },
        "complete": False,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }


class FeatureStoreWriter:
    """Chunked, resumable writer of a feature store.

    Create (or reopen) with :meth:`create`; then, for every chunk index
    returned by :meth:`missing_chunks`, call :meth:`write_chunk`; finally
    :meth:`finalize`. :class:`~sklearn_advdet.deep.extraction.FeatureExtractor`
    does all of this in ``extract_to_store``.
    """

    def __init__(self, path, manifest):
        self.path = Path(path)
        self.manifest = manifest
        self._maps = None
        #: whether :meth:`create` allocated the store (False: it reopened one)
        self.allocated = False

    # -------------------------------------------------------------- create
    @classmethod
    def create(cls, path, *, count, layer_names, layer_sizes, n_classes,
               chunk_size=2048, has_labels=False, metadata=None, model=None,
               source=None, dtype="float32", extra=None, resume=True,
               fingerprint=None, lock_timeout=600.0):
        """Allocate a new store, or reopen a compatible unfinished one.

        Parameters
        ----------
        path : str or path-like
            Store directory (created when missing).
        count : int
            Number of samples (rows).
        layer_names, layer_sizes : sequences
            Hooked layers and their pooled widths.
        n_classes : int or None
            Width of the logits (None: no logits/predictions arrays).
        chunk_size : int, default=2048
            Rows per committed chunk.
        has_labels : bool, default=False
            Allocate ``labels.npy``.
        metadata : dict of array-like, default=None
            Per-sample arrays stored whole as ``meta_<name>.npy``.
        model, source : str, default=None
            Descriptions recorded in the manifest.
        dtype : str, default="float32"
            Dtype of the feature and logit arrays.
        extra : dict, default=None
            More JSON-serialisable manifest entries.
        resume : bool, default=True
            When a compatible store exists at ``path``, reopen it and keep its
            committed chunks; when False, an existing store is deleted first.
        fingerprint : dict of str, default=None
            What the store is made from (e.g. ``{"data": ..., "model": ...,
            "layers": ...}``, see :mod:`sklearn_advdet._store_fingerprint`),
            recorded in the manifest. A resume whose fingerprint differs from
            the recorded one is refused with a :class:`StoreError` naming
            what differs. None records and checks nothing.
        lock_timeout : float, default=600
            Seconds to wait for another live process that is allocating the
            same store; then a :class:`StoreError` names it (pid, host,
            time). A lock left by a process that died is taken over at once.

        Raises
        ------
        StoreError
            When the existing store at ``path`` differs, is damaged, or the
            lock stays held.
        """
        path = Path(path)
        # every argument checked before anything is written
        count = check_int(count, "count", 0)
        chunk_size = check_int(chunk_size, "chunk_size (rows per chunk)", 1)
        if (isinstance(lock_timeout, bool) or not isinstance(lock_timeout, numbers.Real)
                or not lock_timeout >= 0):
            raise ValueError(f"lock_timeout must be seconds >= 0, got {lock_timeout!r}")
        if len(layer_names) != len(layer_sizes):
            raise ValueError("layer_names and layer_sizes differ in length")
        layer_sizes = [check_int(s, "every layer size", 1) for s in layer_sizes]
        if n_classes is not None:
            n_classes = check_int(n_classes, "n_classes (or None)", 1)
        metadata = _normalise_metadata(metadata, count)
        manifest = _new_manifest(count, layer_names, layer_sizes, n_classes, chunk_size,
                                 has_labels, metadata, model, source, dtype, extra,
                                 fingerprint)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not a feature store directory: pick "
                             "another path")
        path.mkdir(parents=True, exist_ok=True)
        with store_lock(path / _LOCK, lock_timeout):
            if (path / _MANIFEST).exists():
                if resume:
                    old = _read_manifest(path)
                    cls._check_compatible(path, old, manifest, metadata)
                    for _, entry in _array_entries(old):
                        _check_npy(path, entry, count)
                    return cls(path, old)
                cls._remove(path)
            cls._allocate(path, manifest, metadata)
        writer = cls(path, manifest)
        writer.allocated = True
        return writer

    @staticmethod
    def _allocate(path, manifest, metadata):
        """Pre-allocate every array, then publish the manifest (last)."""
        others = [f for f in os.listdir(path)
                  if f not in (_LOCK, _CHUNKS) and not f.startswith(".")]
        known = {e["file"] for _, e in _array_entries(manifest)}
        if set(others) - known:
            raise StoreError(
                f"{path} is not empty and holds no feature store "
                f"({sorted(set(others) - known)[:5]}): pick an empty "
                "or new directory"
            )
        shutil.rmtree(path / _CHUNKS, ignore_errors=True)
        _remove_stale_tmp(path)
        for _, entry in _array_entries(manifest):
            if entry["file"].startswith("meta_"):
                continue
            arr = np.lib.format.open_memmap(
                path / entry["file"], mode="w+",
                dtype=np.dtype(entry["dtype"]), shape=tuple(entry["shape"]))
            arr.flush()
            del arr
        for name, a in metadata.items():
            np.save(path / f"meta_{name}.npy", a, allow_pickle=False)
        (path / _CHUNKS).mkdir(exist_ok=True)
        _atomic_write_json(path / _MANIFEST, manifest)

    @staticmethod
    def _check_compatible(path, old, new, metadata):
        check_fingerprint(path, old.get("fingerprint"), new.get("fingerprint"))

        def key(m):
            return (m["count"], m["chunk_size"], m.get("dtype"),
                    [(e["name"], e["shape"]) for e in m["layers"]],
                    {k: (v and v["shape"]) for k, v in m["arrays"].items()},
                    sorted(m["metadata"]), m.get("model"), m.get("source"))
        if key(old) != key(new):
            names = ("count", "chunk size", "dtype", "layers", "arrays", "metadata",
                     "model", "source")
            diff = [n for n, a, b in zip(names, key(old), key(new)) if a != b]
            raise StoreError(
                f"a different feature store already exists at {path} ({', '.join(diff)} "
                "differ): pass resume=False to overwrite it, or another path"
            )
        for name, a in metadata.items():
            stored = _load_npy(path, old["metadata"][name], None)
            if stored.shape != a.shape or not np.array_equal(stored, a):
                raise StoreError(
                    f"metadata {name!r} differs from the one in the existing "
                    f"store at {path}: pass resume=False to overwrite it"
                )

    @staticmethod
    def _remove(path):
        """Delete a store: the manifest first, so that no reader trusts the rest."""
        try:
            old = _read_manifest(path)
        except StoreError:
            old = None
        os.remove(path / _MANIFEST)
        files = set() if old is None else {e["file"] for _, e in _array_entries(old)}
        if old is None:  # damaged manifest: remove what a store can hold
            files = {f for f in os.listdir(path)
                     if f.endswith(".npy") and not f.startswith(".")}
        for f in files:
            if (path / f).exists():
                os.remove(path / f)
        shutil.rmtree(path / _CHUNKS, ignore_errors=True)

    # -------------------------------------------------------------- chunks
    @property
    def count(self):
        return int(self.manifest["count"])

    @property
    def chunk_size(self):
        return int(self.manifest["chunk_size"])

    @property
    def n_chunks(self):
        return _n_chunks(self.manifest)

    def chunk_bounds(self, k):
        """Row range ``(lo, hi)`` of chunk ``k``."""
        if (isinstance(k, bool) or not isinstance(k, numbers.Integral)
                or not 0 <= k < self.n_chunks):
            raise ValueError(
                f"chunk {k!r} does not exist: the store has {self.n_chunks} chunk(s), "
                f"numbered 0 to {self.n_chunks - 1} (see missing_chunks())"
            )
        lo = int(k) * self.chunk_size
        return lo, min(lo + self.chunk_size, self.count)

    def chunks_in(self, start=None, stop=None):
        """Chunk indices whose rows lie in ``[start, stop)``.

        ``start`` and ``stop`` must fall on chunk boundaries (or the end), so
        that shards never share a chunk.
        """
        start = 0 if start is None else int(start)
        stop = self.count if stop is None else min(int(stop), self.count)
        for b, what in ((start, "start"), (stop, "stop")):
            if b % self.chunk_size and b != self.count:
                raise ValueError(
                    f"{what}={b} is not a multiple of chunk_size="
                    f"{self.chunk_size}: shards must cover whole chunks"
                )
        if start > stop:
            raise ValueError(f"start={start} is after stop={stop}")
        return list(range(start // self.chunk_size, -(-stop // self.chunk_size)))

    def committed(self):
        """Set of chunk indices already written."""
        return _committed(self.path, self.manifest)

    def missing_chunks(self, start=None, stop=None):
        """Chunk indices in ``[start, stop)`` not written yet, in order."""
        done = self.committed()
        return [k for k in self.chunks_in(start, stop) if k not in done]

    def _open_maps(self):
        if self._maps is None:
            self._maps = {
                key: _load_npy(self.path, entry, "r+")
                for key, entry in _array_entries(self.manifest)
                if not key.startswith("meta:")
            }
        return self._maps

    def write_chunk(self, k, *, layers, logits=None, labels=None):
        """Write the rows of chunk ``k`` and commit it.

        Parameters
        ----------
        k : int
            Chunk index.
        layers : list of array-like
            One ``(rows, size)`` array per layer, in manifest order.
        logits : array-like of shape (rows, n_classes), default=None
            Required when the store has logits; predictions are their argmax.
        labels : array-like of shape (rows,), default=None
            Required when the store has labels.
        """
        lo, hi = self.chunk_bounds(k)
        maps = self._open_maps()
        if len(layers) != len(self.manifest["layers"]):
            raise ValueError(f"got {len(layers)} layer arrays for "
                             f"{len(self.manifest['layers'])} layers")
        blocks = {f"layer:{e['name']}": a for e, a in zip(self.manifest["layers"], layers)}
        if "logits" in maps:
            if logits is None:
                raise ValueError("this store holds logits: pass logits=")
            blocks["logits"] = logits = np.asarray(logits)
            blocks["predictions"] = logits.argmax(axis=1) if logits.ndim == 2 else logits
        if "labels" in maps:
            if labels is None:
                raise ValueError("this store holds labels: pass labels=")
            blocks["labels"] = labels
        for key, arr in blocks.items():
            arr = np.asarray(arr)
            want = (hi - lo, *maps[key].shape[1:])
            if arr.shape != want:
                raise ValueError(f"chunk {k}: {key} has shape {arr.shape}, the store "
                                 f"needs {want} for rows [{lo}, {hi})")
            maps[key][lo:hi] = arr
        for m in maps.values():
            m.flush()
        self._check_generation()
        marker = self.path / _CHUNKS / f"{k:08d}"
        tmp = self.path / _CHUNKS / f".{k:08d}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(_marker_text(lo, hi, self.manifest.get("generation")))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, marker)

    def finalize(self):
        """Mark the store complete if every chunk is committed.

        Returns
        -------
        complete : bool
        """
        self.close()
        if self.manifest.get("complete"):
            return True
        if len(self.committed()) < self.n_chunks:
            return False
        self._check_generation()
        manifest = dict(self.manifest, complete=True)
        _atomic_write_json(self.path / _MANIFEST, manifest)
        self.manifest = manifest
        # the markers are no longer needed once the manifest says complete
        shutil.rmtree(self.path / _CHUNKS, ignore_errors=True)
        _remove_stale_tmp(self.path)
        return True

    def discard(self, remove_dir=False):
        """Delete the store if none of its chunks is committed; True if deleted.

        For a run that failed before writing anything: it leaves no
        allocated, never-filled store behind (a store with committed chunks
        is kept, to be resumed).  ``remove_dir`` also removes the directory
        when it is left empty.
        """
        self.close()
        if self.committed():
            return False
        if (self.path / _MANIFEST).exists():
            self._remove(self.path)
        if remove_dir and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()
        return True

    def _check_generation(self):
        """Refuse to commit into a store that another process has replaced."""
        now = _read_generation(self.path)
        if now != self.manifest.get("generation"):
            self.close()
            raise StoreError(
                f"the feature store at {self.path} was replaced by another writer "
                f"(generation {self.manifest.get('generation')} is now {now}): this "
                "writer stops; start the extraction again"
            )

    def close(self):
        """Flush and drop the memory maps."""
        if self._maps is not None:
            for m in self._maps.values():
                m.flush()
            self._maps = None
