"""k-NN search backends behind one interface (one backend per module).

- :mod:`._base` — :func:`make_index` (``index.query(Q, k) -> (distances,
  indices)``, ordered by (distance, reference index)), the backend names and
  the ``"auto"`` rule;
- :mod:`.exact` — the package's own exact search (a screening GEMM with a
  rigorous rounding window, then exact float64 re-ranking);
- :mod:`.pynndescent` — an approximate NN-descent graph.

Measured behaviour: ``docs/user_guide/knn_detector.rst``.
"""

from ._base import (
    BACKENDS,
    SEARCH_PARAMS_DOC,
    deterministic_backend,
    make_index,
    resolve_backend,
    sorted_neighbors,
)

__all__ = [
    "BACKENDS",
    "SEARCH_PARAMS_DOC",
    "deterministic_backend",
    "make_index",
    "resolve_backend",
    "sorted_neighbors",
]
