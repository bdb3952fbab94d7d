"""Benchmark the guarded model: overhead of the detector inside the forward pass.

Guarded forward (classifier + hooks + pivots + MLP detector, one
``GuardedModel`` call) against the bare forward of the same classifier, same
batch, CPU.  ResNet-20 on CIFAR-10 (the shared weights when present), every
basic block hooked (``layers="auto"``), batch 256.  Goal: <= 1.3x.

Timing: ``--repeats`` interleaved rounds (bare, guarded, bare, guarded, ...),
each the time of one batch; the best and the median of each are reported with
the machine's load average, because the CPU is shared.  Also: forward +
input-gradient (what an attack pays per step) for both.

With ``--adaptive``: adaptive white-box attacks on ResNet-20 guarded by
pivots + MLP, small and on CPU (see :func:`adaptive_main`), written to
``benchmarks/results/adaptive_resnet20.md``.

Usage::

    python benchmarks/bench_guarded.py              # writes benchmarks/results/bench_guarded.md
    python benchmarks/bench_guarded.py --quick
    python benchmarks/bench_guarded.py --adaptive   # writes benchmarks/results/adaptive_resnet20.md
"""

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import make_pipeline

from sklearn.metrics import roc_auc_score

from sklearn_advdet import MLPDetector, PivotEmbedder
from sklearn_advdet.deep.adaptive import adaptive_pgd, evaluate_guarded, orthogonal_pgd
from sklearn_advdet.deep.attacks import eps_from_255, pgd
from sklearn_advdet.deep.data import load_image_folder
from sklearn_advdet.deep.extraction import extract_features
from sklearn_advdet.deep.models import cifar_resnet
from sklearn_advdet.experiments.guarded import GuardedModel

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
WEIGHTS = DATA / "weights" / "resnet20-12fca82f.th"


def build(n_ref, seed=0):
    """ResNet-20, a pivots + MLP detector fitted on its features of random images.

    The detector's quality is irrelevant to its cost; its shapes are those of
    the real one (9 blocks x 10 centroids -> MLP of 100 units).
    """
    weights = str(WEIGHTS) if WEIGHTS.exists() else None
    model = cifar_resnet(20, weights=weights).eval()
    rng = np.random.RandomState(seed)
    images = torch.from_numpy(rng.rand(n_ref, 3, 32, 32).astype(np.float32))
    X, layout = extract_features(model, images, layers="auto")
    y_ref = X[:, layout.logits_slice].argmax(1)
    if np.unique(y_ref).size < 2:  # random images may all land in one class
        y_ref = np.arange(n_ref) % 10
    pipe = make_pipeline(FrozenEstimator(PivotEmbedder(layout).fit(X, y_ref)),
                         MLPDetector(max_epochs=2, random_state=seed))
    pipe.fit(X, rng.randint(0, 2, n_ref))
    return model, GuardedModel(model, pipe, layers="auto"), weights is not None


def _time(fn, x):
    t = time.perf_counter()
    fn(x)
    return time.perf_counter() - t


def measure(model, guard, batch, repeats, seed=1):
    x = torch.from_numpy(np.random.RandomState(seed).rand(batch, 3, 32, 32).astype(np.float32))

    def bare(x):
        with torch.no_grad():
            model(x)

    def guarded(x):
        with torch.no_grad():
            guard(x)

    def bare_grad(x):
        x = x.clone().requires_grad_(True)
        torch.autograd.grad(model(x).logsumexp(1).sum(), x)

    def guarded_grad(x):
        x = x.clone().requires_grad_(True)
        logits, p = guard(x)
        torch.autograd.grad(logits.logsumexp(1).sum() + p.sum(), x)

    with torch.no_grad():
        X = guard.features(x)[1]

    def detector_only(_):
        with torch.no_grad():
            guard.detector(X)

    fns = {"bare": bare, "guarded": guarded, "bare_grad": bare_grad,
           "guarded_grad": guarded_grad, "detector": detector_only}
    for fn in fns.values():  # warm-up
        fn(x)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(_time(fn, x))
    return times


