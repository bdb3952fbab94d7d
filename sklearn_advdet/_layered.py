"""Out-of-core reference sets: a lazy 2-D view over per-layer arrays.

A feature store keeps one ``(count, size)`` ``.npy`` file per hooked layer
(memory-mapped on read); :meth:`FeatureStore.get_X` concatenates them into
memory, which a 1.28 M x 2,048 ImageNet reference set (10.5 GB in float32)
cannot afford.  :class:`LayeredView` is the package's ``X`` (the layer blocks
side by side, the logits last) without the concatenation: ``view[rows,
columns]`` reads only the files of the layers those columns belong to, and
only those rows.  :func:`chunked_class_means` is the centroid pass over it:
one layer at a time, a bounded number of rows at a time.

Estimators that accept a view (:class:`~sklearn_advdet.PivotEmbedder`) take
it, or a :class:`~sklearn_advdet.store.FeatureStore`, in ``fit`` or as
``reference``; ``np.asarray(view)`` still works, and materialises the whole
matrix as ``get_X`` would.
"""

from pathlib import Path

import numpy as np

__all__ = ["LayeredView", "as_layered", "chunked_class_means", "row_spans",
           "validate_view"]

# float64 rows buffered per step of the centroid pass (about 32 MB)
_CHUNK_BYTES = 1 << 25


def _reopen(path, include_logits, generation, dtype, check_finite):
    """Unpickle a store view: open the store again, refusing a rewritten one."""
    from .store import StoreError, open_store

    store = open_store(path)
    if store.generation != generation:
        raise StoreError(
            f"the feature store at {path} was rewritten since this view was made "
            f"(generation {generation} is now {store.generation}): build the view again"
        )
    return LayeredView.from_store(store, include_logits=include_logits, dtype=dtype,
                                  check_finite=check_finite)


