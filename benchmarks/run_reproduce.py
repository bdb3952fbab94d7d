"""Run the CIFAR-10 reproduction of both papers and keep its Markdown report.

    python benchmarks/run_reproduce.py [--depth 20] [--size default] [--quick]

Runs :func:`sklearn_advdet.experiments.reproduce.reproduce` on ``../shared/data``
(or ``--data``) into ``--out`` (default ``<temp dir>/advdet-reproduce/
resnet<depth>-<size>``, which also holds the resumable feature stores), then
copies ``results.md`` to ``benchmarks/results/reproduce_resnet<depth>.md``
and the ROC figure to ``benchmarks/results/figures/``.  ``--quick`` is
``--size tiny`` (written as ``reproduce_resnet<depth>_tiny.md``).
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--weights", default=None,
                        help="checkpoint (default: <data>/weights/resnet<depth>-*.th)")
    parser.add_argument("--size", default="default", choices=("tiny", "default", "full"))
    parser.add_argument("--quick", action="store_true", help="same as --size tiny")
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-jobs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default=None,
                        help="paragraph written under the report's title")
    args = parser.parse_args(argv)
    size = "tiny" if args.quick else args.size

    from sklearn_advdet.experiments.reproduce import reproduce

    out = Path(args.out or Path(tempfile.gettempdir()) / "advdet-reproduce"
               / f"resnet{args.depth}-{size}")
    res = reproduce(args.data, args.depth, args.weights, out, size=size,
                    device=args.device, n_jobs=args.n_jobs, random_state=args.seed,
                    progress=True, note=args.note)
    stem = f"reproduce_resnet{args.depth}" + ("" if size == "default" else f"_{size}")
    (RESULTS / "figures").mkdir(parents=True, exist_ok=True)
    fig_name = f"{stem}_roc.png"
    shutil.copyfile(res["paths"]["roc"], RESULTS / "figures" / fig_name)
    md = res["markdown"].replace(res["figures"]["roc"], f"figures/{fig_name}")
    (RESULTS / f"{stem}.md").write_text(md)
    p1 = res["paper1"]
    best = max(p1["rows"], key=lambda r: r["macro_auc"])
    print(f"\nbest macro AUC: {best['config']} {best['macro_auc']:.3f}; "
          f"total {res['timings']['total']:.0f} s; written {RESULTS / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
