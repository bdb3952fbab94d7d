"""Feature store: deep features of an image set, on disk, memory-mapped.

A store is a directory::

    manifest.json          model, layers (names, sizes, files), dtype, count,
                           source, version, chunk size, complete flag
    000_layer1.0.npy ...   one (count, size) float array per hooked layer
    logits.npy             (count, n_classes) float array
    predictions.npy        (count,) int64: argmax of the logits
    labels.npy             (count,) int64 true classes (when known)
    meta_<name>.npy        (count, ...) per-sample metadata arrays
    _chunks/<k>            one marker per committed chunk (while writing;
                           removed once the store is complete)

Writing: every array is pre-allocated with :func:`numpy.lib.format.open_memmap`
and filled chunk by chunk (chunk ``k`` = rows ``[k * chunk_size, (k + 1) *
chunk_size)``). A chunk counts as written only once its rows are flushed and
its marker has been created atomically (temporary file + :func:`os.replace`).
A run that is killed and started again recomputes exactly the chunks without a
marker, so the finished store has the same arrays as an uninterrupted run: no
duplicate rows, no gaps. Because rows have fixed places, several processes can
fill disjoint index ranges (``start``/``stop``) of the same store. The
manifest says ``"complete": true`` only after every chunk is committed, and
:meth:`FeatureStore.open` refuses incomplete, truncated or inconsistent stores
with an error that says what is wrong.

Reading needs only numpy: this module does not import torch.
"""

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from .._layout import FeatureLayout

__all__ = ["FeatureStore", "FeatureStoreWriter", "open_store", "StoreError",
           "STORE_FORMAT", "STORE_VERSION"]

STORE_FORMAT = "sklearn_advdet.feature_store"
STORE_VERSION = 1
_MANIFEST = "manifest.json"
_CHUNKS = "_chunks"
_LOCK = "_allocating.lock"


class StoreError(ValueError):
    """A feature store is missing, incomplete, truncated or inconsistent."""


def _safe(name):
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(name))


def _atomic_write_json(path, obj):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_manifest(path):
    mpath = Path(path) / _MANIFEST
    if not mpath.is_file():
        raise StoreError(
            f"{path} is not a feature store: {_MANIFEST} is missing (extract "
            "one with FeatureExtractor.extract_to_store)"
        )
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{mpath} is not valid JSON ({exc}): the store is damaged") from None
    if manifest.get("format") != STORE_FORMAT:
        raise StoreError(f"{mpath} is not a {STORE_FORMAT} manifest")
    if manifest.get("version", 0) > STORE_VERSION:
        raise StoreError(
            f"{path} was written by a newer sklearn_advdet (store version "
            f"{manifest['version']} > {STORE_VERSION}): upgrade to read it"
        )
    return manifest


def _array_entries(manifest):
    """(key, entry) for every array file the manifest promises."""
    out = [(f"layer:{e['name']}", e) for e in manifest["layers"]]
    for key in ("logits", "predictions", "labels"):
        if manifest["arrays"].get(key) is not None:
            out.append((key, manifest["arrays"][key]))
    for name, e in manifest["metadata"].items():
        out.append((f"meta:{name}", e))
    return out