def report(times, batch, threads, pretrained, load_before, load_after):
    def row(name, a, b):
        best = min(times[b]) / min(times[a])
        med = statistics.median(times[b]) / statistics.median(times[a])
        return (f"| {name} | {1e3 * min(times[a]):.1f} / {1e3 * statistics.median(times[a]):.1f} "
                f"| {1e3 * min(times[b]):.1f} / {1e3 * statistics.median(times[b]):.1f} "
                f"| {best:.3f}x | {med:.3f}x |")

    lines = [
        "# Guarded model overhead (bench_guarded.py)",
        "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"(shared with other jobs), torch {torch.__version__}, {threads} torch thread(s). "
        f"Load average (1 min) before / after: {load_before:.1f} / {load_after:.1f}.",
        "",
        f"ResNet-20 ({'CIFAR-10 weights' if pretrained else 'random weights'}), "
        f"9 basic blocks hooked (layers='auto'), batch {batch}, CPU, float32. Detector: "
        "PivotEmbedder (centroids, euclidean, 9 layers x 10 classes) + MLPDetector "
        "(90 -> 100 -> 1), converted by GuardedModel. Times in ms per batch, best / median "
        f"of {len(times['bare'])} interleaved rounds.",
        "",
        "| pass | bare (ms) | guarded (ms) | ratio (best) | ratio (median) |",
        "|---|---|---|---|---|",
        row("forward (no_grad)", "bare", "guarded"),
        row("forward + input gradient", "bare_grad", "guarded_grad"),
        row("detector steps alone (on the feature rows) vs bare forward", "bare", "detector"),
        "",
        "The last row isolates the converted detector (pivots + MLP on the 346 feature "
        "columns): its share of a bare forward, less sensitive to the machine's load than the "
        "difference of two noisy forward times.",
        "",
        "Goal: guarded forward <= 1.3x the bare forward.",
        "",
        "Reading: on a loaded shared CPU the forward times of a batch vary by tens of per "
        "cent between rounds, more than the detector costs, so the forward ratio sits "
        "within the noise of 1; the third row bounds what the guard adds (the hooks' "
        "pooling, one mean per hooked block, is in the first row only). The gradient row "
        "also back-propagates the detector's gradient into every hooked block (what an "
        "adaptive attack pays per step).",
    ]
    return "\n".join(lines) + "\n"


def _float(u8):
    return torch.from_numpy(u8.astype(np.float32) / 255.0)


def setup(args):
    model = cifar_resnet(20, weights=str(DATA / "weights" / "resnet20-12fca82f.th")).eval()
    ref_u8, ref_y, _ = load_image_folder(DATA / "cifar10-jpeg" / "train.tar",
                                         per_class=args.n_ref // 10)
    test_u8, test_y, _ = load_image_folder(DATA / "cifar10-jpeg" / "test.tar",
                                           per_class=(args.n_train + args.n_calib
                                                      + args.n_eval) // 10 + 1)
    perm = np.random.RandomState(0).permutation(len(test_u8))
    test_u8, test_y = test_u8[perm], test_y[perm]
    X_ref, layout = extract_features(model, _float(ref_u8), layers="auto")
    tr = slice(0, args.n_train)
    ca = slice(args.n_train, args.n_train + args.n_calib)
    ev = slice(args.n_train + args.n_calib, args.n_train + args.n_calib + args.n_eval)
    eps = eps_from_255(8)
    x_tr, y_tr = _float(test_u8[tr]), torch.from_numpy(test_y[tr])
    adv_tr = pgd(model, x_tr, y_tr, eps, n_iter=10, random_state=0, quantize=True).images
    X_det, _ = extract_features(model, torch.cat([x_tr, adv_tr]), layers="auto")
    pipe = make_pipeline(FrozenEstimator(PivotEmbedder(layout).fit(X_ref, ref_y)),
                         MLPDetector(max_epochs=100, lr=1e-3, random_state=0))
    pipe.fit(X_det, np.repeat([0, 1], args.n_train))
    guard = GuardedModel(model, pipe, layers="auto", threshold=None)
    guard.calibrate(_float(test_u8[ca]), target_fpr=0.05)
    return model, guard, _float(test_u8[ev]), torch.from_numpy(test_y[ev]), eps


def figures(guard, clean, y, adv):
    _, _, p_clean = evaluate_guarded(guard, clean, y)
    success, mis, p_adv = evaluate_guarded(guard, adv, y)
    t = float(guard.threshold)
    rejected = p_adv > t
    scores = np.r_[p_clean.numpy(), p_adv.numpy()]
    auc = roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(adv))], scores)
    return {"auc": auc, "tpr": float(rejected.float().mean()),
            "fooled": float(mis.float().mean()),
            "robust": float(((~mis) | rejected).float().mean()),
            "undetected": float(success.float().mean())}


