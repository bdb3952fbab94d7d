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

A third table measures what the channels_last default costs in agreement
with torchattacks (``--layout-images``, default 1,024): the share of pixels
of BIM/PGD/MI-FGSM images at least one 8-bit level apart, and of images with
any such pixel.  A fourth compares CW-L2, DeepFool and APGD with
torchattacks on one batch of correctly classified images
(``--boundary-images``, default 64): throughput (ratio ours / torchattacks),
success rates, and median L2 / L-inf over the images both fool.

Needs torchattacks (``pip install torchattacks`` or the ``benchmarks`` extra).

Usage::

    python benchmarks/bench_attacks.py [--quick] [--batch-size 128] [--repeats 3] [--threads 1]
        [--layout-images 1024] [--boundary-images 64] [--note "machine shared, load ~4"]
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


def layout_table(model, x, y):
    """channels_last (our CPU default) against torchattacks (contiguous):
    BIM, PGD without random start and MI-FGSM at 8/255, 10 steps of 2/255."""
    import torchattacks

    eps, alpha, steps = 8 / 255, 2 / 255, 10
    cases = [
        ("BIM", lambda: A.bim(model, x, y, eps, alpha=alpha, n_iter=steps),
         torchattacks.BIM(model, eps=eps, alpha=alpha, steps=steps)),
        ("PGD (no random start)",
         lambda: A.pgd(model, x, y, eps, alpha=alpha, n_iter=steps, random_start=False),
         torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)),
        ("MI-FGSM", lambda: A.mifgsm(model, x, y, eps, alpha=alpha, n_iter=steps),
         torchattacks.MIFGSM(model, eps=eps, alpha=alpha, steps=steps)),
    ]
    rows = []
    for name, ours_fn, theirs in cases:
        ours = ours_fn()
        adv = theirs(x, y)
        levels = ((ours.images * 255).round() - (adv * 255).round()).abs()
        apart = levels > 0
        with torch.no_grad():
            t_success = model(adv).argmax(1) != y
        rows.append({
            "attack": name,
            "pixels": float(apart.float().mean()),
            "one_level": float((levels == 1).float().mean()),
            "images": float(apart.flatten(1).any(1).float().mean()),
            "worst_image": float(apart.flatten(1).float().mean(1).max()),
            "max_levels": int(levels.max()),
            "agree": float((ours.success.cpu() == t_success.cpu()).float().mean()),
        })
        print(f"  layout {name}: {rows[-1]}", flush=True)
    return rows


def _boundary_cases(model, x, y):
    import torchattacks

    eps = 8 / 255
    return [
        ("CW-L2, ours default (5 x 100 Adam steps) vs torchattacks CW(c=1, 50 steps)",
         lambda: A.cw_l2(model, x, y).images,
         torchattacks.CW(model, c=1, kappa=0, steps=50, lr=0.01)),
        ("CW-L2, same budget (ours 1 x 50 steps, c=1)",
         lambda: A.cw_l2(model, x, y, binary_search_steps=1, n_iter=50).images,
         torchattacks.CW(model, c=1, kappa=0, steps=50, lr=0.01)),
        ("DeepFool L2 (50 steps, overshoot 0.02)",
         lambda: A.deepfool(model, x, y).images,
         torchattacks.DeepFool(model, steps=50, overshoot=0.02)),
        ("APGD-CE 8/255 (100 steps)",
         lambda: A.apgd(model, x, y, eps, n_iter=100, random_state=0).images,
         torchattacks.APGD(model, eps=eps, steps=100, loss="ce", seed=0)),
        ("APGD-CE 1/255 (100 steps)",
         lambda: A.apgd(model, x, y, 1 / 255, n_iter=100, random_state=0).images,
         torchattacks.APGD(model, eps=1 / 255, steps=100, loss="ce", seed=0)),
        ("APGD-DLR 1/255 (100 steps)",
         lambda: A.apgd(model, x, y, 1 / 255, loss="dlr", n_iter=100, random_state=0).images,
         torchattacks.APGD(model, eps=1 / 255, steps=100, loss="dlr", seed=0)),
    ]


def boundary_table(model, x, y, device):
    """CW-L2, DeepFool and APGD: ours against torchattacks on the same batch,
    one timed run each (after a warm-up on 2 images): throughput, success,
    median L2 / L-inf over the images both fool, robust accuracy."""
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    rows = []
    for name, ours_fn, theirs in _boundary_cases(model, x, y):
        theirs(x[:2], y[:2])
        dt_o, adv_o = timed(ours_fn, device)
        rng = torch.get_rng_state()
        try:
            dt_t, adv_t = timed(lambda: theirs(x, y), device)
        finally:
            torch.set_rng_state(rng)
        with torch.no_grad():
            s_o = model(adv_o).argmax(1) != y
            s_t = model(adv_t).argmax(1) != y
        both = s_o & s_t
        d_o, d_t = (adv_o - x).flatten(1), (adv_t - x).flatten(1)

        def med(d, p):
            return float(d[both].norm(p=p, dim=1).median()) if both.any() else float("nan")

        rows.append({
            "attack": name, "n": len(x),
            "ips": (len(x) / dt_o, len(x) / dt_t),
            "success": (float(s_o.float().mean()), float(s_t.float().mean())),
            "both": int(both.sum()),
            "l2": (med(d_o, 2), med(d_t, 2)),
            "linf": (med(d_o, float("inf")) * 255, med(d_t, float("inf")) * 255),
        })
        print(f"  {rows[-1]}", flush=True)
    return rows


