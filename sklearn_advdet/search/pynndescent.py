"""``backend="pynndescent"``: an approximate NN-descent graph (pynndescent).

pynndescent is imported when an index is built (numba compiles it on first
use, tens of seconds once per process).
"""

import numpy as np

from ._refine import sorted_neighbors

__all__ = ["PynndescentIndex"]


class PynndescentIndex:
    """pynndescent ``NNDescent`` graph over the references (Euclidean).

    Parameters
    ----------
    data : ndarray of shape (n_ref, n_dims)
    random_state : int
        Seed of the graph build.
    n_jobs : int, default=None
        Threads of the build and the queries (pynndescent's default when None).
    params : dict, default=None
        ``"epsilon"`` (query search breadth, default 0.2) and any ``NNDescent``
        argument (``n_neighbors`` of the graph, default 30, ``n_trees``, ...).
    """

    backend = "pynndescent"

    def __init__(self, data, random_state, n_jobs=None, params=None):
        try:
            from pynndescent import NNDescent
        except ImportError as exc:  # pragma: no cover - pynndescent is a dependency
            raise ImportError(
                "backend='pynndescent' needs the pynndescent package: "
                "pip install pynndescent, or use backend='exact'"
            ) from exc
        params = dict(params or {})
        self.epsilon = float(params.pop("epsilon", 0.2))
        params.setdefault("n_neighbors", 30)
        self.data = data
        self.sqnorm = np.einsum("ij,ij->i", data, data, dtype=np.float64)
        self.index = NNDescent(
            data,
            metric="euclidean",
            random_state=random_state,
            n_jobs=n_jobs,
            **params,
        )
        self.index.prepare()

    def query(self, Q, k):
        """``(distances, indices)`` of the (approximate) k nearest, by (distance, index)."""
        k = min(k, self.data.shape[0])
        idx, dist = self.index.query(Q, k=k, epsilon=self.epsilon)
        if not (np.all(np.isfinite(dist)) and np.all(idx >= 0)):
            raise RuntimeError(
                "pynndescent returned missing or non-finite neighbours "
                f"(k={k}, {self.data.shape[0]} references): raise "
                "backend_params['epsilon'] or use backend='exact'"
            )
        return sorted_neighbors(Q, self.data, self.sqnorm, idx, dist)
