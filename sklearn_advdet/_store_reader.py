"""Read access to a feature store (see :mod:`sklearn_advdet.store`)."""

from pathlib import Path

import numpy as np

from ._layout import FeatureLayout
from ._store_format import StoreError, _array_entries, _check_npy, _committed, _load_npy
from ._store_format import _n_chunks, _read_generation, _read_manifest

__all__ = ["FeatureStore", "open_store"]


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
    >>> from sklearn_advdet.store import FeatureStoreWriter, open_store
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
        """One array; the manifest's generation is checked on every access
        (after loading), so a store rewritten since :meth:`open` is refused
        instead of mixing the arrays of two writes."""
        key = entry["file"]
        arr = self._cache.get(key)
        if arr is None:
            arr = _load_npy(self.path, entry, self._mmap_mode)
        self.check_generation()
        self._cache[key] = arr
        return arr

    @property
    def generation(self):
        """Id of the write this store belongs to (None for version-1 stores)."""
        return self.manifest.get("generation")

    @property
    def fingerprint(self):
        """What the store was extracted from (dict), or None."""
        return self.manifest.get("fingerprint")

    def check_generation(self):
        """Raise a StoreError when the store at :attr:`path` is no longer the
        write that was opened (rewritten, being rewritten, or deleted)."""
        try:
            now = _read_generation(self.path)
        except StoreError as exc:
            raise StoreError(
                f"the feature store at {self.path} changed since it was opened "
                f"({exc}): open it again") from None
        if now != self.generation:
            raise StoreError(
                f"the feature store at {self.path} was rewritten since it was opened "
                f"(generation {self.generation} is now {now}): open it again to read "
                "the new write"
            )

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


