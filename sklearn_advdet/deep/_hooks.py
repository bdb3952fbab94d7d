"""The hooked forward pass of an extraction: hooks, pooling, device, eval mode.

:func:`_session` registers one forward hook per named module, pools each
output inside its hook (before in-place operations can change it), checks
every batch with :mod:`sklearn_advdet.deep._checks`, and undoes everything
(hooks, train/eval flags, the model's device) on exit, also on errors.
"""

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .._device import module_device, resolve_device
from ._checks import check_images, check_labels, first_forward, select_logits


class _HookError(RuntimeError):
    """A hooked module ran twice or not at all (the ``layers`` chosen, not the input)."""


def _pool(name, out):
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"module {name!r} returned {type(out).__name__}, not a tensor: hook "
            "a module whose output is a tensor"
        )
    if out.ndim > 2:
        return out.mean(dim=tuple(range(2, out.ndim)), dtype=torch.float32)
    if out.ndim == 2:
        return out.detach().to(torch.float32, copy=True)
    return out.detach().to(torch.float32, copy=True).reshape(-1, 1)


def _run_device(model, device):
    """``device=`` of an extraction: None is the model's own device, "auto"
    the model's CUDA device when it has one, else the package's resolver."""
    if device is None:
        return module_device(model, default=torch.device("cpu"))
    if isinstance(device, str) and device == "auto":
        own = module_device(model)
        if own is not None and own.type == "cuda":
            return own
    return resolve_device(device)


@contextmanager
def _session(model, names, device, amp, output=None):
    """Eval mode, hooks, device; everything undone on exit (also on errors)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    modes = [(m, m.training) for m in model.modules()]
    tensors = list(model.parameters()) + list(model.buffers())
    devices = {t.device for t in tensors}
    move_back = None
    if len(devices) == 1 and next(iter(devices)) != device:
        move_back = next(iter(devices))
    elif len(devices) > 1 and device not in devices:
        raise ValueError(
            f"the model is spread over {sorted(map(str, devices))}: pass device= "
            "as the device its input belongs on"
        )
    outputs = {}
    handles = []

    def make_hook(name):
        def hook(module, args, out):
            if name in outputs:
                raise _HookError(
                    f"module {name!r} ran twice in one forward pass: hook a "
                    "module that runs once per input"
                )
            outputs[name] = _pool(name, out)
        return hook

    use_amp = bool(amp) and device.type == "cuda"
    first = True

    def forward(x):
        nonlocal first
        outputs.clear()
        x = x.to(device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0
        elif x.is_floating_point() and x.dtype != torch.float32:
            x = x.to(torch.float32)
        # the same answer as the attacks: floats in [0, 1], NCHW, no NaN/inf
        check_images(x)

        def run(b):
            if use_amp:
                with torch.autocast("cuda", dtype=torch.float16):
                    return select_logits(model(b), output, n=b.shape[0])
            return select_logits(model(b), output, n=b.shape[0])

        # the first batch tells whether the model takes this input at all
        logits = first_forward(run, x) if first else run(x)
        first = False
        missing = [n for n in names if n not in outputs]
        if missing:
            raise _HookError(
                f"hooked module(s) {missing} did not run in the forward pass: "
                "hook modules that the model's forward() calls"
            )
        feats = [outputs[n] for n in names]
        outputs.clear()
        return feats, logits.to(torch.float32)

    try:
        if move_back is not None:
            model.to(device)
        model.eval()
        for n in names:
            handles.append(modules[n].register_forward_hook(make_hook(n)))
        with torch.inference_mode():
            yield forward
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        if move_back is not None:
            model.to(move_back)


def _to_numpy(feats, logits):
    """One device-to-host copy per batch, then split per layer (views)."""
    sizes = [f.shape[1] for f in feats]
    block = torch.cat(list(feats) + [logits], dim=1).cpu().numpy()
    parts = np.split(block, np.cumsum(sizes), axis=1)
    return parts[:-1], parts[-1]


def _collect(forward, batches, bar):
    """Run the hooked forward over ``(x, y)`` batches: per-batch layer
    features, logits and labels on the host, advancing the progress bar."""
    feat_batches, logit_batches, label_batches = [], [], []
    for x, y in batches:
        f, lg = _to_numpy(*forward(x))
        if y is not None:
            check_labels(y, len(x), lg.shape[1])
        feat_batches.append(f)
        logit_batches.append(lg)
        label_batches.append(y)
        bar.update(len(x))
    return feat_batches, logit_batches, label_batches
