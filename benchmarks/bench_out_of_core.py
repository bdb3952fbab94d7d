"""Out-of-core reference set: PivotEmbedder (and the kNN scorer) on an ImageNet-sized store.

Writes a synthetic store the size of ResNet-50's ImageNet training features
(1,281,167 x 2,048 float32 = 10.5 GB in one layer file, 1,000 classes, plus
1,000 logits and the labels) chunk by chunk with
:class:`~sklearn_advdet.store.FeatureStoreWriter` (class-clustered Gaussian
data: class centres N(0, 1), unit noise), then measures, each stage after
dropping the store's pages from the page cache (``posix_fadvise
DONTNEED`` on its files only, so the fit reads from disk):

- ``PivotEmbedder(pivots="centroid").fit(store)`` and a 10,000-query
  transform; the same for medoids (``--medoid``);
- ``KNNClassScorer(layers=[0], n_neighbors=1000, backend="exact")`` fitted
  on the store (its first ``--knn-scale`` share of the rows), which searches
  the layer's memory-map block by block without copying it, and a
  10,000-query transform (the scores of the logits' predicted class).

For every stage: wall time and the peak anonymous memory (``RssAnon`` of
``/proc/self/status``, sampled every 20 ms by a thread: the process's own
heap, not the page cache that the memory-maps fill) above the value just
before the stage.  The results go to ``benchmarks/results/bench_out_of_core.md``
(``--out``).

Run ``python benchmarks/bench_out_of_core.py --scale 0.05 --out /tmp/ooc.md``
for a quick check; the store is deleted at the end unless ``--keep``.
"""

import argparse
import datetime
import os
import platform
import shutil
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_out_of_core.md"
N_TRAIN, N_VAL, DIM, N_CLASSES = 1_281_167, 50_000, 2048, 1000


# ------------------------------------------------------------------ memory
def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class Stage:
    """Wall time and peak RssAnon / RssFile above the start of a ``with`` block."""

    def __init__(self, name, results, refs=None, queries=None):
        self.name, self.results = name, results
        self.refs, self.queries = refs, queries

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak_anon = max(self.peak_anon, _status("RssAnon"))
            self.peak_file = max(self.peak_file, _status("RssFile"))

    def __enter__(self):
        self.base_anon, self.base_file = _status("RssAnon"), _status("RssFile")
        self.peak_anon, self.peak_file = self.base_anon, self.base_file
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        self.peak_anon = max(self.peak_anon, _status("RssAnon"))
        row = dict(stage=self.name, wall=wall, anon=self.peak_anon - self.base_anon,
                   file=self.peak_file - self.base_file, base=self.base_anon,
                   load=os.getloadavg()[0], failed=exc[0] is not None,
                   refs=self.refs, queries=self.queries)
        self.results.append(row)
        print(f"{self.name}: {wall:.1f} s, peak anon +{row['anon'] / 2**20:.0f} MiB, "
              f"mapped file +{row['file'] / 2**20:.0f} MiB, load {row['load']:.2f}",
              flush=True)
        return False


