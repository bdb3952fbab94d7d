"""Thread helpers shared by the medoid and the exact k-NN search.

Both split a BLAS-bound computation into independent tiles and run them on
threads, each with a single-threaded BLAS (numpy releases the GIL in BLAS
calls and in its elementwise and partitioning loops).  Without an explicit
``n_jobs`` they use as many threads as the BLAS thread pool has, as a BLAS
call or scikit-learn's OpenMP reductions would: ``threadpoolctl``'s
``threadpool_limits`` bounds both.
"""

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

from joblib import effective_n_jobs
from threadpoolctl import ThreadpoolController


@lru_cache(maxsize=1)
def _controller():
    # finding the loaded thread-pool libraries reads /proc/self/maps (~ms):
    # done once; their current thread counts are still read at every call
    return ThreadpoolController()


def blas_num_threads():
    """Size of the BLAS thread pool: the threads a BLAS-bound step would use."""
    counts = [
        lib.num_threads for lib in _controller().lib_controllers if lib.user_api == "blas"
    ]
    return max(1, min(counts)) if counts else 1


def n_threads_for(n_jobs):
    """Threads for ``n_jobs``: joblib's meaning when given, else the BLAS pool's size."""
    if n_jobs is None:
        return blas_num_threads()
    return max(1, effective_n_jobs(n_jobs))


def thread_map(func, items, n_threads):
    """``map(func, items)`` on ``n_threads`` threads with one BLAS thread each.

    A generator: results come in order, as they are consumed, so that only a
    few are alive at a time.  With one thread (or one item) it is a plain
    ``map`` and BLAS keeps its own threads.
    """
    items = list(items)
    if n_threads <= 1 or len(items) <= 1:
        yield from map(func, items)
        return
    with _controller().limit(limits=1, user_api="blas"), ThreadPoolExecutor(
        min(n_threads, len(items))
    ) as pool:
        yield from pool.map(func, items)
