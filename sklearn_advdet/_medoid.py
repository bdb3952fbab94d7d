"""Exact medoids of one class in one layer (the maths behind PivotEmbedder).

Euclidean medoids: float32 GEMM tiles of the upper triangle with a rigorous
per-sum rounding-error bound, threads over block rows, and a float64 re-sum of
the few rows that could be the minimum, so the answer is the brute-force one.
Cosine medoids: one normalised GEMV.
"""

import math

import numpy as np

from ._parallel import thread_map
from ._rounding import safe_gamma

__all__ = ["_euclidean_medoid", "_cosine_medoid"]

# --------------------------------------------------------------------- medoids
_U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff of the float32 tiles
# from this dimension on, the per-entry error bound is summed along with the
# distances (its two extra passes are small next to the GEMM); below it the
# cheap bound screens first and the few survivors are refined afterwards
_TIGHT_BOUND_MIN_DIM = 256
# a cheap screening leaving more candidates than this is refined before the
# exact re-summation
_MAX_EXACT_CANDIDATES = 8


def _block(X, mu):
    """``F = [x, |x|^2, 1]`` (float32) of the rows of ``X - mu``, and their norms.

    The difference is taken in X's precision (float32 or float64, with
    ``mu`` in the same) and rounded to float32 on the way out, so no
    temporary of the block's size is made.  With the row form of
    :func:`_row_form`, one GEMM gives the squared distances
    ``|a|^2 + |b|^2 - 2 a.b`` directly, without elementwise passes.  The
    norms of the centred rows feed the error bound.
    """
    m, d = X.shape
    F = np.empty((m, d + 2), dtype=np.float32)
    np.subtract(X, mu, out=F[:, :d], casting="same_kind")
    sq = np.einsum("ij,ij->i", F[:, :d], F[:, :d])
    F[:, d] = sq
    F[:, d + 1] = 1.0
    return F, np.sqrt(sq, dtype=np.float64)


def _row_form(F):
    """``[-2x, 1, |x|^2]`` from ``[x, |x|^2, 1]`` (exact: a power-of-2 scaling)."""
    d = F.shape[1] - 2
    G = np.empty_like(F)
    np.multiply(F[:, :d], np.float32(-2.0), out=G[:, :d])
    G[:, d] = 1.0
    G[:, d + 1] = F[:, d]
    return G


def _tile(G, ri, F, rj, gamma, tight, zero=None):
    """Distance tile between a row-form block and a block, summed both ways.

    Returns ``(rows, cols, erows, ecols)``: the float32 row and column sums
    of the tile's distances (entries ``zero``, the self-distances, set to
    0) and, when ``tight``, those of ``E = e / max(D, sqrt(e))`` with
    ``e = gamma (max|a| + max|b|)^2`` (else None): ``e`` bounds the error of
    every squared distance of the tile, so ``E`` bounds the error of each
    distance (``|D_hat - D| = |D_hat^2 - D^2| / (D_hat + D)``, and at most
    ``sqrt(e)``).  The sums are BLAS matrix-vector products, whose float32
    error is at most ``gamma_{block_size}`` of the sum.
    """
    D = G @ F.T
    with np.errstate(invalid="ignore"):
        # NaN where rounding made a squared distance negative: near-duplicate
        # rows, rare, repaired below (cheaper than clipping every tile)
        np.sqrt(D, out=D)
    if zero is not None:
        D[zero] = 0.0
    ones_r = np.ones(D.shape[1], dtype=np.float32)
    rows = D @ ones_r
    if np.isnan(rows).any():
        np.nan_to_num(D, copy=False, nan=0.0)  # = sqrt(max(D^2, 0))
        rows = D @ ones_r
    cols = np.ones(D.shape[0], dtype=np.float32) @ D
    if not tight:
        return rows, cols, None, None
    e = gamma * (float(ri.max()) + float(rj.max())) ** 2
    np.maximum(D, np.float32(math.sqrt(e)), out=D)
    np.divide(np.float32(e), D, out=D)
    if zero is not None:
        D[zero] = 0.0
    return rows, cols, D @ ones_r, np.ones(D.shape[0], dtype=np.float32) @ D