def drop_page_cache(path):
    """Evict the store's clean pages (its files only: other processes keep theirs)."""
    for f in Path(path).glob("*.npy"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# -------------------------------------------------------------------- data
def centres(seed):
    return np.random.default_rng(seed).standard_normal((N_CLASSES, DIM), dtype=np.float32)


def sample(rng, C, m):
    """m rows: labels, features (class centre + unit noise) and logits."""
    y = rng.integers(0, N_CLASSES, m)
    X = rng.standard_normal((m, DIM), dtype=np.float32)
    X += C[y]
    logits = rng.standard_normal((m, N_CLASSES), dtype=np.float32)
    logits[np.arange(m), y] += 4.0
    return y, X, logits


def write_store(path, n, seed, chunk_size):
    from sklearn_advdet.store import FeatureStoreWriter

    C = centres(seed)
    w = FeatureStoreWriter.create(path, count=n, layer_names=["layer4"], layer_sizes=[DIM],
                                  n_classes=N_CLASSES, chunk_size=chunk_size,
                                  has_labels=True, resume=False, model="synthetic")
    for k in w.missing_chunks():
        lo, hi = w.chunk_bounds(k)
        y, X, logits = sample(np.random.default_rng([seed, k]), C, hi - lo)
        w.write_chunk(k, layers=[X], logits=logits, labels=y)
    assert w.finalize()


# ------------------------------------------------------------------ stages
def run_pivots(store_path, Q, pivots, results):
    from sklearn_advdet import PivotEmbedder
    from sklearn_advdet.store import open_store

    drop_page_cache(store_path)
    with Stage(f"PivotEmbedder({pivots}) fit", results):
        emb = PivotEmbedder(pivots=pivots).fit(open_store(store_path))
    with Stage(f"PivotEmbedder({pivots}) transform {len(Q):,}", results, queries=len(Q)):
        Z = emb.transform(Q)
    assert Z.shape[0] == len(Q) and np.isfinite(Z).all()
    return emb


def run_knn(store_path, Q, n_rows, results):
    """The scorer as documented, fitted on the store (its first ``n_rows`` rows)."""
    from sklearn_advdet import KNNClassScorer
    from sklearn_advdet._layered import LayeredView
    from sklearn_advdet.store import open_store

    store = open_store(store_path)
    if n_rows == len(store.labels):
        reference, labels = store, None  # the store itself: labels and layout from it
    else:  # the first rows: a view of the memmaps' slices (still no copy)
        full = LayeredView.from_store(store)
        reference = LayeredView([full.block(i)[:n_rows] for i in range(2)],
                                layout=full.layout)
        labels = np.asarray(store.labels[:n_rows])
    drop_page_cache(store_path)
    with Stage(f"KNNClassScorer fit on the store, {n_rows:,} rows", results):
        knn = KNNClassScorer(layers=[0], n_neighbors=1000, backend="exact",
                             n_jobs=2).fit(reference, labels)
    assert isinstance(knn._indexes[0].data, np.memmap)  # searched in place, not copied
    with Stage(f"KNNClassScorer transform {len(Q):,}", results, refs=n_rows,
               queries=len(Q)):
        scores = knn.transform(Q)
    assert np.isfinite(scores).all()


def run_knn_pca(store_path, Q, n_components, results):
    """The scorer with PCA whitening fitted out of core (IncrementalPCA over chunks)."""
    from sklearn_advdet import KNNClassScorer
    from sklearn_advdet.store import open_store

    store = open_store(store_path)
    drop_page_cache(store_path)
    with Stage(f"KNNClassScorer(preprocessing='pca', n_components={n_components}) fit "
               "on the store", results):
        knn = KNNClassScorer(layers=[0], n_neighbors=1000, preprocessing="pca",
                             n_components=n_components, backend="exact",
                             n_jobs=2).fit(store)
    with Stage(f"KNNClassScorer(pca) transform {len(Q):,}", results,
               refs=len(store.labels), queries=len(Q)):
        scores = knn.transform(Q)
    assert np.isfinite(scores).all()


def run_knn_faiss(store_path, Q, n_rows, results):
    """Exact search (out of core) vs faiss flat (its own in-memory copy), same queries.

    Both give the exact answer (faiss flat screens, the package re-ranks), so
    the scores must be equal; the stages time the two searches side by side.
    """
    from sklearn_advdet import KNNClassScorer
    from sklearn_advdet.store import open_store

    store = open_store(store_path)
    exact = KNNClassScorer(layers=[0], n_neighbors=1000, backend="exact", n_jobs=2)
    exact.fit(store)
    with Stage(f"exact search, {len(Q):,} queries (no copy of the references)", results):
        a = exact.transform(Q)
    del exact
    with Stage(f"KNNClassScorer(backend='faiss') fit, {n_rows:,} rows (faiss's copy)",
               results):
        flat = KNNClassScorer(layers=[0], n_neighbors=1000, backend="faiss",
                              n_jobs=2).fit(open_store(store_path))
    with Stage(f"faiss flat search, {len(Q):,} queries", results):
        b = flat.transform(Q)
    results[-1]["note"] = ("scores equal to the exact search" if np.array_equal(a, b)
                           else f"scores differ in {int((a != b).any(axis=1).sum())} rows")
    print(results[-1]["note"])


# ------------------------------------------------------------------ report
def write_report(out, args, n, write_s, store_bytes, results):
    load = os.getloadavg()
    lines = [
        "# bench_out_of_core: PivotEmbedder and the kNN scorer on an out-of-core store",
        "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ}  ",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
        f"shared with other agents; load average (1/5/15 min) at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}  ",
        f"Command: `python benchmarks/bench_out_of_core.py --scale {args.scale}"
        + (" --medoid" if args.medoid else "") + (" --no-pivots" if args.no_pivots else "")
        + (f" --pca {args.pca}" if args.pca else "") + f" --knn-scale {args.knn_scale} "
        f"--queries {args.queries}"
        + (f" --faiss-queries {args.faiss_queries}" if args.faiss_queries else "") + "`  ",
        f"Store: {n:,} x {DIM:,} float32 features + {N_CLASSES:,} logits, {N_CLASSES:,} "
        f"classes, {store_bytes / 1e9:.2f} GB on disk, written chunk by chunk "
        f"({args.chunk_size:,} rows) in {write_s:.0f} s; queries: {args.queries:,} "
        "in-memory rows of the same distribution.  Every fit starts with the "
        "store's pages evicted from the page cache.",
        "",
        "Peak anon = the peak of RssAnon (the process's own memory, not the page "
        "cache of the memory-maps) above its value at the start of the stage; "
        "mapped file = the same for RssFile (store pages mapped in, reclaimable).",
        "",
        "| stage | wall (s) | peak anon (MiB) | mapped file (MiB) | load (1 min) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['stage']}{' (failed)' if r['failed'] else ''}"
                     f"{'; ' + r['note'] if r.get('note') else ''} | "
                     f"{r['wall']:.1f} | {r['anon'] / 2**20:,.0f} | "
                     f"{r['file'] / 2**20:,.0f} | {r['load']:.2f} |")
    lines += ["", "## Extrapolation to the 50,000 ImageNet validation images", ""]
    for r in results:
        if r["queries"] is None or r["failed"]:
            continue
        per = r["wall"] / r["queries"]
        name = r["stage"].rsplit(" ", 1)[0]
        if r["refs"] is None:  # pivot distances: C pivots, whatever the reference size
            lines.append(f"- {name}: {per * 1e3:.3f} ms per query, 50,000 queries: "
                         f"about {per * N_VAL:.0f} s (independent of the reference size)")
            continue
        scale = N_TRAIN / r["refs"]
        lines.append(
            f"- {name}: {per * 1e3:.1f} ms per query against {r['refs']:,} references; "
            f"50,000 queries against {N_TRAIN:,}: about {per * N_VAL * scale / 60:.0f} min"
            + ("" if scale == 1 else " (linear in the reference count: an upper bound, "
               "the float64 re-ranking of the k candidates does not grow with it)"))
    lines.append("")
    out.write_text("\n".join(lines) + "\n" + (args.notes or ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="/work/cache/ooc")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--knn-scale", type=float, default=1.0,
                        help="share of the store's rows indexed by KNNClassScorer "
                        "(0: skip)")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--pca", type=int, default=0, metavar="N_COMPONENTS",
                        help="also fit the kNN scorer with PCA whitening to this many "
                        "components out of core (0: skip)")
    parser.add_argument("--no-pivots", action="store_true",
                        help="skip the PivotEmbedder stages")
    parser.add_argument("--faiss-queries", type=int, default=0,
                        help="also time the exact search against faiss flat on this "
                        "many queries over the whole store (faiss holds a copy: "
                        "needs the store's size in free memory; 0: skip)")
    parser.add_argument("--chunk-size", type=int, default=8192)
    parser.add_argument("--medoid", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--notes", default="")
    args = parser.parse_args()
    n = max(2 * N_CLASSES, int(round(N_TRAIN * args.scale)))
    n_knn = min(n, int(round(N_TRAIN * args.knn_scale)))
    path = Path(args.dir) / "reference"
    results = []
    try:
        t0 = time.perf_counter()
        with Stage(f"write the store, {n:,} rows", results):
            write_store(path, n, seed=0, chunk_size=args.chunk_size)
        write_s = time.perf_counter() - t0
        store_bytes = sum(f.stat().st_size for f in path.glob("*.npy"))
        _, Q, logits = sample(np.random.default_rng(1), centres(0), args.queries)
        Q = np.hstack([Q, logits])
        del logits
        if not args.no_pivots:
            run_pivots(path, Q, "centroid", results)
        if args.medoid:
            run_pivots(path, Q, "medoid", results)
        if n_knn:
            run_knn(path, Q, n_knn, results)
        if args.pca:
            run_knn_pca(path, Q, args.pca, results)
        if args.faiss_queries:
            run_knn_faiss(path, Q[: args.faiss_queries], n, results)
    finally:
        if results:
            write_report(args.out, args, n, locals().get("write_s", float("nan")),
                         locals().get("store_bytes", 0), results)
        if not args.keep:
            shutil.rmtree(path, ignore_errors=True)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
