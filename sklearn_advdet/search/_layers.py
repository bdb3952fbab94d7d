"""Per-hooked-layer reference indexes, shared by the estimators that search.

:class:`LayerIndexMixin` gives an estimator one index per selected hidden
layer of ``X`` (through :func:`~sklearn_advdet.search.make_index`, with an
optional per-layer preprocessing fitted on the references), the public
``kneighbors`` and the per-layer query; :class:`~sklearn_advdet.KNNClassScorer`
and :class:`~sklearn_advdet.LIDScorer` use it, so both search the same way.
"""

import numpy as np
from sklearn.decomposition import PCA
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import make_index

__all__ = ["LayerIndexMixin", "ChunkedPCA", "fit_preprocessing", "fit_preprocessing_view",
           "apply_preprocessing"]


def l2_normalize(Z):
    """Rows scaled to unit Euclidean norm (zero rows stay zero), dtype kept."""
    norms = np.sqrt(np.einsum("ij,ij->i", Z, Z, dtype=np.float64))
    norms[norms == 0] = 1.0
    return (Z / norms[:, None]).astype(Z.dtype, copy=False)


def fit_preprocessing(kind, Z, rng, n_components=256, whiten=True):
    """Fit ``kind`` (None, "l2" or "pca") on reference rows: ``(state, Z transformed)``."""
    if kind is None:
        return None, Z
    if kind == "l2":
        return "l2", l2_normalize(Z)
    _check_pca_rows(Z.shape[0])
    n_comp = min(n_components, Z.shape[1], Z.shape[0] - 1)
    pca = PCA(n_components=n_comp, whiten=whiten, random_state=rng)
    # constant references divide 0 by 0 in the variance ratios: the check
    # below names the fix instead of numpy's warning
    with np.errstate(divide="ignore", invalid="ignore"):
        Zt = pca.fit_transform(Z)
    # whitening divides the queries by each component's spread: a zero one
    # (fit_transform itself does not divide) would send them to inf or NaN
    zero = int(np.sum(pca.explained_variance_ <= 0)) if whiten else 0
    if zero or not np.all(np.isfinite(Zt)):
        raise _whitening_error(zero, n_comp)
    return pca, Zt.astype(Z.dtype, copy=False)


def _check_pca_rows(n):
    if n < 2:
        raise ValueError(
            f"preprocessing='pca' needs at least 2 reference rows, got {n}: "
            "pass more reference samples or preprocessing=None / 'l2'"
        )


def _whitening_error(zero, n_comp):
    return ValueError(
        f"PCA whitening needs components with variance, but {zero} of the "
        f"{n_comp} have none in this layer's reference set: lower n_components, "
        "use whiten=False or preprocessing='l2'"
    )


class ChunkedPCA:
    """PCA of an out-of-core layer from its covariance, gathered chunk by chunk.

    One pass sums the rows, a second the centred cross-products ``X^T X``
    in float64 (a ``d x d`` matrix); its eigenvectors are the principal
    axes, as scikit-learn's ``PCA(svd_solver="covariance_eigh")``.  The
    result equals the in-memory PCA up to rounding and the sign of each
    axis, whether every component is kept or not.  ``transform`` projects
    (and whitens) like :meth:`sklearn.decomposition.PCA.transform`.

    Attributes
    ----------
    mean_ : ndarray of shape (d,)
    components_ : ndarray of shape (n_components, d)
        Principal axes, largest variance first.
    explained_variance_ : ndarray of shape (n_components,)
        Variance along each axis (``ddof=1``).
    whiten : bool
    """

    def __init__(self, mean, components, explained_variance, whiten):
        self.mean_ = mean
        self.components_ = components
        self.explained_variance_ = explained_variance
        self.whiten = bool(whiten)

    def transform(self, X):
        Z = (np.asarray(X, dtype=np.float64) - self.mean_) @ self.components_.T
        if self.whiten:
            Z /= np.sqrt(self.explained_variance_)
        return Z


def fit_preprocessing_view(kind, view, cols, rng, n_components=256, whiten=True):
    """:func:`fit_preprocessing` of one layer of an out-of-core ``view``, chunk by chunk.

    ``"l2"`` normalises the rows chunk by chunk into one in-memory array
    (the layer's size; equal to the in-memory result).  ``"pca"`` fits a
    :class:`ChunkedPCA` (two chunked passes, a ``d x d`` eigenproblem) and
    writes the projected rows (``n_components`` wide) chunk by chunk: the
    layer itself is never loaded.  ``rng`` is unused (nothing is drawn).
    """
    from .._layered import row_spans

    n = view.shape[0]
    start, stop, _ = cols.indices(view.shape[1])
    d = stop - start
    spans = row_spans(n, d)
    if kind == "l2":
        out = np.empty((n, d), dtype=view.dtype)
        for a, b in spans:
            out[a:b] = l2_normalize(view[a:b, cols])
        return "l2", out
    _check_pca_rows(n)
    n_comp = min(n_components, d, n - 1)
    total = np.zeros(d)
    for a, b in spans:
        total += view[a:b, cols].sum(axis=0, dtype=np.float64)
    mean = total / n
    cross = np.zeros((d, d))
    for a, b in spans:
        Z = view[a:b, cols].astype(np.float64) - mean
        cross += Z.T @ Z
    values, vectors = np.linalg.eigh(cross / (n - 1))
    order = np.argsort(values)[::-1][:n_comp]
    variance = np.maximum(values[order], 0.0)
    zero = int(np.sum(variance <= 0)) if whiten else 0
    if zero:
        raise _whitening_error(zero, n_comp)
    pca = ChunkedPCA(mean, vectors[:, order].T.copy(), variance, whiten)
    out = np.empty((n, n_comp), dtype=view.dtype)
    for a, b in spans:
        out[a:b] = pca.transform(view[a:b, cols])
    return pca, out


