"""Neighbour-search backends of KNNClassScorer: exact vs faiss vs pynndescent vs sklearn brute.

For every data set and method: build time, time for a batch of queries
(k neighbours each), mean time of a single query, recall@k against
scikit-learn's exact ``NearestNeighbors(algorithm="brute")``, and the peak
resident memory of the process that ran it (each method runs in its own
subprocess so that peaks do not mix; "extra" = peak minus the RSS once the
data were in memory).

Data sets
---------
- ``cifar-resnet20`` (50,000 x 64): the pooled last-stage features of the
  published ResNet-20 on the CIFAR-10 training JPEGs (the reference set) and
  on the first test images (the queries), when ``../shared/data`` is there.
  Uses ``sklearn_advdet.deep.extraction.FeatureExtractor`` when it exists,
  otherwise a forward pre-hook on the ResNet's final linear layer. The
  features are cached under ``--cache``.
- ``clustered-<n>x<d>``: synthetic Gaussian clusters (100 centres, float32),
  ``--n-ref`` rows (default 1,000,000) of ``--dim`` (256) columns, plus
  50,000 x 64 when the real data are absent.

Methods
-------
- ``sklearn-brute``: ``NearestNeighbors(algorithm="brute").kneighbors`` (the
  ground truth for recall);
- ``exact``: KNNClassScorer's exact backend (the same search plus the
  tie/zero-distance handling: k+1 neighbours, ordering by (distance, index),
  recomputed small distances);
- ``pynndescent``: KNNClassScorer's pynndescent backend (seeded build with
  ``prepare()``, query with k, epsilon 0.2); numba's compilation is warmed
  up on tiny data first and not counted;
- ``faiss-flat`` / ``faiss-ivf`` / ``faiss-hnsw``: the faiss backend with
  ``backend_params={"index": ...}`` (IVF: default nlist, queried at each
  ``--nprobes``; HNSW: M=32, queried at each ``--ef-searches``), faiss's
  OpenMP pool set from n_jobs (default: the BLAS pool's size);
- ``auto``: whatever ``backend="auto"`` resolves to for this reference size
  and query count (the same code path, timed again).

Run ``python benchmarks/bench_knn.py --quick`` for a small smoke run.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_knn.md"
SHARED = ROOT.parent / "shared" / "data"


#: benchmark method -> (backend, backend_params) of sklearn_advdet.search.make_index
METHODS = {
    "faiss-flat": ("faiss", {"index": "flat"}),
    "faiss-ivf": ("faiss", {"index": "ivf"}),
    "faiss-hnsw": ("faiss", {"index": "hnsw", "M": 32}),
}
ALL_METHODS = ["sklearn-brute", "exact", "faiss-flat", "faiss-ivf", "faiss-hnsw",
               "pynndescent", "auto"]
#: approximate methods that are built once and queried at several settings
ANN_METHODS = ("pynndescent", "faiss-ivf", "faiss-hnsw")


def _set_sweep(index, method, value):
    """Set the query-time breadth of an approximate index; the row's label."""
    index = getattr(index, "approximate", index)
    if method == "faiss-ivf":
        index.index.nprobe = int(value)
        return f"nprobe={value}"
    if method == "faiss-hnsw":
        index.params["efSearch"] = int(value)
        return f"efSearch={value}"
    index.epsilon = value
    return f"eps={value}"


def _rss_mib():
    """Peak resident memory of this process (MiB).

    VmHWM of /proc/self/status: the high-water mark of this process's own
    address space.  ``ru_maxrss`` is not used where /proc is: Linux carries
    it over an exec, so a subprocess started by a parent holding the data
    set reports the parent's resident size as its own peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mib():
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - not Linux
        return float("nan")


def clustered(n, d, seed, n_centers=100):
    """Gaussian clusters: centres ~ N(0, 4 I), points ~ centre + N(0, I)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(n_centers, d)).astype(np.float32)
    lab = rng.integers(n_centers, size=n)
    out = np.empty((n, d), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):
        e = min(n, s + step)
        out[s:e] = centers[lab[s:e]] + rng.standard_normal((e - s, d), dtype=np.float32)
    return out


def _resnet_features(images, model, batch=500):
    """Pooled output of the last block (= the input of the final linear layer)."""
    from sklearn_advdet.deep.extraction import FeatureExtractor

    fx = FeatureExtractor(model, layers=["layer3.2"], device="cpu", batch_size=batch,
                          progress=False, include_logits=False)
    return fx.extract(images).X