class LayeredView:
    """Read-only 2-D view of column blocks kept in separate (memory-mapped) arrays.

    Parameters
    ----------
    blocks : sequence of 2-D arrays
        The blocks in column order (e.g. one memmap per layer, then the
        logits), all with the same number of rows.
    layout : FeatureLayout, default=None
        Column layout of the view (a store's :attr:`FeatureStore.layout`).
    names : sequence of str, default=None
        Block names, used in error messages (default ``block0``, ...).
    dtype : {"float32", "float64"}, default=None
        Dtype of the arrays that reads return.  None: float64 when any block
        is float64, else float32 (float16 blocks are widened exactly).
    check_finite : bool, default=True
        Every read checks that the values it returns are finite and raises a
        ValueError naming the block otherwise; the rows are checked as they
        are read, never in a separate pass.

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy.dtype
    layout : FeatureLayout or None
    bytes_read : int
        Bytes of the blocks read by indexing so far (a memory-bound check).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet._layered import LayeredView
    >>> a, b = np.arange(6.0).reshape(3, 2), np.arange(9.0).reshape(3, 3)
    >>> view = LayeredView([a, b])
    >>> view.shape
    (3, 5)
    >>> view[[0, 2], 2:5]         # reads block b only
    array([[0., 1., 2.],
           [6., 7., 8.]])
    >>> view.bytes_read
    48
    >>> np.array_equal(np.asarray(view), np.hstack([a, b]))
    True
    """

    ndim = 2

    def __init__(self, blocks, *, layout=None, names=None, dtype=None, check_finite=True):
        blocks = list(blocks)
        if not blocks or any(np.ndim(b) != 2 for b in blocks):
            raise ValueError("LayeredView needs one or more 2-D blocks")
        n = blocks[0].shape[0]
        if any(b.shape[0] != n for b in blocks):
            raise ValueError(
                f"the blocks have {[b.shape[0] for b in blocks]} rows: every block "
                "must hold one row per sample")
        kinds = [np.dtype(b.dtype) for b in blocks]
        if any(k.kind != "f" for k in kinds):
            raise ValueError(f"LayeredView reads float blocks, got dtypes {kinds}")
        if dtype is None:
            dtype = np.float64 if np.float64 in kinds else np.float32
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self._blocks = blocks
        self._names = list(names) if names is not None else [
            f"block{i}" for i in range(len(blocks))]
        self._edges = np.cumsum([0] + [b.shape[1] for b in blocks])
        self.shape = (int(n), int(self._edges[-1]))
        self.layout = layout
        if layout is not None and layout.n_features != self.shape[1]:
            raise ValueError(f"layout has {layout.n_features} columns, the blocks "
                             f"{self.shape[1]}")
        self.check_finite = bool(check_finite)
        self.bytes_read = 0
        self._source = None

    @classmethod
    def from_store(cls, store, *, include_logits=None, dtype=None, check_finite=True):
        """View of a feature store's ``X`` (opened store or its directory).

        ``include_logits=None`` follows the store's :attr:`layout` (as
        :meth:`FeatureStore.get_X`); the layer files are memory-mapped.
        """
        from .store import open_store

        if isinstance(store, (str, Path)):
            store = open_store(store)
        layout = store.layout
        blocks = [store.layer(i) for i in range(len(store.layer_names))]
        names = list(store.layer_names)
        if include_logits is None:
            include_logits = layout.has_logits
        if include_logits and store.n_classes is not None:
            blocks.append(store.logits)
            names.append("logits")
            if not layout.has_logits:
                from ._layout import FeatureLayout

                layout = FeatureLayout(tuple(layout.sizes) + (store.n_classes,),
                                       names=tuple(layout.names) + ("logits",), has_logits=True)
        elif layout.has_logits:
            from ._layout import FeatureLayout

            layout = FeatureLayout(tuple(layout.sizes)[:-1], names=tuple(layout.names)[:-1])
        view = cls(blocks, layout=layout, names=names, dtype=dtype,
                   check_finite=check_finite)
        view._source = (str(store.path), bool(include_logits), store.generation,
                        view.dtype.str, view.check_finite)
        return view

    def __reduce__(self):
        # a store view pickles (and hashes, for joblib.Memory) as its store's
        # path and generation, never as its data
        if self._source is not None:
            return _reopen, self._source
        return (_rebuild, (self._blocks, self.layout, self._names, self.dtype.str,
                           self.check_finite))

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        where = "" if self._source is None else f", store={self._source[0]!r}"
        return f"LayeredView(shape={self.shape}, dtype={self.dtype}{where})"

    # ---------------------------------------------------------------- reads
    def _columns(self, cols):
        if isinstance(cols, slice) and cols.step in (None, 1):
            start, stop, _ = cols.indices(self.shape[1])
            return start, max(start, stop)
        raise TypeError(
            "LayeredView columns must be a contiguous slice (e.g. a layer's "
            f"layout.slice_of(i)), got {cols!r}")

    def __getitem__(self, key):
        rows, cols = key if isinstance(key, tuple) and len(key) == 2 else (key, slice(None))
        if isinstance(rows, (int, np.integer)):
            return self[[rows], cols][0]
        start, stop = self._columns(cols)
        parts = []
        for i, block in enumerate(self._blocks):
            lo, hi = max(start, self._edges[i]), min(stop, self._edges[i + 1])
            if lo >= hi:
                continue
            local = block[rows, lo - self._edges[i] : hi - self._edges[i]]
            self.bytes_read += local.size * block.dtype.itemsize
            part = np.array(local, dtype=self.dtype)  # a copy: never the map itself
            self._check_finite(part, i)
            parts.append(part)
        if not parts:  # an empty column range
            return np.empty((self._blocks[0][rows, :0].shape[0], 0), dtype=self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("a LayeredView cannot be viewed as one array without a copy")
        out = self[:, :]
        return out if dtype is None else out.astype(dtype, copy=False)

    def block(self, i):
        """Block ``i`` itself (a store layer's read-only memmap), not a copy.

        For code that streams over all rows in its own blocks (an exact k-NN
        search screening reference blocks): nothing is read, nothing checked.
        """
        arr = self._blocks[i]
        if isinstance(arr, np.ndarray) and arr.flags.writeable:
            arr = arr.view()
            arr.flags.writeable = False
        return arr

    def aligned_block(self, cols):
        """The block holding exactly the columns ``cols`` (a slice), or None.

        The block itself (see :meth:`block`), after a chunked pass that
        checks its values are finite when ``check_finite`` (a ValueError
        naming the block otherwise): what an exact k-NN index of one layer
        keeps, never a copy.  None when no single block holds exactly those
        columns.
        """
        start, stop = self._columns(cols)
        for i in range(len(self._blocks)):
            if (self._edges[i], self._edges[i + 1]) != (start, stop):
                continue
            arr = self.block(i)
            for a, b in row_spans(arr.shape[0], arr.shape[1]):
                self._check_finite(arr[a:b], i)
            return arr
        return None

    def _check_finite(self, values, i):
        """With ``check_finite``: a ValueError naming block ``i`` if ``values`` are not finite."""
        if self.check_finite and not np.isfinite(values).all():
            raise ValueError(
                f"the reference block {self._names[i]!r} holds NaN or infinite "
                "values: recompute those features (or drop the rows) before fitting")


def _rebuild(blocks, layout, names, dtype, check_finite):
    return LayeredView(blocks, layout=layout, names=names, dtype=dtype,
                       check_finite=check_finite)


def row_spans(n_rows, width, chunk_bytes=None):
    """``[(start, stop), ...]`` covering ``n_rows`` rows, each about ``chunk_bytes``
    of float64 at ``width`` columns (default ``_CHUNK_BYTES``): the chunks of
    every pass that reads an out-of-core block."""
    chunk_bytes = _CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    step = max(1, chunk_bytes // (8 * max(width, 1)))
    return [(a, min(a + step, n_rows)) for a in range(0, n_rows, step)]


def as_layered(X):
    """X as a :class:`LayeredView` when it is one or a feature store, else None."""
    if isinstance(X, LayeredView):
        return X
    if hasattr(X, "get_X") and hasattr(X, "layer") and hasattr(X, "labels"):
        return LayeredView.from_store(X)
    return None


def chunked_class_means(X, y_idx, n_classes, cols):
    """Per-class means of ``X[:, cols]`` in float64, reading rows chunk by chunk.

    Each class's rows are added to its float64 running sum one after the
    other in row order, across chunks, so the result equals
    ``X[y_idx == k, cols].astype(float64).mean(axis=0)`` bit for bit, the
    in-memory centroid (numpy reduces the rows of a C-ordered block in row
    order too).  Memory: one chunk of about ``_CHUNK_BYTES / 2`` plus the
    ``(n_classes, d)`` sums.

    Parameters
    ----------
    X : LayeredView or ndarray of shape (n, n_features)
    y_idx : ndarray of shape (n,)
        Class index ``0 .. n_classes - 1`` of every row.
    n_classes : int
    cols : slice
        Columns of one layer.

    Returns
    -------
    means : ndarray of shape (n_classes, d)
    """
    start, stop, _ = cols.indices(X.shape[1])
    d = stop - start
    sums = np.zeros((n_classes, d))
    acc = list(sums)  # one running-sum view per class
    seen = np.zeros(n_classes, dtype=bool)
    for lo, hi in row_spans(X.shape[0], d):
        block = X[lo:hi, cols]
        for row, k in zip(block, y_idx[lo:hi].tolist()):
            if seen[k]:
                np.add(acc[k], row, out=acc[k])
            else:  # a reduction starts from the first row itself (keeps -0.0)
                acc[k][...] = row
                seen[k] = True
    counts = np.bincount(y_idx, minlength=n_classes)
    return sums / counts[:, None]


def validate_view(estimator, X, y=None, *, reset=True, labels=False):
    """``validate_data`` for an out-of-core ``X``: ``(view, y)``, or None for arrays.

    ``X`` a :class:`LayeredView` or a feature store (viewed).  ``reset``
    sets ``n_features_in_`` (and drops ``feature_names_in_``: a view has no
    column names), else checks it.  ``labels=True``: ``y`` is required, one
    label per row, and defaults to the store's labels.  Nothing is read but
    the labels.
    """
    view = as_layered(X)
    if view is None:
        return None
    name = type(estimator).__name__
    if reset:
        estimator.n_features_in_ = view.shape[1]
        vars(estimator).pop("feature_names_in_", None)
    elif view.shape[1] != estimator.n_features_in_:
        raise ValueError(f"X has {view.shape[1]} features, but {name} is expecting "
                         f"{estimator.n_features_in_} features as input.")
    if not labels:
        return view, y
    if y is None and view is not X:
        y = X.labels
    if y is None:
        raise ValueError(f"{name}.fit needs y, the class label of every row of X "
                         "(this feature store holds no labels)")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != view.shape[0]:
        raise ValueError(f"y has shape {y.shape} for {view.shape[0]} rows of X: pass "
                         "one class label per row")
    return view, y