def _symmetric_row_sums(X, mu, block_size, n_threads, tight):
    """Summed distance of every row of X to all rows, from float32 GEMM tiles.

    Only the ``block_size x block_size`` tiles of the upper triangle are
    computed (the matrix is symmetric: a tile's row sums go to its row block,
    its column sums to its column block).  A task is one block row, largest
    first, so that the threads stay balanced.  Memory per thread: one or two
    tiles and three ``block_size x (d + 2)`` float32 blocks, never an
    ``n x n`` matrix.  When the whole float32 form of X takes no more than
    two tiles (a low-dimensional class), its blocks are built once and
    shared instead of rebuilt for every tile.

    Returns the float64 sums, the summed per-entry error bounds when
    ``tight`` (else None), and the norms of the centred rows.
    """
    n, d = X.shape
    gamma = safe_gamma(d + 4, np.float32)
    starts = range(0, n, block_size)
    shared = None
    if n * (d + 2) <= 2 * block_size**2:
        shared = {j: _block(X[j : j + block_size], mu) for j in starts}

    def get_block(j):
        return shared[j] if shared is not None else _block(X[j : j + block_size], mu)

    def block_row(i):
        # numpy's error state is per thread: set here, where the tiles run.
        # Centred values beyond ~1e19 overflow the float32 squares: the
        # caller sees the non-finite sums and decides in float64 instead
        with np.errstate(over="ignore", invalid="ignore"):
            return _block_row(i)

    def _block_row(i):
        sums, errs = np.zeros(n), np.zeros(n) if tight else None
        Fi, ri = get_block(i)
        Gi = _row_form(Fi)
        rows = slice(i, i + len(Fi))
        for j in starts[i // block_size :]:
            Fj, rj = (Fi, ri) if j == i else get_block(j)
            zero = np.diag_indices(len(Fi)) if j == i else None
            s_rows, s_cols, e_rows, e_cols = _tile(Gi, ri, Fj, rj, gamma, tight, zero)
            sums[rows] += s_rows
            if tight:
                errs[rows] += e_rows
            if j != i:
                cols = slice(j, j + len(Fj))
                sums[cols] += s_cols
                if tight:
                    errs[cols] += e_cols
        return sums, errs, ri

    total, total_err = np.zeros(n), np.zeros(n) if tight else None
    norms = np.empty(n)
    for i, (sums, errs, ri) in zip(starts, thread_map(block_row, list(starts), n_threads)):
        total += sums
        if tight:
            total_err += errs
        norms[i : i + len(ri)] = ri
    return total, total_err, norms


def _selected_row_sums(X, rows, mu, block_size, n_threads):
    """Summed distances of ``X[rows]`` to all rows, with the per-entry bounds.

    The refinement step of :func:`_euclidean_medoid`: tiles of the selected
    rows against every block of X (no symmetry to exploit).
    """
    n, d = X.shape
    gamma = safe_gamma(d + 4, np.float32)

    def block(k):
        idx = rows[k : k + block_size]
        Fi, ri = _block(X[idx], mu)
        Gi = _row_form(Fi)
        sums, errs = np.zeros(len(idx)), np.zeros(len(idx))
        for j in range(0, n, block_size):
            Fj, rj = _block(X[j : j + block_size], mu)
            inside = np.flatnonzero((idx >= j) & (idx < j + block_size))
            s_rows, _, e_rows, _ = _tile(Gi, ri, Fj, rj, gamma, True, (inside, idx[inside] - j))
            sums += s_rows
            errs += e_rows
        return sums, errs

    parts = list(thread_map(block, list(range(0, len(rows), block_size)), n_threads))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _exact_row_sums(X, rows, mu, block_size):
    """Summed Euclidean distances of ``X[rows]`` to all of X by differences.

    ``scipy.spatial.distance.cdist`` works on float64 coordinate differences,
    so it has none of the cancellation error of the GEMM form; row and
    column blocks keep its output within ``block_size**2`` entries.
    """
    from scipy.spatial.distance import cdist

    n = X.shape[0]
    out = np.zeros(len(rows))
    for k in range(0, len(rows), block_size):
        C = np.asarray(X[rows[k : k + block_size]], dtype=np.float64) - mu
        for j in range(0, n, block_size):
            Xj = np.asarray(X[j : j + block_size], dtype=np.float64) - mu
            out[k : k + block_size] += cdist(C, Xj).sum(axis=1)
    return out


def _candidates(sums, errs):
    """Rows whose sum may be the smallest given ``|sums - exact| <= errs``."""
    return np.flatnonzero(sums - errs <= np.min(sums + errs))


def _euclidean_medoid(X, block_size=512, n_threads=1):
    """Index of the exact Euclidean medoid of the rows of X.

    The medoid is the row with the smallest summed Euclidean distance to the
    other rows; ties go to the lowest index (as ``argmin`` of the brute-force
    row sums).

    1. Screening: all row sums from float32 GEMM tiles of the upper triangle
       (:func:`_symmetric_row_sums`; the rows centred on their mean, which
       shrinks the cancellation error), with a rigorous bound on each sum's
       error: the float32 error of a squared distance is at most
       ``e_ij = gamma_{d+4} (|x_i| + |x_j|)^2``, so a distance is off by at
       most ``min(sqrt(e_ij), e_ij / D_ij)``, plus the float32 summation and
       square-root rounding.  Below ``d = 256`` the cheap ``sqrt(e_ij)``
       form is used first; from there on the tight one is summed along.
    2. Every row whose lower bound is below the smallest upper bound may be
       the medoid.  When the cheap bound leaves more than a handful, their
       sums are recomputed with the tight bound (:func:`_selected_row_sums`).
    3. The survivors (usually one) are re-summed in float64 from coordinate
       differences, and the smallest exact sum wins.  The answer is
       therefore the brute-force one, exact duplicates included.

    A hand-written tile loop, because it exploits symmetry, float32 GEMM and
    threads over tiles: ``benchmarks/bench_pivots.py`` measured it faster
    than ``sklearn.metrics.pairwise_distances_chunked`` with a reducing
    function (which recomputes norms and validates input per chunk, cannot
    use the symmetry and holds a row block that grows with ``n``).

    Memory: per thread one ``block_size x block_size`` float32 tile (two with
    the tight bound) and three ``block_size x (d + 2)`` float32 blocks; X
    is never copied whole.  ``n_threads`` threads work on block rows, each
    with a single-threaded BLAS; the tiles shrink below ``block_size`` when
    that gives each thread at least two block rows (balance).
    """
    n, d = np.shape(X)
    if n <= 2:
        return 0  # one member, or two members at the same summed distance
    # any centre gives the same distances; the mean shrinks the norms, hence
    # the cancellation error (float32 data is centred in float32: the
    # difference of two float32 numbers is rounded once, like a float64 one)
    mu = np.mean(X, axis=0, dtype=np.float64).astype(np.result_type(X.dtype, np.float32))
    tight = d >= _TIGHT_BOUND_MIN_DIM
    if n_threads > 1:
        block_size = min(block_size, -(-n // (2 * n_threads)))
    with np.errstate(over="ignore", invalid="ignore"):  # the shared float32 blocks
        sums, errs, r = _symmetric_row_sums(X, mu, block_size, n_threads, tight)
    if not (np.isfinite(sums).all() and np.isfinite(r).all()):
        # centred values beyond the float32 range of the tiles' squares
        # (about 1e19): the float64 sums by differences decide alone
        rows = np.arange(n)
        return int(np.argmin(_exact_row_sums(X, rows, mu, block_size)))
    # float32 summation of a tile row, square-root rounding, float64 totals
    rounding = (
        safe_gamma(block_size, np.float32) + 2 * _U32 + n * float(np.finfo(np.float64).eps)
    )
    if not tight:
        errs = math.sqrt(safe_gamma(d + 4, np.float32)) * (n * r + r.sum())
    candidates = _candidates(sums, errs + rounding * sums)
    if len(candidates) > _MAX_EXACT_CANDIDATES and not tight:
        s2, e2 = _selected_row_sums(X, candidates, mu, block_size, n_threads)
        candidates = candidates[_candidates(s2, e2 + rounding * s2)]
    if len(candidates) == 1:
        return int(candidates[0])
    # exact duplicates give bitwise identical exact sums: ties still go to
    # the lowest index
    exact = _exact_row_sums(X, candidates, mu, block_size)
    return int(candidates[np.argmin(exact)])


def _cosine_medoid(X):
    """Index of the row with the smallest summed cosine distance to the rest.

    ``sum_j (1 - cos(x_i, x_j)) = (n - 1) - u_i . (S - u_i)`` with ``u`` the
    unit rows and ``S`` their sum: exact in O(n d), no distance matrix.
    All-zero rows have cosine similarity 0 to everything (as in
    :func:`sklearn.metrics.pairwise.cosine_distances`).
    """
    X = np.asarray(X, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    U = X / np.where(norms > 0, norms, 1.0)[:, None]
    self_sim = (norms > 0).astype(np.float64)
    sums = (X.shape[0] - 1) - (U @ U.sum(axis=0) - self_sim)
    return int(np.argmin(sums))