def cifar_features(cache_dir, n_queries):
    """(reference 50,000 x 64, queries) from the real ResNet-20, cached."""
    cache_dir = Path(cache_dir)
    ref_p, q_p = cache_dir / "cifar_r20_train.npy", cache_dir / "cifar_r20_test.npy"
    if ref_p.exists() and q_p.exists():
        q = np.load(q_p)
        if len(q) >= n_queries:
            return np.load(ref_p), q[:n_queries], "cached"
    from sklearn_advdet.deep.data import load_image_folder
    from sklearn_advdet.deep.models import cifar_resnet

    model = cifar_resnet(20, weights=SHARED / "weights" / "resnet20-12fca82f.th").eval()
    how = "FeatureExtractor, pooled layer3.2 (the input of the final linear layer)"
    train, _, _ = load_image_folder(SHARED / "cifar10-jpeg" / "train.tar")
    ref = _resnet_features(train, model)
    del train
    n_test = max(n_queries, 1000)
    test, _, _ = load_image_folder(SHARED / "cifar10-jpeg" / "test.tar",
                                   per_class=-(-n_test // 10))
    q = _resnet_features(test, model)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(ref_p, ref)
    np.save(q_p, q)
    return ref, q[:n_queries], how


# ---------------------------------------------------------------- one method
def run_one(spec):
    """Run one (data set, method) in this process; print a JSON line."""
    from sklearn_advdet.search import make_index, resolve_backend

    ref = np.load(spec["ref"], mmap_mode="r")
    ref = np.ascontiguousarray(ref)
    q = np.ascontiguousarray(np.load(spec["queries"]))
    k = min(spec["k"], len(ref))
    n_single = spec["n_single"]
    base = _current_rss_mib()
    method = spec["method"]
    res = {"method": method, "load": os.getloadavg()[0]}

    backend, params = METHODS.get(method, (method, None))
    if backend != "sklearn-brute":
        resolved = resolve_backend(backend, len(ref))
    if backend != "sklearn-brute" and resolved == "pynndescent":
        # numba compiles on first use: warm up on tiny data, not timed
        t = time.perf_counter()
        w = clustered(2000, ref.shape[1], 1)
        make_index("pynndescent", w, random_state=0).query(w[:5], 50)
        res["jit_warmup_s"] = time.perf_counter() - t

    if backend == "faiss":
        # importing faiss (and its OpenMP runtime) once per process: not timed
        t = time.perf_counter()
        import faiss  # noqa: F401

        res["import_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if method == "sklearn-brute":
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(ref)

        def query(x):
            return nn.kneighbors(x, n_neighbors=k)[1]

        res["resolved"] = "sklearn-brute"
    else:
        index = make_index(backend, ref, n_jobs=spec["n_jobs"], random_state=0, params=params)

        def query(x):
            return index.query(x, k)[1]

        res["resolved"] = index.backend
    res["build_s"] = time.perf_counter() - t

    truth = None if method == "sklearn-brute" else np.load(spec["truth"])
    sweep = spec["sweeps"].get(method if method in ANN_METHODS else res["resolved"], [None])
    for value in sweep:
        row = dict(res)
        if value is not None:
            row["method"] = f"{method} ({_set_sweep(index, method, value)})"
        idx, row["batch_s"], row["batch_cpu_s"] = _timed(query, q, spec["repeat"])
        singles = []
        for i in range(n_single):
            t = time.perf_counter()
            query(q[i : i + 1])
            singles.append(time.perf_counter() - t)
        row["single_ms"] = 1000 * float(np.median(singles))
        row["peak_mib"] = _rss_mib()
        row["extra_mib"] = row["peak_mib"] - base
        if truth is None:
            np.save(spec["truth"], idx)
            row["recall"] = 1.0
        else:
            hits = [np.intersect1d(a, b).size for a, b in zip(idx, truth)]
            row["recall"] = float(np.sum(hits) / truth.size)
        print("RESULT " + json.dumps(row), flush=True)


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(query, q, repeat):
    """Best wall time of `repeat` runs (one run when it takes > 5 s), and its CPU time."""
    best = (np.inf, np.inf)
    for r in range(repeat):
        t, c = time.perf_counter(), _cpu()
        idx = query(q)
        wall, cpu = time.perf_counter() - t, _cpu() - c
        best = min(best, (wall, cpu))
        if wall > 5:
            break
    return idx, best[0], best[1]


def bench_dataset(name, ref, q, args, tmp):
    ref_p, q_p = Path(tmp) / f"{name}_ref.npy", Path(tmp) / f"{name}_q.npy"
    truth_p = Path(tmp) / f"{name}_truth.npy"
    np.save(ref_p, ref)
    np.save(q_p, q)
    rows = []
    big = len(ref) > args.max_ann_ref
    methods = [m for m in args.methods if not (big and m in ("pynndescent", "faiss-hnsw"))]
    if "sklearn-brute" not in methods:  # the ground truth of recall comes first
        methods.insert(0, "sklearn-brute")
    for method in methods:
        spec = {
            "ref": str(ref_p), "queries": str(q_p), "truth": str(truth_p),
            "k": args.k, "method": method, "n_single": args.n_single,
            "n_jobs": args.n_jobs, "repeat": args.repeat,
            "sweeps": {"pynndescent": args.epsilons, "faiss-ivf": args.nprobes,
                       "faiss-hnsw": args.ef_searches},
        }
        print(f"[{name}] {method} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--run-one", json.dumps(spec)],
            capture_output=True, text=True, timeout=args.timeout,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(proc.stderr[-2000:], file=sys.stderr)
            rows.append({"method": method, "error": f"rc={proc.returncode}"})
            continue
        for ln in lines:
            r = json.loads(ln[len("RESULT "):])
            print(f"   {r}", file=sys.stderr, flush=True)
            rows.append(r)
    skipped = [m for m in args.methods if m not in methods]
    return rows, skipped


def fmt_table(title, rows, skipped, n_q, k):
    lines = [f"### {title}", "",
             f"| method | resolves to | build (s) | {n_q} queries (s) | (CPU s) "
             f"| single query (ms) | recall@{k} | peak RSS (MiB) | extra RSS (MiB) | load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed ({r['error']}) | | | | | | | | |")
            continue
        build = f"{r['build_s']:.2f}"
        if "jit_warmup_s" in r:
            build += f" (+{r['jit_warmup_s']:.0f} JIT)"
        lines.append(
            f"| {r['method']} | {r['resolved']} | {build} | {r['batch_s']:.2f} | "
            f"{r['batch_cpu_s']:.2f} | "
            f"{r['single_ms']:.1f} | {r['recall']:.4f} | {r['peak_mib']:.0f} | "
            f"{r['extra_mib']:.0f} | {r.get('load', float('nan')):.1f} |"
        )
    by = {r["method"]: r for r in rows if "error" not in r}
    if "auto" in by:
        a = by["auto"]
        # the alternatives: every method that runs other code than auto's
        # (the row of auto's own backend times the same code again)
        others = [
            (m, r) for m, r in by.items()
            if m != "auto" and r["resolved"] != a["resolved"] and r["recall"] >= 0.99
        ]
        if others:
            best = min((r["build_s"] + r["batch_s"], m) for m, r in others)
            best_single = min((r["single_ms"], m) for m, r in others)
            lines.append("")
            lines.append(
                f"build + batch: auto ({a['resolved']}) {a['build_s'] + a['batch_s']:.2f} s "
                f"vs the best alternative at recall >= 0.99 ({best[1]}) {best[0]:.2f} s: "
                f"ratio {(a['build_s'] + a['batch_s']) / best[0]:.2f}; single query: "
                f"{a['single_ms']:.1f} ms vs {best_single[0]:.1f} ms ({best_single[1]}): "
                f"ratio {a['single_ms'] / best_single[0]:.2f} (below 1: auto is faster)"
            )
    for s in skipped:
        lines.append(
            f"\n{s}: not run at this size (above --max-ann-ref, or not selected): its "
            "build time grows faster than linearly with the references, and at the "
            "smaller size it already exceeded many exact query batches."
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    p.add_argument("--n-ref", type=int, nargs="+", default=[1_000_000],
                   help="reference sizes of the large synthetic set")
    p.add_argument("--dim", type=int, default=256, help="width of the large synthetic set")
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("--n-single", type=int, default=20)
    p.add_argument("-k", type=int, default=1000)
    p.add_argument("--n-jobs", type=int, default=None)
    p.add_argument("--repeat", type=int, default=3, help="batch timing: best of this many")
    p.add_argument("--epsilons", type=float, nargs="+", default=[0.2, 0.6],
                   help="pynndescent query epsilons to time on one build")
    p.add_argument("--nprobes", type=int, nargs="+", default=[16, 64, 128],
                   help="faiss IVF nprobe values to time on one build")
    p.add_argument("--ef-searches", type=int, nargs="+", default=[2000, 4000],
                   help="faiss HNSW efSearch values to time on one build")
    p.add_argument("--methods", nargs="+", default=ALL_METHODS, choices=ALL_METHODS)
    p.add_argument("--max-ann-ref", type=int, default=300_000,
                   help="skip pynndescent and faiss HNSW above this reference size "
                        "(their builds are long)")
    p.add_argument("--no-real", action="store_true", help="do not use ../shared/data")
    p.add_argument("--skip-small", action="store_true", help="only the large synthetic set(s)")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "advdet_bench_knn"))
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--run-one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_one:
        run_one(json.loads(args.run_one))
        return
    if args.quick:
        args.n_ref, args.dim, args.n_queries, args.n_single, args.k = [20_000], 128, 200, 5, 100
    sections, notes = [], []
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        small_n = 10_000 if args.quick else 50_000
        real = (not args.no_real) and not args.skip_small and (SHARED / "cifar10-jpeg" / "train.tar").exists() \
            and (SHARED / "weights" / "resnet20-12fca82f.th").exists() and not args.quick
        if real:
            ref, q, how = cifar_features(args.cache, args.n_queries)
            notes.append(f"cifar-resnet20 features: {how}.")
            name = f"cifar-resnet20 {ref.shape[0]}x{ref.shape[1]}"
        else:
            ref = clustered(small_n, 64, 0)
            q = clustered(args.n_queries, 64, 0)[: args.n_queries]
            q = q + np.random.default_rng(1).normal(scale=0.5, size=q.shape).astype(np.float32)
            name = f"clustered {small_n}x64"
            if not args.quick and not args.skip_small:
                notes.append("real CIFAR data not found: 50,000 x 64 is synthetic.")
        if not args.skip_small:
            rows, skipped = bench_dataset("small", ref, q, args, tmp)
            sections.append(fmt_table(name, rows, skipped, len(q), min(args.k, len(ref))))
        for n in args.n_ref:
            ref = clustered(n, args.dim, 0)
            q = clustered(args.n_queries, args.dim, 0)
            q = q + np.random.default_rng(1).normal(scale=0.5, size=q.shape).astype(np.float32)
            rows, skipped = bench_dataset(f"big{n}", ref, q, args, tmp)
            del ref
            sections.append(fmt_table(f"clustered {n}x{args.dim}", rows, skipped,
                                      len(q), min(args.k, n)))
    header = (
        f"# bench_knn — {datetime.date.today().isoformat()}\n\n"
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load_start:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end (column `load`: the 1-minute load when "
        "each method started)"
        + (" (above the CPU count: other jobs shared the cores, timings are noisy)"
           if os.getloadavg()[0] > (os.cpu_count() or 1) else "")
        + "; "
        f"python {platform.python_version()}, numpy {np.__version__}.\n"
        f"Command: `python benchmarks/bench_knn.py {' '.join(sys.argv[1:])}`\n\n"
        f"k = {args.k}, {args.n_queries} queries per batch (wall time: best of "
        f"{args.repeat}, one run when over 5 s; CPU s = user+sys of that run), "
        f"single-query time = median of {args.n_single}. Queries are fresh points "
        "from the same distribution. pynndescent, faiss IVF and HNSW: one build, "
        "queried at each setting; pynndescent's numba JIT warm-up (once per "
        "process) is shown apart. Every method runs in its own process (faiss's "
        "OpenMP runtime never shares a process with another method).\n"
    )
    notes.append(
        "`exact` and `auto` run the same code at these sizes (auto resolves to the "
        "exact search below 2,000,000 references): the gap between their rows is "
        "run-to-run noise. The exact search screens with one GEMM per tile in the "
        "data's precision, keeps k + k/4 candidates per query and re-ranks every "
        "candidate within the rounding-error window exactly in float64 (order: "
        "distance, then reference index); sklearn-brute is the bare "
        "NearestNeighbors(algorithm='brute') call without that ordering."
    )
    text = header + "\n" + "\n".join(sections)
    if notes:
        text += "\nNotes:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