def _layout_lines(rows, n):
    lines = [
        "",
        "## channels_last (the CPU default) against torchattacks",
        "",
        f"{n} CIFAR-10 test JPEGs, ResNet-20, eps 8/255, 10 steps of 2/255; ours with "
        "the default `CPU_CHANNELS_LAST = True`, torchattacks with contiguous input. "
        "Both results rounded to 8-bit levels. A pixel differs where a numerically-zero "
        "gradient component changed sign: the step then goes the other way (2 x alpha = "
        "4 levels, 2 at a clip), and that image's later steps follow another path, so "
        "the differences gather in a few images and can reach 2 x eps. The tolerance the "
        "cross-check test asserts (`attacks._base.CHANNELS_LAST_TOLERANCE`): pixels "
        "apart <= 2 %, images with any <= 10 %, success agreement >= 98 %.",
        "",
        "| attack | pixels >= 1 level apart | exactly 1 level apart | images with any "
        "| worst image | largest difference (levels) | success agrees |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {100 * r['pixels']:.3f} % | {100 * r['one_level']:.4f} % "
            f"| {100 * r['images']:.1f} % | {100 * r['worst_image']:.1f} % | "
            f"{r['max_levels']} | {100 * r['agree']:.1f} % |"
        )
    return lines


def _boundary_lines(rows):
    n = rows[0]["n"] if rows else 0
    lines = [
        "",
        "## Minimal-perturbation attacks and APGD against torchattacks",
        "",
        f"{n} correctly classified CIFAR-10 test JPEGs (one batch), ResNet-20; one timed "
        "run each after a warm-up on 2 images. Success = prediction != label; the median "
        "distances are over the images both attacks fool (the same images on both "
        "sides). Robust accuracy = 1 - success.",
        "",
        "| attack | ours (img/s) | torchattacks (img/s) | ratio | success ours / theirs "
        "| both | median L2 ours / theirs | median L-inf x 255 ours / theirs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        (io, it), (so, st), (lo, lt), (mo, mt) = r["ips"], r["success"], r["l2"], r["linf"]
        lines.append(
            f"| {r['attack']} | {io:.1f} | {it:.1f} | {io / it:.2f}x | "
            f"{100 * so:.1f} % / {100 * st:.1f} % | {r['both']} | {lo:.4f} / {lt:.4f} "
            f"({lo / lt:.2f}x) | {mo:.2f} / {mt:.2f} |"
        )
    return lines


def _report(what, batch, repeats, device, rows, lb, layout, n_layout, boundary, note):
    """The markdown of every table."""
    import torchattacks

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
    if layout is not None:
        lines += _layout_lines(layout, n_layout)
    if boundary is not None:
        lines += _boundary_lines(boundary)
    if note:
        lines += ["", note]
    lines += [
        "",
        "The GPU path is unmeasured here (no GPU on this machine)."
        if device.type != "cuda"
        else "Measured on the GPU.",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch, one round")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--lbfgs-images", type=int, default=None)
    parser.add_argument("--layout-images", type=int, default=None,
                        help="images for the channels_last table (0: skip)")
    parser.add_argument("--boundary-images", type=int, default=None,
                        help="batch for the CW/DeepFool/APGD table (0: skip)")
    parser.add_argument("--note", default="", help="a line about the machine, e.g. its load")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=str(HERE / "results" / "bench_attacks.md"))
    args = parser.parse_args()
    batch = args.batch_size or (32 if args.quick else 128)
    repeats = args.repeats or (1 if args.quick else 3)
    n_lbfgs = args.lbfgs_images if args.lbfgs_images is not None else (8 if args.quick else 32)
    n_layout = args.layout_images if args.layout_images is not None else (64 if args.quick else 1024)
    n_boundary = (
        args.boundary_images if args.boundary_images is not None else (16 if args.quick else 64)
    )

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    model, x, y, what = load_model_and_data(batch, device)
    print(f"model/data: {what}; batch {batch}; device {device}", flush=True)
    rows = throughput_table(model, x, y, device, repeats)
    lb = lbfgs_table(model, x, y, n_lbfgs) if n_lbfgs else None
    layout = None
    if n_layout:
        xl, yl = load_model_and_data(n_layout, device)[1:3]
        layout = layout_table(model, xl, yl)
    boundary = None
    if n_boundary:
        xb, yb = load_model_and_data(n_boundary, device)[1:3]
        boundary = boundary_table(model, xb, yb, device)

    text = _report(what, batch, repeats, device, rows, lb, layout, n_layout, boundary,
                   args.note)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
