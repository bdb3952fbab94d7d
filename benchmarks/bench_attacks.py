"""Attack throughput: sklearn_advdet.deep.attacks vs torchattacks.

Runs FGSM, BIM, PGD and MI-FGSM of both libraries on the same model, the same
batch and the same settings (eps 8/255, 10 steps of 2/255 for the iterative
ones, PGD with a random start), alternating the two libraries over
``--repeats`` rounds, and reports the best images/s of each and the ratio
(ours / torchattacks; the goal is >= 1.0), for our default settings and
with ``CPU_CHANNELS_LAST = False`` (the layout torchattacks uses).  Our
attacks also return the success mask, which costs one more forward pass;
torchattacks returns the images only, so it is timed twice: alone, and
followed by the forward pass that gives the success mask (the like-for-like
comparison).  For the deterministic attacks the script also checks that
both produce the same images (contiguous layout) and counts the pixels that
differ with the default layout.

On the CPU, torch runs with ``--threads`` threads (default 1: on a shared
2-core machine a second OpenMP thread makes a small model many times slower;
both libraries run with the same setting).

Model: the published CIFAR-10 ResNet-20 (``sklearn_advdet.deep.models
.cifar_resnet`` with ``../shared/data/weights/resnet20-12fca82f.th``) on the
first CIFAR-10 test JPEGs when the shared data are there, else a randomly
initialised ResNet-20 on uniform noise (throughput barely depends on the
pixels).  Device: CUDA when available, else the CPU.

A second table reports L-BFGS (which torchattacks does not have) on a few
images: time, success, and its perturbation next to FGSM aimed at the same
targets (L2 and L-inf at the smallest eps on a 1/255 grid that reaches the
target).

Needs torchattacks (``pip install torchattacks`` or the ``benchmarks`` extra).

Usage::

    python benchmarks/bench_attacks.py [--quick] [--batch-size 128] [--repeats 3] [--threads 1]
"""

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sklearn_advdet.deep import attacks as A

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("SKLEARN_ADVDET_SHARED_DATA", HERE.parents[1] / "shared" / "data"))


def load_model_and_data(n, device):
    from sklearn_advdet.deep.models import cifar_resnet

    weights = SHARED / "weights" / "resnet20-12fca82f.th"
    test_tar = SHARED / "cifar10-jpeg" / "test.tar"
    if weights.exists() and test_tar.exists():
        from sklearn_advdet.deep.data import load_image_folder

        model = cifar_resnet(20, weights=str(weights))
        images, labels, _ = load_image_folder(str(test_tar), per_class=(n + 9) // 10)
        x = torch.from_numpy(images[:n].astype(np.float32) / 255.0)
        y = torch.from_numpy(labels[:n]).long()
        what = "ResNet-20 (published weights), CIFAR-10 test JPEGs"
    else:
        model = cifar_resnet(20)
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((n, 3, 32, 32), generator=gen)
        with torch.no_grad():
            y = model(x).argmax(1)
        what = "ResNet-20 (random init), uniform noise (shared data not found)"
    return model.to(device).eval(), x.to(device), y.to(device), what


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def throughput_table(model, x, y, device, repeats):
    import torchattacks

    eps, alpha, steps = 8 / 255, 2 / 255, 10
    cases = {
        "FGSM": (
            lambda: A.fgsm(model, x, y, eps).images,
            torchattacks.FGSM(model, eps=eps),
            True,
        ),
        "BIM (10 steps)": (
            lambda: A.bim(model, x, y, eps, alpha=alpha, n_iter=steps).images,
            torchattacks.BIM(model, eps=eps, alpha=alpha, steps=steps),
            True,
        ),
        "PGD (10 steps, random start)": (
            lambda: A.pgd(model, x, y, eps, alpha=alpha, n_iter=steps, random_state=0).images,
            torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps),
            False,
        ),
        "MI-FGSM (10 steps)": (
            lambda: A.mifgsm(model, x, y, eps, alpha=alpha, n_iter=steps, decay=1.0).images,
            torchattacks.MIFGSM(model, eps=eps, alpha=alpha, steps=steps, decay=1.0),
            True,
        ),
    }
    def with_check(attack):
        def run():
            adv = attack(x, y)
            with torch.no_grad():
                success = model(adv).argmax(1) != y
            return adv, success

        return run

    def contiguous(fn):
        def run():
            A.CPU_CHANNELS_LAST = False
            try:
                return fn()
            finally:
                A.CPU_CHANNELS_LAST = True

        return run

    rows = []
    for name, (ours_fn, theirs, deterministic) in cases.items():
        # ours (default layout), ours (contiguous), torchattacks alone, + check
        fns = [ours_fn, contiguous(ours_fn), lambda: theirs(x, y), with_check(theirs)]
        for fn in fns:  # warm-up (allocator, cudnn autotuning), not timed
            fn()
        times = [[] for _ in fns]
        outs = [None] * len(fns)
        for r in range(repeats):
            order = [0, 1, 2, 3] if r % 2 == 0 else [3, 2, 1, 0]
            for which in order:
                dt, outs[which] = timed(fns[which], device)
                times[which].append(dt)
        same, differ = "-", "-"
        if deterministic:
            same = "yes" if torch.allclose(outs[1], outs[2], atol=1e-6, rtol=0) else "NO"
            n_diff = int(((outs[0] - outs[2]).abs() > 1e-6).sum())
            differ = f"{n_diff} ({100 * n_diff / outs[0].numel():.3f} %)"
        n = x.shape[0]
        ips = [n / min(t) for t in times]
        rows.append((name, ips, same, differ))
        print(
            f"  {name}: ours {ips[0]:.1f} img/s (contiguous {ips[1]:.1f}), "
            f"torchattacks alone {ips[2]:.1f}, + check {ips[3]:.1f}",
            flush=True,
        )
    return rows