def apply_preprocessing(state, Z):
    """Apply a state returned by :func:`fit_preprocessing` to query rows."""
    if state is None:
        return Z
    if isinstance(state, str):  # "l2"
        return l2_normalize(Z)
    return state.transform(Z).astype(Z.dtype, copy=False)


def _is_view(X):
    from .._layered import LayeredView

    return isinstance(X, LayeredView)


def _layer_block(X, layout, layer, as_is):
    """The layer's own block of an out-of-core ``X`` (a read-only memmap), or None.

    Only for a :class:`~sklearn_advdet._layered.LayeredView` with one block
    holding exactly that layer's columns, and only when the index takes the
    rows as they are (``as_is``: no preprocessing).  Everything else gets
    None (the caller reads the layer's columns).
    """
    if not (as_is and _is_view(X)):
        return None
    return X.aligned_block(layout.slice_of(layer))


class LayerIndexMixin:
    """One k-NN index per selected hidden layer.

    The estimator provides the parameters ``backend``, ``backend_params``,
    ``n_jobs`` and sets, in ``fit``, ``layout_``, ``layers_``,
    ``n_neighbors_`` and ``_indexes`` (from :meth:`_index_layers`), and
    ``preprocessors_`` when it preprocesses the layers.
    """

    def _index_layers(self, X, layout, layers, rng, preprocess=None, preprocess_view=None):
        """``(preprocessors, indexes)`` of the hidden layers ``layers`` of ``X``.

        ``preprocess(Z, rng) -> (state, Z)`` is fitted on each layer's
        reference block before it is indexed (none when None).  ``X`` may be
        a :class:`~sklearn_advdet._layered.LayeredView` of a feature store:
        without preprocessing each layer's memory-map is indexed as it is
        (out of core); with it, ``preprocess_view(view, cols, rng) -> (state,
        Z)`` preprocesses one layer chunk by chunk (else the layer is read
        into memory and given to ``preprocess``).
        """
        preprocessors, indexes = [], []
        for layer in layers:
            state = None
            Z = _layer_block(X, layout, layer, preprocess is None)
            if Z is None and preprocess_view is not None and _is_view(X):
                state, Z = preprocess_view(X, layout.slice_of(layer), rng)
            elif Z is None:
                Z = np.ascontiguousarray(X[:, layout.slice_of(layer)])
                if preprocess is not None:
                    state, Z = preprocess(Z, rng)
                Z = np.ascontiguousarray(Z)
            # else a store's C-ordered memory-map, kept as one (read block by block)
            indexes.append(make_index(
                self.backend, Z, n_jobs=self.n_jobs,
                random_state=rng, params=self.backend_params,
            ))
            preprocessors.append(state)
        return preprocessors, indexes

    def _layer_position(self, layer):
        """Position in ``layers_`` of a hidden layer given by index or name."""
        if layer is None:
            return 0
        li = self.layout_._block_index(layer)
        if li not in self.layers_:
            raise ValueError(
                f"layer {layer!r} is not used by this fitted {type(self).__name__} "
                f"(layers_={self.layers_}): refit with it in `layers`"
            )
        return self.layers_.index(li)

    def _query(self, X, pos, k=None):
        """``(distances, indices)`` of validated rows ``X`` in the layer at ``pos``."""
        Z = np.ascontiguousarray(X[:, self.layout_.slice_of(self.layers_[pos])])
        states = getattr(self, "preprocessors_", None)
        if states is not None:
            Z = np.ascontiguousarray(apply_preprocessing(states[pos], Z))
        return self._indexes[pos].query(Z, self.n_neighbors_ if k is None else k)

    def kneighbors(self, X, layer=None):
        """Nearest reference samples of each row of ``X`` in one used layer.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        layer : int or str, default=None
            A hidden layer among ``layers_`` (default: the first of them).

        Returns
        -------
        distances : ndarray of shape (n_samples, `n_neighbors_`)
        indices : ndarray of shape (n_samples, `n_neighbors_`)
            Reference row indices, ordered by (distance, index).
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self._query(X, self._layer_position(layer))
