"""Chunked, resumable writer of a feature store (see :mod:`sklearn_advdet.store`)."""

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from ._store_format import (_CHUNKS, _LOCK, _MANIFEST, STORE_FORMAT, STORE_VERSION,
                            StoreError, _array_entries, _atomic_write_json, _check_npy,
                            _committed, _n_chunks, _read_manifest, _safe)

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

    # -------------------------------------------------------------- create
    @classmethod
    def create(cls, path, *, count, layer_names, layer_sizes, n_classes,
               chunk_size=2048, has_labels=False, metadata=None, model=None,
               source=None, dtype="float32", extra=None, resume=True,
               wait_timeout=600.0):
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
        wait_timeout : float, default=600
            When another process is allocating the same store, wait this many
            seconds for it.
        """
        path = Path(path)
        count = int(count)
        chunk_size = int(chunk_size)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size}")
        if len(layer_names) != len(layer_sizes):
            raise ValueError("layer_names and layer_sizes differ in length")
        metadata = _normalise_metadata(metadata, count)
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
        manifest = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
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
        path.mkdir(parents=True, exist_ok=True)
        lock = path / _LOCK
        deadline = time.monotonic() + wait_timeout
        while True:
            if (path / _MANIFEST).exists():
                old = _read_manifest(path)
                if resume:
                    cls._check_compatible(path, old, manifest, metadata)
                    writer = cls(path, old)
                    for _, entry in _array_entries(old):
                        _check_npy(path, entry, count)
                    return writer
                cls._remove(path, old)
                continue
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"{lock} exists: another process seems to be allocating "
                        "this store. If none is, a crash left the lock behind: "
                        "delete the lock file and the store directory, then "
                        "start again"
                    ) from None
                time.sleep(0.2)
                continue
            try:
                os.close(fd)
                others = [f for f in os.listdir(path)
                          if f not in (_LOCK, _CHUNKS) and not f.startswith(".")]
                known = {e["file"] for _, e in _array_entries(manifest)}
                if set(others) - known:
                    raise StoreError(
                        f"{path} is not empty and holds no feature store "
                        f"({sorted(set(others) - known)[:5]}): pick an empty "
                        "or new directory"
                    )
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
            finally:
                os.remove(lock)
            return cls(path, manifest)

    @staticmethod
    def _check_compatible(path, old, new, metadata):
        def key(m):
            return (m["count"], m["chunk_size"], m["dtype"],
                    [(e["name"], e["shape"]) for e in m["layers"]],
                    {k: (v and v["shape"]) for k, v in m["arrays"].items()},
                    sorted(m["metadata"]), m.get("model"), m.get("source"))
        if key(old) != key(new):
            raise StoreError(
                f"a different feature store already exists at {path} (model, "
                "source, layers, count, chunk size or metadata differ): pass "
                "resume=False to overwrite it, or another path"
            )
        for name, a in metadata.items():
            stored = np.load(path / old["metadata"][name]["file"], allow_pickle=False)
            if stored.shape != a.shape or not np.array_equal(stored, a):
                raise StoreError(
                    f"metadata {name!r} differs from the one in the existing "
                    f"store at {path}: pass resume=False to overwrite it"
                )

    @staticmethod
    def _remove(path, manifest):
        os.remove(path / _MANIFEST)
        for _, entry in _array_entries(manifest):
            f = path / entry["file"]
            if f.exists():
                os.remove(f)
        d = path / _CHUNKS
        if d.is_dir():
            for f in os.listdir(d):
                os.remove(d / f)

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
        lo = k * self.chunk_size
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
                key: np.load(self.path / entry["file"], mmap_mode="r+")
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
        for entry, arr in zip(self.manifest["layers"], layers):
            maps[f"layer:{entry['name']}"][lo:hi] = arr
        if "logits" in maps:
            if logits is None:
                raise ValueError("this store holds logits: pass logits=")
            logits = np.asarray(logits)
            maps["logits"][lo:hi] = logits
            maps["predictions"][lo:hi] = logits.argmax(axis=1)
        if "labels" in maps:
            if labels is None:
                raise ValueError("this store holds labels: pass labels=")
            maps["labels"][lo:hi] = labels
        for m in maps.values():
            m.flush()
        marker = self.path / _CHUNKS / f"{k:08d}"
        tmp = self.path / _CHUNKS / f".{k:08d}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{lo} {hi}\n")
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
        manifest = dict(self.manifest, complete=True)
        _atomic_write_json(self.path / _MANIFEST, manifest)
        self.manifest = manifest
        # the markers are no longer needed once the manifest says complete
        shutil.rmtree(self.path / _CHUNKS, ignore_errors=True)
        return True

    def close(self):
        """Flush and drop the memory maps."""
        if self._maps is not None:
            for m in self._maps.values():
                m.flush()
            self._maps = None
