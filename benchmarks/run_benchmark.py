"""Run ``advdet benchmark`` on a CIFAR-10 ResNet and keep its tables and figures.

    python benchmarks/run_benchmark.py [--depth 20] [--out DIR] [--detector NAME ...]

Runs :func:`sklearn_advdet.experiments.benchmark.run_benchmark` on
``../shared/data`` (or ``--data``) into ``--out`` (default ``<temp
dir>/advdet-benchmark/resnet<depth>``, which also holds the resumable
detection-set stores and the cell cache: run it again to continue an
interrupted run, or to add detectors), then copies ``results.md`` to
``benchmarks/results/detection_resnet<depth>.md`` (with a header naming the
date, the machine and its load) and the figures to
``benchmarks/results/figures/detection_resnet<depth>/``.
"""

import argparse
import datetime
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--out", default=None)
    parser.add_argument("--detector", action="append", default=None)
    parser.add_argument("--protocol", action="append", default=None)
    parser.add_argument("--test-per-class", type=int, default=150)
    parser.add_argument("--transfer-from", type=int, default=None,
                        help="depth of a second CIFAR ResNet whose FGSM/PGD/MI-FGSM "
                             "images are added as transfer attacks")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-jobs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-copy", action="store_true",
                        help="leave benchmarks/results untouched (e.g. a partial run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from sklearn_advdet.experiments.benchmark import run_benchmark

    out = Path(args.out or Path(tempfile.gettempdir()) / "advdet-benchmark"
               / f"resnet{args.depth}")
    t0 = time.perf_counter()
    doc = run_benchmark(depth=args.depth, data_dir=args.data, out_dir=out,
                        test_per_class=args.test_per_class, detectors=args.detector,
                        protocols=args.protocol, n_bootstrap=args.n_bootstrap,
                        device=args.device, random_state=args.seed, n_jobs=args.n_jobs,
                        progress=False, source_depth=args.transfer_from)
    wall = time.perf_counter() - t0
    if args.no_copy:
        return 0
    stem = f"detection_resnet{args.depth}"
    figures = RESULTS / "figures" / stem
    if figures.exists():
        shutil.rmtree(figures)
    shutil.copytree(out / "figures", figures)
    cmd = " ".join(sys.argv[1:])
    head = (f"<!-- written by benchmarks/run_benchmark.py {cmd} -->\n\n"
            f"Run: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"{platform.machine()}, {os.cpu_count()} cores, load average at the end "
            f"{os.getloadavg()[0]:.1f}; this call {wall / 60:.1f} min (a detection "
            "set and finished cells of an earlier call into the same folder are "
            f"reused). Figures: `figures/{stem}/`.\n\n")
    md = (out / "results.md").read_text()
    (RESULTS / f"{stem}.md").write_text(md.replace("\n", "\n" + head, 1)
                                        if md.startswith("# ") else head + md)
    print(f"written {RESULTS / (stem + '.md')} ({len(doc['paths'])} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
