"""A classifier and its fitted detector as one torch module, for serving and attacks.

:class:`GuardedModel` hooks the classifier's layers (as
:class:`~sklearn_advdet.deep.extraction.FeatureExtractor` does: each hooked
output globally average-pooled over its spatial dimensions, 2-D outputs as
they are, then the logits), feeds the feature rows to a torch conversion of
the fitted detection Pipeline (:mod:`._torch_steps`) and returns
``(logits, p_adv)`` from one forward pass, with gradients reaching the input.
:func:`export_guarded` writes it with :func:`torch.export.export` plus a JSON
of the threshold and the feature layout; :func:`load_guarded` reads both back
without unpickling anything but tensors.
"""

import contextlib
import io
import json
import math
import os
import threading
import warnings

import torch
from torch import nn

from .._layout import FeatureLayout
from ..deep.layers import resolve_layers
from ._torch_steps import convert_detector, find_layout

__all__ = ["GuardedModel", "export_guarded", "load_guarded", "REJECT"]

#: the label :meth:`GuardedModel.predict` gives a rejected input
REJECT = -1


def _pool(name, out):
    """The pooled output of a hooked module, differentiable (cf. extraction._pool)."""
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"module {name!r} returned {type(out).__name__}, not a tensor: "
                        "hook a module whose output is a tensor")
    if out.ndim > 2:
        return out.mean(dim=tuple(range(2, out.ndim)), dtype=torch.float32)
    # a copy, so that a later in-place op (ReLU(inplace=True)) cannot change it
    out = out.to(torch.float32).clone()
    return out if out.ndim == 2 else out.reshape(-1, 1)


def _default_names(layout):
    return layout.layer_names == [f"layer{i}" for i in range(layout.n_layers)]


