"""Query chunks of the exact search through joblib.

The chunks are independent tasks given to ``joblib.Parallel`` with
``prefer="threads"``: by default a thread pool of this process (each thread
with a single-threaded BLAS, as :func:`sklearn_advdet._parallel.thread_map`
does), and under ``joblib.parallel_config(backend=...)`` whatever backend
the caller chose (e.g. Dask's or Ray's, which ship the chunks to workers).
One thread, or a single chunk, is a plain loop: no pool is started.
"""

from joblib import Parallel, delayed

from .._parallel import _controller

__all__ = ["map_chunks"]


def map_chunks(func, items, n_jobs):
    """``[func(item) for item in items]`` through joblib on ``n_jobs`` workers."""
    items = list(items)
    if n_jobs <= 1 or len(items) <= 1:
        return [func(item) for item in items]
    with _controller().limit(limits=1, user_api="blas"):
        return Parallel(n_jobs=min(n_jobs, len(items)), prefer="threads")(
            delayed(func)(item) for item in items
        )
