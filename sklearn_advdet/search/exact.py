"""The package's own exact k-NN search: a screening GEMM, then exact re-ranking.

``backend="exact"`` of :func:`sklearn_advdet.search.make_index`.  The answer
is the exact float64 k nearest references of every query, ordered by
(distance, reference index), with memory bounded whatever the reference size
(see :class:`ExactIndex`).
"""

import math

import numpy as np

from .._layered import row_spans
from .._parallel import n_threads_for
from ._chunks import map_chunks
from .._rounding import safe_gamma

__all__ = ["ExactIndex", "exact_row"]

# exact search: references whose largest squared norm exceeds this many times
# the largest one about their mean are screened as a centred copy
_CENTRE_RATIO = 4.0
# exact search: a screening tile holds at most this many query x reference
# entries (8 MiB in float32, plus 16 MiB of argpartition indices), and a
# thread takes at most this many queries at a time.  Measured in
# benchmarks/bench_knn.py's setting: 2^21 x 128 was as fast as 2^22 x 256
# at 50,000 x 64 and 1,000,000 x 256 with 40-45 % less extra memory.
_SCREEN_ENTRIES = 2**21
_QUERY_CHUNK = 128
# passes over the whole reference set (norms, mean) read this many bytes of
# float64 at a time, so an out-of-core set never enters memory whole
_READ_BYTES = 2**26


def exact_row(q, R, sqnorm, k):
    """k nearest references of one query, exact float64, ties by index.

    A GEMV in the data's precision finds every reference that can be among
    the k nearest (within a rounding-error bound of the k-th value); only
    those are recomputed exactly from the coordinates.
    """
    q64 = q.astype(np.float64)
    qn = float(q64 @ q64)
    work = _work_dtype(R.dtype)
    qw = q.astype(work)
    dots = np.concatenate([_rows(R, a, b, work) @ qw for a, b in _spans(R, qw.size)]
                          or [np.empty(0, work)])
    approx = sqnorm - 2.0 * dots.astype(np.float64) + qn
    eps = np.finfo(work).eps
    bound = 4.0 * R.shape[1] * eps * (np.sqrt(sqnorm.max() * qn) + sqnorm.max() + qn) + 1e-300
    kth = np.partition(approx, k - 1)[k - 1]
    cand = np.flatnonzero(approx <= kth + 2.0 * bound)
    diff = R[cand].astype(np.float64) - q64
    d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    order = np.lexsort((cand, d))[:k]
    return cand[order], d[order]