class GuardedModel(nn.Module):
    """Classifier + fitted detector: one forward gives ``(logits, p_adv)``.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier (images in, ``(batch, n_classes)`` logits out).  Forward
        hooks are registered on its hooked modules for the guarded model's
        lifetime (they record only during a guarded forward; :meth:`remove_hooks`
        takes them off).  Put in eval mode.
    detector : fitted Pipeline or binary classifier
        A detection pipeline of this package fitted on the features
        ``FeatureExtractor(model, layers=layers)`` extracts; every step must be
        convertible (see :data:`~sklearn_advdet.experiments._torch_steps.CONVERTIBLE_STEPS`).
    layers : "auto", preset name or list of str, default="auto"
        Hooked modules, as :class:`~sklearn_advdet.deep.extraction.FeatureExtractor`
        takes them.
    threshold : float, default=None
        ``p_adv`` above which :meth:`predict` rejects; :meth:`calibrate` sets it.
    surrogate : bool, default=False
        Gradients for attacks, the forward values unchanged (BPDA): kNN class
        scores get a soft-kNN gradient, the conformal p-values of
        ``AuthenticDensityDetector`` / ``ConformalFusionDetector`` (the
        ``"authentic"`` and default ``"hybrid"`` modes of
        :func:`~sklearn_advdet.make_detector`) the gradient of their
        ``decision_function``.
    knn_temperature : float, default=0.1
        Temperature of that soft kNN, relative to each row's k-th distance.
    classifier_surrogate : fitted Pipeline or classifier, default=None
        With ``surrogate=True`` and a ``ConformalFusionDetector`` last step
        whose supervised component has no gradient (boosted trees): a
        differentiable detector fitted on the fusion's input features (e.g.
        ``make_pipeline(StandardScaler(), LogisticRegression())``) that lends
        it its gradient.  Without it only the density component steers.

    Attributes
    ----------
    layer_names : list of str
    layout : FeatureLayout or None
        The layout the detector was fitted on, when a step records it.
    n_features : int
        Width of the feature rows the detector reads.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn_advdet.deep.extraction import extract_features
    >>> from sklearn_advdet.experiments.guarded import GuardedModel
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
    ...                           torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    >>> x = torch.rand(40, 1, 8, 8)
    >>> X, layout = extract_features(net, x, layers=["1"])
    >>> det = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, np.arange(40) % 2)
    >>> guard = GuardedModel(net, det, layers=["1"])
    >>> logits, p_adv = guard(x)
    >>> bool(np.allclose(p_adv.detach().numpy(), det.predict_proba(X)[:, 1], atol=1e-5))
    True
    >>> guard.calibrate(x, target_fpr=0.25).predict(x[:3]).shape
    torch.Size([3])
    """

    def __init__(self, model, detector, layers="auto", *, threshold=None, surrogate=False,
                 knn_temperature=0.1, classifier_surrogate=None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layer_names = list(resolve_layers(model, layers))
        self.layout = find_layout(detector)
        self.n_features = getattr(detector, "n_features_in_", None)
        self._check_layer_names()
        self.detector = convert_detector(detector, surrogate=surrogate,
                                         knn_temperature=knn_temperature,
                                         classifier_surrogate=classifier_surrogate)
        self.include_logits = True if self.layout is None else self.layout.has_logits
        self.register_buffer("threshold", torch.tensor(
            float("nan") if threshold is None else float(threshold), dtype=torch.float32))
        self.target_fpr = None
        self._captured, self._recording = {}, False
        modules = dict(model.named_modules())
        self._handles = [modules[n].register_forward_hook(self._make_hook(n))
                         for n in self.layer_names]
        self.eval()

    def _check_layer_names(self):
        layout = self.layout
        if layout is None:
            return
        if layout.n_layers != len(self.layer_names):
            raise ValueError(
                f"the detector was fitted on {layout.n_layers} hooked layers "
                f"{layout.layer_names} but layers= gives {len(self.layer_names)}: "
                f"{self.layer_names}; pass the layers its features were extracted from")
        if not _default_names(layout) and layout.layer_names != self.layer_names:
            raise ValueError(
                f"the detector was fitted on layers {layout.layer_names} but the "
                f"guarded model hooks {self.layer_names}: pass layers= as the modules "
                "its features were extracted from")

    def _make_hook(self, name):
        def hook(module, args, out):
            if self._recording:
                self._captured[name] = _pool(name, out)
        return hook

    def remove_hooks(self):
        """Take the forward hooks off the classifier (the guard stops working)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def train(self, mode=True):
        """The detector always stays in eval mode (it is fitted)."""
        super().train(mode)
        self.detector.eval()
        return self

    # ---------------------------------------------------------------- forward
    def features(self, x):
        """``(logits, X)``: the classifier's logits and the detector's feature rows."""
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0
        self._captured = {}
        self._recording = True
        try:
            logits = self.model(x)
        finally:
            self._recording = False
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        missing = [n for n in self.layer_names if n not in self._captured]
        if missing:
            raise RuntimeError(f"hooked module(s) {missing} did not run in the forward "
                               "pass (or the hooks were removed)")
        feats = [self._captured[n] for n in self.layer_names]
        self._captured = {}
        blocks = feats + ([logits.to(torch.float32)] if self.include_logits else [])
        self._check_widths([b.shape[1] for b in blocks])
        return logits, torch.cat(blocks, dim=1)

    def _check_widths(self, sizes):
        if self.layout is not None and tuple(sizes) != self.layout.sizes:
            raise ValueError(
                f"the hooked layers {self.layer_names} give blocks of sizes {list(sizes)} "
                f"but the detector was fitted on {list(self.layout.sizes)} "
                f"({list(self.layout.names)}): guard the model and layers its features "
                "came from")
        if self.n_features is not None and sum(sizes) != self.n_features:
            raise ValueError(
                f"the hooked layers give {sum(sizes)} feature columns but the detector "
                f"was fitted on {self.n_features}: guard the model and layers its "
                "features came from")

    def scores(self, x):
        """``(logits, detector_logit)``; ``p_adv = sigmoid(detector_logit)``."""
        logits, X = self.features(x)
        return logits, self.detector(X)

    def forward(self, x):
        """``(logits, p_adv)`` of a batch of images."""
        logits, z = self.scores(x)
        return logits, torch.sigmoid(z)

    # ------------------------------------------------------------- decisions
    def _p_adv(self, images, batch_size):
        out = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                out.append(self(torch.as_tensor(images[start:start + batch_size]))[1])
        return torch.cat(out)

    def calibrate(self, authentic_images, target_fpr=0.05, *, batch_size=256):
        """Set the threshold so that at most ``target_fpr`` of authentic images are rejected.

        The threshold is the smallest ``p_adv`` of the authentic images such
        that the share of them strictly above it is at most ``target_fpr``.

        Returns
        -------
        self
        """
        fpr = float(target_fpr)
        if not 0.0 <= fpr < 1.0:
            raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr!r}")
        p = torch.sort(self._p_adv(authentic_images, int(batch_size)).float().cpu()).values
        n = p.shape[0]
        if n == 0:
            raise ValueError("calibrate needs at least one authentic image")
        k = max(1, math.ceil((1.0 - fpr) * n - 1e-9))
        self.threshold.fill_(float(p[k - 1]))
        self.target_fpr = fpr
        return self

    def _require_threshold(self):
        t = float(self.threshold)
        if math.isnan(t):
            raise ValueError("the guarded model has no threshold: call "
                             "calibrate(authentic_images) or pass threshold=")
        return t

    def predict(self, x):
        """Predicted class, or :data:`REJECT` (-1) where ``p_adv > threshold``."""
        self._require_threshold()
        with torch.no_grad():
            logits, p = self(x)
        return torch.where(p > self.threshold, torch.full_like(logits[:, 0], REJECT,
                                                               dtype=torch.long),
                           logits.argmax(dim=1))

    def metadata(self):
        """What :func:`export_guarded` writes next to the program (JSON-able)."""
        return {"format": "sklearn_advdet.guarded/1",
                "threshold": None if math.isnan(float(self.threshold)) else float(self.threshold),
                "target_fpr": self.target_fpr, "reject_label": REJECT,
                "layers": self.layer_names,
                "layout": None if self.layout is None else self.layout.to_dict(),
                "n_features": None if self.n_features is None else int(self.n_features),
                "torch": torch.__version__}


# ------------------------------------------------------------------ export
def _paths(path):
    path = os.fspath(path)
    base = path[:-4] if path.endswith(".pt2") else path
    return base + ".pt2", base + ".json"


def export_guarded(guarded, path, example_input, *, dynamic_batch=True):
    """Write ``<path>.pt2`` (:func:`torch.export.save`) and ``<path>.json``.

    Parameters
    ----------
    guarded : GuardedModel
    path : str or path-like
        With or without the ``.pt2`` suffix.
    example_input : Tensor
        A batch of images of the served shape (batch of at least 2 when
        ``dynamic_batch``).
    dynamic_batch : bool, default=True
        Export with a symbolic batch size.

    Returns
    -------
    (pt2_path, json_path)
    """
    pt2, meta = _paths(path)
    guarded.eval()
    x = torch.as_tensor(example_input)
    dyn = None
    if dynamic_batch:
        dyn = {"x": {0: torch.export.Dim("batch", min=1, max=2**20)}}
    with warnings.catch_warnings():
        # nn.LSTM re-assigns its flat weight list during tracing: harmless here,
        # the weights are the module's registered parameters
        warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights")
        program = torch.export.export(guarded, (x,), dynamic_shapes=dyn)
    info = guarded.metadata()
    info["input_shape"] = [None if dynamic_batch else x.shape[0]] + list(x.shape[1:])
    tmp, tmp_meta = pt2[:-4] + ".tmp.pt2", meta + ".tmp"
    try:
        torch.export.save(program, tmp)
        with open(tmp_meta, "w") as fh:
            json.dump(info, fh, indent=2)
        os.replace(tmp, pt2)
        os.replace(tmp_meta, meta)
    finally:  # no partial file left behind
        for leftover in (tmp, tmp_meta):
            if os.path.exists(leftover):
                os.remove(leftover)
    return pt2, meta


_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def _tensors_only():
    """While loading, every ``torch.load`` is ``weights_only=True`` (no fallback)."""
    original = torch.load

    def safe_load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    with _LOAD_LOCK:
        torch.load = safe_load
        try:
            yield
        finally:
            torch.load = original


class LoadedGuard(nn.Module):
    """An exported guarded model read back: ``(logits, p_adv)`` and :meth:`predict`."""

    def __init__(self, program, info):
        super().__init__()
        self.program = program.module()
        self.info = info
        t = info.get("threshold")
        self.register_buffer("threshold", torch.tensor(
            float("nan") if t is None else float(t), dtype=torch.float32))
        layout = info.get("layout")
        self.layout = None if layout is None else FeatureLayout.from_dict(layout)

    def forward(self, x):
        return self.program(x)

    predict = GuardedModel.predict
    _require_threshold = GuardedModel._require_threshold


def load_guarded(path):
    """Read what :func:`export_guarded` wrote.

    The program is read by :func:`torch.export.load` with every tensor
    payload loaded under ``torch.load(weights_only=True)``: a file that
    needs any other object unpickled is refused (``pickle.UnpicklingError``).

    Returns
    -------
    LoadedGuard
    """
    pt2, meta = _paths(path)
    with open(meta) as fh:
        info = json.load(fh)
    if info.get("format") != "sklearn_advdet.guarded/1":
        raise ValueError(f"{meta} is not a guarded-model description "
                         "(format sklearn_advdet.guarded/1)")
    with open(pt2, "rb") as fh:
        data = io.BytesIO(fh.read())
    with _tensors_only():
        program = torch.export.load(data)
    return LoadedGuard(program, info)
