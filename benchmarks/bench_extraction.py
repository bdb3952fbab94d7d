"""Benchmark feature extraction.

1. Hook overhead: FeatureExtractor (every basic block hooked, pooled, copied
   to numpy, logits appended) against a bare forward pass of the same model
   over the same batches (goal: <= 5 % overhead). Best of several interleaved
   repeats, to damp the noise of shared machines.
2. Throughput on the real CIFAR-10 JPEG set (train.tar + test.tar, 60,000
   images): decoding time, and extraction into a feature store (images/s).
   With ``--n-images`` below 60,000 the store run uses a subset and the time
   for 60,000 is extrapolated (and labelled so).

3. Streaming (``--streaming``): the CIFAR-10 JPEG test tar (10,000 images)
   through ``FeatureExtractor(num_workers=w)`` into a store, decoded batch
   by batch by 0, 1 and 2 DataLoader workers, against decoding the whole tar
   first. Each configuration runs in a fresh process: images/s and peak
   resident memory (``ru_maxrss`` of the process and, separately, of its
   worker processes).

Usage::

    python benchmarks/bench_extraction.py            # full
    python benchmarks/bench_extraction.py --quick    # a few minutes at most
    python benchmarks/bench_extraction.py --streaming  # section 3 only

Writes the table to benchmarks/results/bench_extraction.md too.
"""

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sklearn_advdet.deep.data import load_image_folder
from sklearn_advdet.deep.extraction import FeatureExtractor
from sklearn_advdet.deep.models import cifar_resnet
from sklearn_advdet.store import FeatureStore

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}


def shared_data_dir(arg):
    for cand in (arg, os.environ.get("SKLEARN_ADVDET_SHARED_DATA"),
                 ROOT.parent / "shared" / "data"):
        if cand and (Path(cand) / "cifar10-jpeg" / "test.tar").exists():
            return Path(cand)
    return None


def bare_forward(model, images, batch_size, device):
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i:i + batch_size]).to(device)
            x = x.to(torch.float32) / 255.0
            out.append(model(x).cpu().numpy())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return np.concatenate(out)


def timed(fn):
    """(wall seconds, CPU seconds of this process, all threads)."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def pooling_cost(model, names, batch, device):
    """CPU time of the hooks' own work (pooling + copies) for one batch, alone."""
    from sklearn_advdet.deep._hooks import _pool, _to_numpy

    outs, handles = {}, []
    modules = dict(model.named_modules())
    for n in names:
        handles.append(modules[n].register_forward_hook(
            lambda m, a, o, n=n: outs.__setitem__(n, o.detach().clone())))
    try:
        with torch.inference_mode():
            logits = model(torch.from_numpy(batch).to(device).float() / 255)
    finally:
        for h in handles:
            h.remove()

    def work():
        with torch.inference_mode():
            _to_numpy([_pool(n, outs[n]) for n in names], logits)

    work()
    return min(timed(work)[1] for _ in range(5))