def _check_npy(path, entry, count):
    """Check that an .npy file holds the promised shape/dtype and full data."""
    fpath = Path(path) / entry["file"]
    if not fpath.is_file():
        raise StoreError(f"feature store {path} is missing {entry['file']}")
    with open(fpath, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        except ValueError as exc:
            raise StoreError(f"{fpath} is not a valid .npy file ({exc})") from None
        header_end = f.tell()
    expected_shape = (count, *entry["shape"][1:])
    if tuple(shape) != tuple(expected_shape) or np.dtype(entry["dtype"]) != dtype:
        raise StoreError(
            f"{fpath} holds {dtype} {tuple(shape)} but the manifest promises "
            f"{entry['dtype']} {expected_shape}: the store is inconsistent, "
            "extract it again"
        )
    needed = header_end + int(np.prod(shape)) * dtype.itemsize
    actual = os.path.getsize(fpath)
    if actual < needed:
        raise StoreError(
            f"{fpath} is truncated ({actual} bytes, {needed} needed): the "
            "store is damaged, extract it again"
        )


class FeatureStore:
    """Read access to a feature store (memory-mapped).

    Use :meth:`open` (or :func:`open_store`); the constructor is not public.

    Attributes
    ----------
    path : pathlib.Path
    manifest : dict
        The parsed ``manifest.json``.
    layout : FeatureLayout
        Column layout of :attr:`X` (layer names = module names; the logits
        block last when the store has logits).

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from sklearn_advdet.deep.store import FeatureStoreWriter, open_store
    >>> path = tempfile.mkdtemp()
    >>> w = FeatureStoreWriter.create(
    ...     path, count=4, layer_names=["a", "b"], layer_sizes=[2, 3],
    ...     n_classes=2, chunk_size=2, has_labels=True)
    >>> rng = np.random.default_rng(0)
    >>> for k in w.missing_chunks():
    ...     lo, hi = w.chunk_bounds(k)
    ...     w.write_chunk(k, layers=[rng.random((hi - lo, 2)), rng.random((hi - lo, 3))],
    ...                   logits=rng.random((hi - lo, 2)), labels=np.zeros(hi - lo))
    >>> w.finalize()
    True
    >>> store = open_store(path)
    >>> len(store), store.X.shape, store.layout.names
    (4, (4, 7), ('a', 'b', 'logits'))
    >>> store.layer("b").shape
    (4, 3)
    """

    def __init__(self, path, manifest, mmap_mode="r"):
        self.path = Path(path)
        self.manifest = manifest
        self._mmap_mode = mmap_mode
        self._cache = {}

    # ------------------------------------------------------------------ open
    @classmethod
    def open(cls, path, mmap_mode="r", allow_incomplete=False):
        """Open a store for reading, checking that it is whole.

        Parameters
        ----------
        path : str or path-like
            The store directory.
        mmap_mode : {"r", None}, default="r"
            ``"r"`` memory-maps the arrays; None reads them into memory.
        allow_incomplete : bool, default=False
            Open a store whose extraction has not finished (rows of chunks
            not yet written are zeros). For inspection only.

        Raises
        ------
        StoreError (a ValueError)
            When the store is missing, incomplete, truncated or inconsistent.
        """
        path = Path(path)
        manifest = _read_manifest(path)
        count = int(manifest["count"])
        if not manifest.get("complete", False) and not allow_incomplete:
            done = len(_committed(path, manifest))
            raise StoreError(
                f"feature store {path} is incomplete ({done} of "
                f"{_n_chunks(manifest)} chunks written): run the extraction "
                "again with resume=True to finish it"
            )
        for _, entry in _array_entries(manifest):
            _check_npy(path, entry, count)
        return cls(path, manifest, mmap_mode=mmap_mode)

    def _load(self, entry):
        key = entry["file"]
        if key not in self._cache:
            self._cache[key] = np.load(self.path / key, mmap_mode=self._mmap_mode,
                                       allow_pickle=False)
        return self._cache[key]

    # ----------------------------------------------------------- properties
    def __len__(self):
        return int(self.manifest["count"])

    def __repr__(self):
        return (f"FeatureStore({str(self.path)!r}, count={len(self)}, "
                f"layers={len(self.manifest['layers'])}, model={self.model!r})")

    @property
    def model(self):
        return self.manifest.get("model")

    @property
    def source(self):
        return self.manifest.get("source")

    @property
    def layer_names(self):
        return [e["name"] for e in self.manifest["layers"]]

    @property
    def layer_sizes(self):
        return [int(e["shape"][1]) for e in self.manifest["layers"]]

    @property
    def n_classes(self):
        entry = self.manifest["arrays"].get("logits")
        return None if entry is None else int(entry["shape"][1])

    @property
    def layout(self):
        """FeatureLayout of :attr:`X` (logits block last when present)."""
        sizes, names = self.layer_sizes, self.layer_names
        has_logits = self._x_has_logits
        if has_logits:
            sizes, names = sizes + [self.n_classes], names + ["logits"]
        return FeatureLayout(sizes, names=names, has_logits=has_logits)

    @property
    def _x_has_logits(self):
        return self.n_classes is not None and bool(
            self.manifest.get("include_logits", True))

    def layer(self, name):
        """The (count, size) array of one layer (by name or index)."""
        entries = self.manifest["layers"]
        if isinstance(name, str):
            match = [e for e in entries if e["name"] == name]
            if not match:
                if name == "logits" and self.n_classes is not None:
                    return self.logits
                raise KeyError(f"no layer {name!r} in the store; layers are "
                               f"{self.layer_names}")
            return self._load(match[0])
        return self._load(entries[name])

    @property
    def logits(self):
        entry = self.manifest["arrays"].get("logits")
        return None if entry is None else self._load(entry)

    @property
    def predictions(self):
        entry = self.manifest["arrays"].get("predictions")
        return None if entry is None else self._load(entry)

    @property
    def labels(self):
        """True class labels, or None when the store has none."""
        entry = self.manifest["arrays"].get("labels")
        return None if entry is None else self._load(entry)

    @property
    def metadata(self):
        """dict of per-sample metadata arrays."""
        return {name: self._load(e) for name, e in self.manifest["metadata"].items()}

    def get_X(self, layers="all", include_logits=None, rows=None, dtype=np.float32):
        """Concatenate layer arrays into the 2-D ``X`` (materialised).

        Parameters
        ----------
        layers : "all" or list of str/int, default="all"
            Which layers, in store order.
        include_logits : bool, default=None
            Append the logits block (when the store has one). None: as the
            extraction was configured (``include_logits`` in the manifest,
            True when absent), which is what :attr:`layout` describes.
        rows : slice or index array, default=None
            Read only these rows.
        dtype : numpy dtype, default=np.float32

        Returns
        -------
        X : ndarray of shape (n_rows, n_columns)
        """
        idx = self.layout.select(layers)
        blocks = [self._load(self.manifest["layers"][i]) for i in idx]
        if include_logits is None:
            include_logits = self._x_has_logits
        if include_logits and self.n_classes is not None:
            blocks.append(self.logits)
        if rows is not None:
            blocks = [b[rows] for b in blocks]
        return np.concatenate([np.asarray(b, dtype=dtype) for b in blocks], axis=1)

    @property
    def X(self):
        """All layers (then the logits), float32, materialised; see :attr:`layout`."""
        return self.get_X()


def open_store(path, mmap_mode="r", allow_incomplete=False):
    """Open a feature store for reading; see :meth:`FeatureStore.open`."""
    return FeatureStore.open(path, mmap_mode=mmap_mode,
                             allow_incomplete=allow_incomplete)


# ---------------------------------------------------------------- writing
def _n_chunks(manifest):
    count, cs = int(manifest["count"]), int(manifest["chunk_size"])
    return max(1, -(-count // cs)) if count else 0


def _committed(path, manifest):
    d = Path(path) / _CHUNKS
    n = _n_chunks(manifest)
    if manifest.get("complete"):
        return set(range(n))
    if not d.is_dir():
        return set()
    out = set()
    for f in os.listdir(d):
        if f.isdigit() and int(f) < n:
            out.add(int(f))
    return out


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
