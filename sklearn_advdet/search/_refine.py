"""Trustworthy, ordered answers from the approximate search backends."""

import numpy as np

__all__ = ["sorted_neighbors"]

# squared distances below this fraction of |q|^2 + |r|^2 may be dominated by
# the cancellation of the |q|^2 - 2 q.r + |r|^2 expansion; they are recomputed
# from the coordinates (which gives an exact 0 for identical vectors).
_RECOMPUTE_RTOL = 1e-6


def sorted_neighbors(Q, R, r_sqnorm, idx, dist):
    """Make an approximate backend's answer trustworthy and ordered.

    Squared distances small enough to suffer from cancellation are recomputed
    from the coordinates in float64 (an exact duplicate gives 0); the rest
    are kept.  Rows are then sorted by distance, ties broken by reference
    index.

    Returns
    -------
    distances, indices : ndarray of shape idx.shape
    """
    dist = np.asarray(dist, dtype=np.float64)
    idx = np.asarray(idx, dtype=np.intp)
    q_sqnorm = np.einsum("ij,ij->i", Q, Q, dtype=np.float64)
    tol = _RECOMPUTE_RTOL * (q_sqnorm[:, None] + r_sqnorm[idx])
    rows, cols = np.nonzero(np.square(dist) <= tol)
    if rows.size:
        diff = R[idx[rows, cols]].astype(np.float64) - Q[rows].astype(np.float64)
        dist = dist.copy()
        dist[rows, cols] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    order = np.lexsort((idx, dist), axis=-1)
    return (
        np.take_along_axis(dist, order, axis=1),
        np.take_along_axis(idx, order, axis=1),
    )