def bench_overhead(depth, images, batch_size, repeats, device, data_dir):
    weights = data_dir / "weights" / WEIGHTS[depth] if data_dir and depth in WEIGHTS else None
    model = cifar_resnet(depth, weights=weights).to(device)
    fx = FeatureExtractor(model, layers="cifar_resnet", device=device,
                          batch_size=batch_size, progress=False)
    bare_forward(model, images[:batch_size], batch_size, device)  # warm-up
    fx.extract(images[:batch_size])
    bare, hooked = [], []
    for _ in range(repeats):  # interleaved pairs
        bare.append(timed(lambda: bare_forward(model, images, batch_size, device)))
        hooked.append(timed(lambda: fx.extract(images)))
    bare, hooked = np.array(bare), np.array(hooked)
    pair_ratio = np.median(hooked[:, 1] / bare[:, 1]) - 1
    pool = pooling_cost(model, fx.model.feature_layers, images[:batch_size], device)
    n_batches = -(-len(images) // batch_size)
    return {
        "model": f"ResNet-{depth} ({len(fx.model.feature_layers)} blocks hooked)",
        "images": len(images), "batch": batch_size,
        "bare_s": bare[:, 0].min(), "hooked_s": hooked[:, 0].min(),
        "bare_cpu": bare[:, 1].min(), "hooked_cpu": hooked[:, 1].min(),
        "pair_overhead": pair_ratio,
        "hook_work": pool * n_batches / bare[:, 1].min(),
    }


_STREAM_CHILD = """
import resource, sys, tempfile, time
from pathlib import Path
import torch
from sklearn_advdet.deep.data import load_image_folder
from sklearn_advdet.deep.extraction import FeatureExtractor
from sklearn_advdet.deep.models import cifar_resnet
mode, tar, weights, threads, bs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
if weights == "tiny":  # decoding-bound: one 3x3 convolution, pooled, and a linear layer
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 10))
    model.feature_layers = ["1"]
else:
    model = cifar_resnet(20, weights=weights)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
workers = 0 if mode == "whole" else int(mode)
fx = FeatureExtractor(model, layers="auto", device="cpu", batch_size=bs,
                      progress=False, num_workers=workers)
with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    data = load_image_folder(tar)[0] if mode == "whole" else tar
    st = fx.extract_to_store(data, Path(tmp) / "s", chunk_size=2048)
    dt = time.perf_counter() - t0
    n = len(st)
self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(n, dt, base, self_rss, child_rss)
"""


def _stream_runs(tar, weights, threads, batch_size, modes=("whole", "0", "1", "2")):
    import subprocess

    rows = []
    for mode in modes:
        out = subprocess.run(
            [sys.executable, "-c", _STREAM_CHILD, mode, str(tar), str(weights),
             str(threads), str(batch_size)], capture_output=True, text=True, check=True)
        n, dt, base, self_rss, child_rss = out.stdout.split()
        rows.append((mode, int(n), float(dt), int(base) / 1024, int(self_rss) / 1024,
                     int(child_rss) / 1024))
    return rows


def _stream_table(rows):
    lines = ["| source | decoding workers | images | wall (s) | images/s "
             "| baseline RSS (MiB) | peak RSS (MiB) | peak above baseline (MiB) "
             "| worker peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mode, n, dt, base, peak, child in rows:
        src = "decoded whole" if mode == "whole" else "streamed"
        w = "-" if mode == "whole" else mode
        lines.append(f"| {src} | {w} | {n} | {dt:.1f} | {n / dt:.0f} | {base:.0f} "
                     f"| {peak:.0f} | {peak - base:.0f} | {f'{child:.0f}' if child else '-'} |")
    return lines


def bench_streaming(data_dir, batch_size, threads):
    """Images/s and peak memory of streamed extraction (fresh process each)."""
    tar = data_dir / "cifar10-jpeg" / "test.tar"
    rows = _stream_runs(tar, data_dir / "weights" / WEIGHTS[20], threads, batch_size)
    big = _stream_runs(data_dir / "cifar10-jpeg" / "train.tar", "tiny", threads,
                       batch_size, modes=("whole", "0", "2"))
    lines = ["## Streamed image sources: CIFAR-10 JPEG test.tar (10,000 images)", "",
             f"ResNet-20, every basic block hooked, CPU, {threads} torch thread(s), batch "
             f"{batch_size}, into a store (chunks of 2,048). 'whole' decodes the tar "
             "into one uint8 array first (load_image_folder) and extracts from it; "
             "0/1/2 stream the tar through a DataLoader with that many decoding "
             "workers. Peak RSS is ru_maxrss of a fresh process (after loading torch "
             "and the model: 'baseline'); the workers' peak is the largest worker's.", ""]
    lines += _stream_table(rows)
    lines += ["", "### Memory bound: train.tar (50,000 images), decoding-bound model", "",
              "The same runs with a one-convolution model, so that decoding dominates "
              "and the source's own memory shows: decoding the whole tar holds all "
              "images (50,000 x 3 x 32 x 32 uint8 = 147 MiB) at once; streaming holds "
              "the batches in flight only, whatever the number of images.", ""]
    lines += _stream_table(big)
    return lines + [""]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small sizes (overhead on 512 images, store on 2,000)")
    p.add_argument("--data", default=None, help="folder holding cifar10-jpeg/ and weights/")
    p.add_argument("--n-images", type=int, default=None,
                   help="images for the store run (default 60,000; --quick 2,000)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--depths", default=None, help="e.g. 20,56")
    p.add_argument("--store-threads", default="2,1",
                   help="torch thread counts for the CIFAR store runs on CPU")
    p.add_argument("--overhead-threads", type=int, default=1,
                   help="torch threads for the overhead comparison on CPU")
    p.add_argument("--streaming", action="store_true",
                   help="only the streamed-source section (appended to the results)")
    p.add_argument("--streaming-threads", type=int, default=1,
                   help="torch threads for the streamed-source runs")
    args = p.parse_args(argv)
    if args.streaming:
        data_dir = shared_data_dir(args.data)
        if data_dir is None:
            print("needs ../shared/data (pass --data)")
            return 1
        lines = bench_streaming(data_dir, args.batch_size, args.streaming_threads)
        lines.insert(1, f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}"
                        f", {platform.platform()}, {os.cpu_count()} CPUs, load average "
                        f"{os.getloadavg()[0]:.1f}\n")
        text = "\n".join(lines) + "\n"
        print(text)
        out = ROOT / "benchmarks" / "results" / "bench_extraction.md"
        old = out.read_text() if out.exists() else ""
        cut = old.find("## Streamed image sources")
        out.write_text((old[:cut] if cut >= 0 else old).rstrip() + "\n\n" + text)
        return 0

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    depths = [int(d) for d in (args.depths or ("20" if args.quick else "20,56")).split(",")]
    n_overhead = 512 if args.quick else 2048
    repeats = 7 if args.quick else 11
    n_store = args.n_images or (2000 if args.quick else 60000)
    data_dir = shared_data_dir(args.data)

    lines = [f"# bench_extraction ({'quick' if args.quick else 'full'})", "",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
             f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads), device {device}",
             f"- load average at start: {os.getloadavg()[0]:.1f}"
             + (" (above the CPU count: other jobs shared the cores, absolute "
                "times are noisy)" if os.getloadavg()[0] > (os.cpu_count() or 1) else ""),
             ""]

    # --------------------------------------------------------- overhead
    if data_dir is not None:
        t0 = time.perf_counter()
        test_images, _, _ = load_image_folder(data_dir / "cifar10-jpeg" / "test.tar")
        decode_test = time.perf_counter() - t0
        images = test_images[:n_overhead]
    else:
        test_images, decode_test = None, None
        images = np.random.default_rng(0).integers(0, 256, (n_overhead, 3, 32, 32),
                                                   dtype=np.uint8)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # one intra-op thread: with 2 threads on shared cores, OpenMP spin-waiting
        # inflates CPU times (x3 here) and drowns the few ms the hooks cost
        torch.set_num_threads(args.overhead_threads)
    try:
        rows = [bench_overhead(d, images, args.batch_size, repeats, device, data_dir)
                for d in depths]
    finally:
        torch.set_num_threads(threads)
    lines += ["## Hook overhead (goal <= 5 %)", "",
              f"{repeats} interleaved (bare, hooked) pairs, "
              f"{args.overhead_threads if device.type == 'cpu' else '-'} torch "
              "thread(s) on CPU. CPU = time.process_time() "
              "(all threads). 'paired CPU' = median over pairs of hooked/bare CPU time "
              "- 1; 'hook work' = CPU time of the hooks' own work (pooling of every "
              "hooked output, one host copy) timed alone, relative to the bare "
              "forward: the overhead without the noise of other jobs.", "",
              "| model | images | batch | bare wall / CPU (s), best | "
              "FeatureExtractor wall / CPU (s), best | overhead, paired CPU "
              "| overhead, hook work |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['images']} | {r['batch']} "
                     f"| {r['bare_s']:.2f} / {r['bare_cpu']:.2f} "
                     f"| {r['hooked_s']:.2f} / {r['hooked_cpu']:.2f} "
                     f"| {100 * r['pair_overhead']:+.1f} % | {100 * r['hook_work']:+.1f} % |")
    lines.append("")

    # ------------------------------------------------------ CIFAR store
    if data_dir is None:
        lines.append("CIFAR-10 store run skipped: ../shared/data not found (pass --data).")
    else:
        t0 = time.perf_counter()
        train_images, train_labels, _ = load_image_folder(
            data_dir / "cifar10-jpeg" / "train.tar")
        decode_train = time.perf_counter() - t0
        all_images = np.concatenate([train_images, test_images])
        n = min(n_store, len(all_images))
        subset = all_images[np.linspace(0, len(all_images) - 1, n).astype(int)]
        lines += ["## CIFAR-10 JPEG (60,000 images) into a feature store", "",
                  f"Decoding with tarfile + Pillow: train.tar {decode_train:.1f} s, "
                  f"test.tar {decode_test:.1f} s (60,000 images: "
                  f"{decode_train + decode_test:.1f} s).", "",
                  "| model | torch threads | images run | wall (s) | CPU (s) "
                  "| images/s (wall) | images per CPU-s | 60,000 images, wall (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        store_threads = [int(t) for t in args.store_threads.split(",")]
        if device.type != "cpu":
            store_threads = [torch.get_num_threads()]
        for d, nt in [(d, nt) for d in depths for nt in store_threads]:
            torch.set_num_threads(nt)
            model = cifar_resnet(d, weights=data_dir / "weights" / WEIGHTS[d])
            fx = FeatureExtractor(model, layers="cifar_resnet", device=device,
                                  batch_size=args.batch_size, progress=False)
            with tempfile.TemporaryDirectory() as tmp:
                dt, cpu = timed(lambda: fx.extract_to_store(
                    subset, Path(tmp) / "store", chunk_size=4096))
                assert len(FeatureStore.open(Path(tmp) / "store")) == n
            est = dt * 60000 / n
            label = f"{est:.0f}" + ("" if n == 60000 else " (extrapolated)")
            lines.append(f"| ResNet-{d} | {nt} | {n} | {dt:.1f} | {cpu:.1f} | {n / dt:.0f} "
                         f"| {n / cpu:.0f} | {label} |")
        lines.append("")
    if device.type != "cuda":
        lines.append("GPU path (device='cuda', amp=True): not measured here (no GPU "
                     "in this session).")
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "benchmarks" / "results" / "bench_extraction.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