def adaptive_main(args):
    """Adaptive white-box attacks on ResNet-20 guarded by pivots + MLP.

    Reference set: ``--n-ref`` CIFAR-10 training images (pivots = class
    centroids of every basic block).  Detector: MLPDetector on the pivot
    distances of ``--n-train`` clean test images and their PGD-8/255
    versions.  Threshold: 5 % FPR on ``--n-calib`` other clean test images.
    Evaluation on ``--n-eval`` further test images: oblivious PGD (the
    classifier only), adaptive PGD (lam grid) and orthogonal PGD, at 8/255.
    Figures: detection AUC (clean vs attacked, p_adv), TPR at the threshold,
    share fooling the bare classifier, robust accuracy under detection
    (classified right or rejected).
    """
    t0 = time.perf_counter()
    model, guard, x, y, eps = setup(args)
    t_setup = time.perf_counter() - t0
    _, _, p_clean = evaluate_guarded(guard, x, y)
    with torch.no_grad():
        clean_acc = float((guard(x)[0].argmax(1) == y).float().mean())
    rows = {}
    runs = {
        "oblivious PGD (10 steps)": lambda: pgd(model, x, y, eps, n_iter=10, random_state=1,
                                                quantize=True),
        f"adaptive PGD (lam 0.1/1/10, {args.n_iter} steps each)": lambda: adaptive_pgd(
            guard, x, y, eps, n_iter=args.n_iter, random_state=1, quantize=True),
        f"orthogonal PGD ({args.n_iter} steps)": lambda: orthogonal_pgd(
            guard, x, y, eps, n_iter=args.n_iter, random_state=1, quantize=True),
    }
    for name, run in runs.items():
        t = time.perf_counter()
        r = run()
        rows[name] = figures(guard, x, y, r.images)
        rows[name]["seconds"] = time.perf_counter() - t
        print(name, rows[name], flush=True)
    lines = [
        "# Adaptive attacks on ResNet-20 guarded by pivots + MLP (bench_guarded.py --adaptive)",
        "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
        f"{platform.machine()}, {os.cpu_count()} shared cores, {args.threads} torch threads, "
        f"load average {os.getloadavg()[0]:.1f}; setup {t_setup:.0f} s.",
        "",
        f"CIFAR-10 ResNet-20 (shared weights), 9 basic blocks hooked. Pivots: class "
        f"centroids of {args.n_ref} training images. Detector: MLPDetector on the pivot "
        f"distances of {args.n_train} clean test images and their PGD-8/255 versions "
        f"(10 steps). Threshold {float(guard.threshold):.3f}: 5 % FPR on {args.n_calib} "
        f"other clean test images. Evaluated on {args.n_eval} further test images (clean "
        f"accuracy {clean_acc:.3f}, FPR at the threshold "
        f"{float((p_clean > guard.threshold).float().mean()):.3f}); every attack at "
        "8/255, quantised to 8 bits.",
        "",
        "| attack | detection AUC | TPR at 5 % FPR | fools the classifier | undetected "
        "and wrong | robust accuracy under detection | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in rows.items():
        lines.append(f"| {name} | {f['auc']:.3f} | {f['tpr']:.3f} | {f['fooled']:.3f} | "
                     f"{f['undetected']:.3f} | {f['robust']:.3f} | {f['seconds']:.0f} |")
    lines += ["", "Robust accuracy under detection = share of attacked images that are "
              "classified right or rejected. Small sample: each figure is within about "
              "+/- 0.07 (95 %) on 200 images."]
    Path(args.adaptive_out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_guarded.md"))
    ap.add_argument("--adaptive", action="store_true", help="run the adaptive-attack figures")
    ap.add_argument("--n-ref", type=int, default=1000)
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-calib", type=int, default=200)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--n-iter", type=int, default=20)
    ap.add_argument("--adaptive-out",
                    default=str(ROOT / "benchmarks" / "results" / "adaptive_resnet20.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.adaptive:
        return adaptive_main(args)
    repeats = 3 if args.quick else args.repeats
    model, guard, pretrained = build(n_ref=256 if args.quick else 1024)
    load_before = os.getloadavg()[0]
    times = measure(model, guard, args.batch, repeats)
    text = report(times, args.batch, args.threads, pretrained, load_before, os.getloadavg()[0])
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