def lbfgs_table(model, x, y, n):
    x, y = x[:n], y[:n]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    t = time.perf_counter()
    res = A.lbfgs(model, x, y, random_state=0)
    dt = time.perf_counter() - t
    l2 = (res.images - x).flatten(1).norm(dim=1).cpu().numpy()
    linf = (res.images - x).abs().flatten(1).max(1).values.cpu().numpy()
    f_eps = np.full(len(x), np.inf)
    f_l2 = np.full(len(x), np.inf)
    for k in range(255, 0, -1):
        f = A.fgsm(model, x, y, k / 255, targeted=True, target=res.target)
        hit = f.success.cpu().numpy()
        f_eps[hit] = k / 255
        f_l2[hit] = (f.images - x).flatten(1).norm(dim=1).cpu().numpy()[hit]
    succ = res.success.cpu().numpy()
    both = succ & np.isfinite(f_eps)
    return {
        "images": len(x),
        "seconds": dt,
        "success": float(succ.mean()),
        "fgsm_success": float(np.isfinite(f_eps).mean()),
        "both": int(both.sum()),
        "lbfgs_l2": float(np.median(l2[both])) if both.any() else float("nan"),
        "fgsm_l2": float(np.median(f_l2[both])) if both.any() else float("nan"),
        "lbfgs_linf": float(np.median(linf[both]) * 255) if both.any() else float("nan"),
        "fgsm_linf": float(np.median(f_eps[both]) * 255) if both.any() else float("nan"),
        "frac_l2_smaller": float(np.mean(l2[both] < f_l2[both])) if both.any() else float("nan"),
        "frac_linf_smaller": float(np.mean(linf[both] < f_eps[both] - 1e-7)) if both.any() else float("nan"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch, one round")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--lbfgs-images", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=str(HERE / "results" / "bench_attacks.md"))
    args = parser.parse_args()
    batch = args.batch_size or (32 if args.quick else 128)
    repeats = args.repeats or (1 if args.quick else 3)
    n_lbfgs = args.lbfgs_images if args.lbfgs_images is not None else (8 if args.quick else 32)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    model, x, y, what = load_model_and_data(batch, device)
    import torchattacks

    print(f"model/data: {what}; batch {batch}; device {device}", flush=True)
    rows = throughput_table(model, x, y, device, repeats)
    lb = lbfgs_table(model, x, y, n_lbfgs) if n_lbfgs else None

    machine = (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"torchattacks {torchattacks.__version__}, device {device}"
    )
    if device.type == "cuda":
        machine += f" ({torch.cuda.get_device_name(0)})"
    if hasattr(os, "getloadavg"):
        machine += ", load average at the end %.1f / %.1f / %.1f (1/5/15 min)" % os.getloadavg()
    lines = [
        "# Attack throughput: sklearn_advdet vs torchattacks",
        "",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Machine: {machine}  ",
        f"Model/data: {what}; batch of {batch} images; best of {repeats} alternating "
        "rounds after one warm-up each; eps 8/255, 10 steps of 2/255.",
        "",
        "Ours returns images + success mask; \"torchattacks + check\" adds the forward "
        "pass that gives the mask (like for like); \"alone\" is its bare call.  "
        "\"ours\" is the default (on the CPU the model sees channels_last input, "
        "`CPU_CHANNELS_LAST`); \"ours, contiguous\" sets `CPU_CHANNELS_LAST = False`, "
        "the layout torchattacks uses.  \"same images\": ours (contiguous) equals "
        "torchattacks to 1e-6; \"pixels differing\": ours (default) against "
        "torchattacks, where a numerically-zero gradient component changed sign.",
        "",
        "| attack | ours (img/s) | ours, contiguous (img/s) | torchattacks + check "
        "(img/s) | ratio ours / + check | ratio contiguous / + check | torchattacks "
        "alone (img/s) | ratio ours / alone | same images | pixels differing |",
        "|---|---:|---:|---:|---:|---:|---:|---:|:---:|---:|",
    ]
    for name, (o, oc, t, tc), same, differ in rows:
        lines.append(
            f"| {name} | {o:.1f} | {oc:.1f} | {tc:.1f} | {o / tc:.2f}x | {oc / tc:.2f}x "
            f"| {t:.1f} | {o / t:.2f}x | {same} | {differ} |"
        )
    if lb is not None:
        lines += [
            "",
            "## L-BFGS (no torchattacks counterpart)",
            "",
            f"{lb['images']} correctly classified images, default settings (6 values of c, "
            f"<= 100 L-BFGS-B iterations each): {lb['seconds']:.1f} s "
            f"({lb['images'] / lb['seconds']:.2f} img/s), target reached on "
            f"{100 * lb['success']:.0f} %. Against FGSM aimed at the same targets "
            f"(smallest eps on a 1/255 grid that reaches the target; reached on "
            f"{100 * lb['fgsm_success']:.0f} %), over the {lb['both']} images both reach:",
            "",
            "| | L-BFGS | targeted FGSM | L-BFGS smaller on |",
            "|---|---:|---:|---:|",
            f"| median L2 | {lb['lbfgs_l2']:.3f} | {lb['fgsm_l2']:.3f} | "
            f"{100 * lb['frac_l2_smaller']:.0f} % |",
            f"| median L-inf (x 255) | {lb['lbfgs_linf']:.1f} | {lb['fgsm_linf']:.1f} | "
            f"{100 * lb['frac_linf_smaller']:.0f} % |",
        ]
    lines += [
        "",
        "The GPU path is unmeasured here (no GPU on this machine)."
        if device.type != "cuda"
        else "Measured on the GPU.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
