"""``advdet guard export``: a CIFAR ResNet and a fitted detector as one
servable program (:mod:`sklearn_advdet.experiments.guarded`), its reject
threshold calibrated on clean images.

Beside :mod:`.commands` (which dispatches here); torch is imported only when
the command runs.
"""

import os
import shutil
import tempfile
from pathlib import Path

from ._errors import UsageError, one_line
from ._inputs import check_device, load_fitted, load_images, load_model, torch_threads
from ._output import check_out_file

__all__ = ["export_paths", "run_export"]


def _log():
    from .._progress import get_logger

    return get_logger("cli")


def export_paths(out, *, overwrite=False):
    """``(PATH.pt2, PATH.json)`` of ``--out``, refused before any work when taken."""
    out = Path(out)
    if out.suffix in (".pt2", ".json"):
        out = out.with_suffix("")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: give a path prefix such as "
                         f"{out / 'guard'} (writes guard.pt2 and guard.json there)")
    return tuple(check_out_file(out.with_name(out.name + ext), overwrite=overwrite)
                 for ext in (".pt2", ".json"))


def _layers(text):
    """``--layers``: a preset name, or comma-separated module names."""
    return [n.strip() for n in text.split(",") if n.strip()] if "," in text else text


def _describe(detector):
    steps = getattr(detector, "steps", None)
    if steps is None:
        return type(detector).__name__
    return " -> ".join(type(getattr(s, "estimator", s)).__name__ for _, s in steps
                       if s not in (None, "passthrough"))


def _load_detector(args):
    detector, _ = load_fitted(args.model, trust_pickle=args.trust_pickle,
                              require_layout=False)
    if not hasattr(detector, "predict_proba"):
        raise UsageError(f"--model {args.model} holds a {type(detector).__name__}, not a "
                         "fitted binary detector: give a file written by `advdet fit`")
    return detector


def _guarded(args, model, detector, device):
    """The GuardedModel, its layers and widths checked before any image is read."""
    import torch

    from ..experiments.guarded import GuardedModel

    try:
        guard = GuardedModel(model, detector, layers=_layers(args.layers))
        with torch.no_grad():
            guard(torch.zeros(2, 3, 32, 32))
    except TypeError as exc:  # a step without a torch conversion
        raise UsageError(f"--model {args.model}: {one_line(exc)}") from None
    except ValueError as exc:  # fitted on other layers or another layout
        raise UsageError(f"--model {args.model} cannot guard a CIFAR ResNet-{args.depth} "
                         f"hooked at --layers {args.layers} (check --depth and --layers): "
                         f"{one_line(exc)}") from None
    return guard.to(device)


def _batched(module, x, batch_size, device):
    """``(logits, p_adv)`` of ``module`` over batches of ``x``, on the CPU."""
    import torch

    parts = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            out = module(x[start:start + batch_size].to(device))
            parts.append([t.cpu() for t in out])
    return [torch.cat(p) for p in zip(*parts)]


def _authentic(guard, x, labels, args, device):
    """Mask of the correctly classified calibration images (the authentic
    rows, as ``advdet attack`` keeps them)."""
    import torch

    logits, _ = _batched(guard, x, args.batch_size, device)
    correct = logits.argmax(1) == torch.as_tensor(labels)
    if not correct.any():
        raise UsageError(
            f"the classifier gets none of the {len(x)} --calibration-data images right: "
            "give clean images of its classes (class folders in the order of its "
            "outputs) and the --depth and --weights it was trained with")
    return correct


def _calibrate(guard, x, correct, args, device):
    """Threshold at ``--target-fpr`` on the correctly classified images."""
    guard.calibrate(x[correct].to(device), target_fpr=args.target_fpr,
                    batch_size=args.batch_size)
    _log().info("threshold %.6g at --target-fpr %g on the %d correctly classified of %d "
                "calibration images", float(guard.threshold), args.target_fpr,
                int(correct.sum()), len(x))


def _export(guard, example, pt2, meta):
    """Write both files, staged in a folder beside them: a failure leaves neither."""
    from ..experiments.guarded import export_guarded

    parent = pt2.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{pt2.stem}.", suffix=".tmp", dir=parent))
    try:
        staged_pt2, staged_meta = export_guarded(guard.to("cpu"), tmp / "guard", example)
        os.replace(staged_pt2, pt2)
        try:
            os.replace(staged_meta, meta)
        except BaseException:
            pt2.unlink(missing_ok=True)  # no program without its description
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _log().info("exported %s and %s", pt2, meta)


def _served_p_adv(guard, pt2, x, batch_size):
    """``p_adv`` of the written program read back by ``load_guarded``."""
    from ..experiments.guarded import load_guarded

    served = load_guarded(pt2)
    _, p = _batched(served, x, batch_size, "cpu")
    _, p_memory = _batched(guard, x[:batch_size], batch_size, "cpu")
    _log().info("read %s back with load_guarded (tensors only): p_adv within %.2g of the "
                "in-memory guard", pt2, float((p[:batch_size] - p_memory).abs().max()))
    return p


def _summary(threshold, p, correct, target_fpr, pt2, meta):
    rejected = p > threshold
    n_ok, n_err = int(correct.sum()), int((~correct).sum())
    r_ok, r_err = int(rejected[correct].sum()), int(rejected[~correct].sum())
    print(f"threshold       {threshold:.6g} (p_adv above it is rejected: predict gives -1)\n"
          f"realised FPR    {r_ok / n_ok:.4f}: {r_ok} of {n_ok} correctly classified "
          f"calibration images rejected (target {target_fpr:g})\n"
          f"natural errors  {r_err} of {n_err} misclassified calibration images rejected\n"
          f"wrote           {pt2}, {meta}", flush=True)


def run_export(args):
    import numpy as np
    import torch

    pt2, meta = export_paths(args.out, overwrite=args.overwrite)
    device = check_device(args.device)
    torch_threads(args.n_jobs)
    model = load_model(args.depth, args.weights)
    detector = _load_detector(args)
    guard = _guarded(args, model, detector, device)
    images, labels, _ = load_images(args.calibration_data, args.calibration_limit,
                                    "--calibration-data", args.seed,
                                    limit_option="--calibration-limit")
    x = torch.from_numpy(images.astype(np.float32) / 255)
    correct = _authentic(guard, x, labels, args, device)  # the last user error
    names = guard.layer_names
    _log().info("guarding ResNet-%d at %d hooked layers (%s ... %s)%s with %s from %s, "
                "on %s", args.depth, len(names), names[0], names[-1],
                " + logits" if guard.include_logits else "", _describe(detector),
                args.model, device)
    _calibrate(guard, x, correct, args, device)
    threshold = float(guard.threshold)
    _export(guard, x[:2] if len(x) > 1 else x.repeat(2, 1, 1, 1), pt2, meta)
    p = _served_p_adv(guard, pt2, x, args.batch_size)
    _summary(threshold, p, correct, args.target_fpr, pt2, meta)
    return 0