class ExactIndex:
    """Exact brute-force k-NN: screening GEMM, then exact re-ranking.

    For a chunk of queries and a block of references, one GEMM in the data's
    precision gives ``v = |r|^2 - 2 q.r`` (the squared distance minus the
    query's constant ``|q|^2``); ``argpartition`` keeps the ``M = k + k/4``
    (at least ``k + 32``) smallest per query, merged block by block, so a
    screening tile never exceeds ``_SCREEN_ENTRIES`` entries (memory bounded
    whatever the reference size).  The error of every ``v`` is at most
    ``b = gamma_{d+2} (max|r|^2 + 2 |q| max|r|)`` (with the margins of
    :func:`.._rounding.safe_gamma`: the GEMM, the stored squared norms, the
    queries cast to the data's precision), so
    the true k nearest all lie within ``2 b`` of the k-th smallest ``v``.
    Those candidates (usually ``k`` plus a few) get exact float64 distances
    from coordinate differences and are ordered by (distance, reference
    index).  A query with ``M`` candidates inside the window (too many ties
    for the margin) is redone by a full exact scan (:func:`exact_row`).
    References far from the origin are screened centred, which keeps the
    window narrow: an in-memory float32/float64 array as one centred copy
    (memory: one more copy of the references); any other ``data`` (a
    feature store's memory-map, a float16 array) block by block, each block
    read, widened to float32 and centred on the fly, so the references are
    never loaded whole (memory: the norms, 8 bytes a row, and one block).

    Query chunks are joblib tasks (:func:`._chunks.map_chunks`: ``n_jobs``
    threads with a single-threaded BLAS each by default, as many as the BLAS
    thread pool has; the backend of an enclosing ``joblib.parallel_config``
    otherwise).  ``screen`` (e.g. :class:`.faiss.FaissFlatScreen`) replaces
    the screening GEMM by an external one with its own error bound; the
    re-ranking, and so the answer, stay the same.
    ``benchmarks/bench_knn.py`` measured this faster than scikit-learn's
    ``NearestNeighbors(algorithm="brute")``, whose float64 reduction keeps a
    heap of ``k`` per query.
    """

    backend = "exact"

    def __init__(self, data, n_jobs=None, screen=None):
        self.data = data
        self.n_jobs = n_jobs
        # an in-memory float32/float64 array is screened as it is (or as one
        # centred copy); anything else (a feature store's memory-map, a
        # float16 block) is read block by block, centred and widened per
        # block, and never copied whole
        work = _work_dtype(data.dtype)
        self._in_memory = (type(data) is np.ndarray and data.dtype == work)
        # one pass: the squared norms and the column sums (for the mean)
        self.sqnorm = np.empty(data.shape[0])
        total = np.zeros(data.shape[1])
        for a, b in _spans(data):
            block = _rows(data, a, b, work)
            self.sqnorm[a:b] = _row_sqnorms(block)
            total += block.sum(axis=0, dtype=np.float64)
        # The screening window grows with the largest norm: references far
        # from the origin (their mean dwarfs their spread) are screened as a
        # centred copy, which narrows it (distances do not change).
        self._shift = None
        sq = self.sqnorm
        if data.shape[0]:
            # any centre gives the same distances: the float64 mean, and the
            # centred norms from |x|^2 - 2 x.mu + |mu|^2 (only to decide;
            # their rounding does not matter)
            mu = (total / data.shape[0]).astype(work)
            xmu = np.concatenate([_rows(data, a, b, work) @ mu for a, b in _spans(data)])
            centred = self.sqnorm - 2.0 * xmu + float(mu @ mu)
            if self.sqnorm.max() > _CENTRE_RATIO * max(float(centred.max()), 0.0):
                self._shift = mu
                sq = np.concatenate([_row_sqnorms(_rows(data, a, b, work) - mu)
                                     for a, b in _spans(data)])
        # the screening copy: the data (shifted once) in memory, else None
        # (each screened block is read, widened and shifted on the fly)
        self._screen_data = None
        if self._in_memory:
            self._screen_data = data if self._shift is None else data - self._shift
        self._sq = sq.astype(work)
        self._rmax = math.sqrt(float(sq.max())) if data.shape[0] else 0.0
        # optional external screener (faiss flat) of the same screening copy:
        # it holds its own copy of the references in memory
        self._screener = None
        if screen is not None:
            copy = self._screen_data
            if copy is None:
                copy = np.asarray(data, dtype=work)
                copy = copy if self._shift is None else copy - self._shift
            self._screener = screen(copy, n_jobs)

    def _screen_block(self, start, stop):
        """Screening rows ``start:stop``: in memory a view, else read and centred."""
        if self._screen_data is not None:
            return self._screen_data[start:stop]
        block = _rows(self.data, start, stop, _work_dtype(self.data.dtype))
        return block if self._shift is None else block - self._shift

    def query(self, Q, k):
        """k nearest references of every row of ``Q``.

        Returns
        -------
        distances : ndarray of shape (n_queries, min(k, n_ref)), float64
        indices : ndarray of shape (n_queries, min(k, n_ref)), intp
            Ordered by (distance, reference index).
        """
        n_ref = self.data.shape[0]
        k = min(k, n_ref)
        margin = min(n_ref, k + max(32, k // 4))
        n_threads = n_threads_for(self.n_jobs)
        rows = max(1, min(_QUERY_CHUNK, -(-Q.shape[0] // n_threads)))
        screened = None
        if self._screener is not None and Q.shape[0]:
            # the external screener runs its own threads over all the queries
            screened = self._screener.search(self._centred(Q), margin)

        def chunk(start):
            part = None if screened is None else (
                screened[0][start : start + rows], screened[1][start : start + rows])
            return self._query_chunk(Q[start : start + rows], k, margin, part)

        parts = map_chunks(chunk, range(0, Q.shape[0], rows), n_threads)
        if not parts:
            return np.empty((0, k)), np.empty((0, k), dtype=np.intp)
        return np.concatenate([p[1] for p in parts]), np.concatenate([p[0] for p in parts])

    def _centred(self, Q):
        Qw = np.asarray(Q, dtype=_work_dtype(self.data.dtype))
        return Qw if self._shift is None else Qw - self._shift

    def _screen(self, Qw, M):
        """The M smallest ``|r|^2 - 2 q.r`` per query (values, indices), unsorted."""
        n_ref = self.data.shape[0]
        block = min(n_ref, max(2 * M, _SCREEN_ENTRIES // max(Qw.shape[0], 1)))
        Qm2 = Qw * Qw.dtype.type(-2.0)  # exact: a power-of-2 scaling
        best_v = best_i = None
        for start in range(0, n_ref, block):
            V = Qm2 @ self._screen_block(start, start + block).T
            V += self._sq[start : start + block]
            vals, idx = _smallest(V, M)
            idx = idx + start
            if best_v is not None:
                vals = np.concatenate([best_v, vals], axis=1)
                idx = np.concatenate([best_i, idx], axis=1)
                vals, keep = _smallest(vals, M)
                idx = _take_rows(idx, keep)
            best_v, best_i = vals, idx
        return best_v, best_i

    def _query_chunk(self, Q, k, M, screened=None):
        R = self.data
        n_ref, d = R.shape
        Qw = self._centred(Q)
        q_norm = np.sqrt(np.einsum("ij,ij->i", Qw, Qw, dtype=np.float64))
        if screened is None:
            vals, cand = self._screen(Qw, M)
            order = np.argsort(vals, axis=1)
            vals = _take_rows(vals, order).astype(np.float64)
            cand = _take_rows(cand, order)
            bound = safe_gamma(d + 2, Qw.dtype) * (self._rmax**2 + 2.0 * q_norm * self._rmax)
        else:  # sorted squared distances of the screener, with its own error bound
            vals, cand = screened
            bound = self._screener.error_bound(q_norm, self._rmax, d)
        inside = (vals <= (vals[:, k - 1] + 2.0 * bound)[:, None]).sum(axis=1)
        width = int(inside.max())
        cand = cand[:, :width]
        # exact float64 distances of the candidates, a few queries at a time
        Q64 = np.asarray(Q, dtype=np.float64)
        dist = np.empty(cand.shape)
        step = max(1, 2**20 // max(width * d, 1))
        for a in range(0, len(Q), step):
            diff = np.subtract(R[cand[a : a + step]], Q64[a : a + step, None, :], dtype=np.float64)
            dist[a : a + step] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        order = np.argsort(dist, axis=1)[:, : k + 1]
        idx, out = _take_rows(cand, order), _take_rows(dist, order)
        # equal distances among the kept: order those rows by (distance, index)
        tied = np.flatnonzero((out[:, 1:] == out[:, :-1]).any(axis=1))
        for r in tied:
            o = np.lexsort((cand[r], dist[r]))[: k + 1]
            idx[r], out[r] = cand[r, o], dist[r, o]
        idx, out = idx[:, :k], out[:, :k]
        # a window filled to the margin may hide candidates: full exact scan
        if M < n_ref:
            for r in np.flatnonzero(inside >= M):
                idx[r], out[r] = exact_row(Q[r], R, self.sqnorm, k)
        return idx, out


def _work_dtype(dtype):
    """The precision a block of ``dtype`` is screened in: float64 stays, others float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _spans(data, width=None):
    """Row ranges of ``data`` holding about ``_READ_BYTES`` each."""
    return row_spans(data.shape[0], data.shape[1] if width is None else width, _READ_BYTES)


def _rows(data, start, stop, dtype):
    """Rows ``start:stop`` of ``data`` in ``dtype`` (a view when no cast is needed)."""
    return np.asarray(data[start:stop], dtype=dtype)


def _row_sqnorms(Z):
    return np.einsum("ij,ij->i", Z, Z, dtype=np.float64)


def _smallest(V, M):
    """The M smallest entries of every row of V (values, column indices), unsorted."""
    if V.shape[1] <= M:
        return V, np.broadcast_to(np.arange(V.shape[1]), V.shape)
    part = np.argpartition(V, M - 1, axis=1)[:, :M]
    return _take_rows(V, part), part


def _take_rows(A, idx):
    """``np.take_along_axis(A, idx, axis=1)`` through flat indices (faster)."""
    flat = idx + (np.arange(A.shape[0]) * A.shape[1])[:, None]
    return np.take(A, flat) if A.flags.c_contiguous else np.take(np.ascontiguousarray(A), flat)


class _ExactIndex(ExactIndex):
    """The former ``sklearn_advdet.knn._ExactIndex``: ``query -> (indices, distances)``.

    Kept only while ``sklearn_advdet._density`` imports it from
    ``sklearn_advdet.knn``; new code uses :func:`sklearn_advdet.search.make_index`
    (``query -> (distances, indices)``).
    """

    def query(self, Q, k):
        dist, idx = super().query(Q, k)
        return idx, dist
