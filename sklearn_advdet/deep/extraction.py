"""Deep-feature extraction with forward hooks, in memory or to a feature store.

:class:`FeatureExtractor` hooks named modules of any :class:`torch.nn.Module`,
globally average-pools each output over its spatial dimensions (2-D outputs
pass through), appends the logits, and returns the 2-D ``X`` with its
:class:`~sklearn_advdet.FeatureLayout` -- or writes everything to a
resumable :mod:`feature store <sklearn_advdet.deep.store>`.

Guarantees of every run:

* hooks exist only during the run and are removed in a ``finally`` block,
  also when the run fails;
* each hooked output is pooled (or, for 2-D outputs, cloned) inside the hook,
  before later in-place operations (``ReLU(inplace=True)``) can change it;
* the model runs in eval mode under :func:`torch.inference_mode`; the
  train/eval flag of every submodule is restored afterwards, and so is the
  model's device when the run moved it.
"""

import re
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from typing import Optional

import numpy as np
import torch
from torch import nn

from .._layout import FeatureLayout
from .data import load_image_folder
from .store import FeatureStore, FeatureStoreWriter

__all__ = ["FeatureExtractor", "ExtractedFeatures", "extract_features",
           "resolve_layers", "LAYER_PRESETS"]


# ------------------------------------------------------------------ presets
_RESNET50_BLOCKS = tuple(
    f"layer{s}.{i}" for s, n in ((1, 3), (2, 4), (3, 6), (4, 3)) for i in range(n)
)


def _stage_blocks(model, stages=None):
    """Names ``[prefix.]layer<s>.<i>`` in forward (stage, index) order."""
    found = {}
    for name, _ in model.named_modules():
        m = re.fullmatch(r"(?:(.*)\.)?layer(\d+)\.(\d+)", name)
        if m and (stages is None or int(m.group(2)) in stages):
            found.setdefault(m.group(1) or "", []).append(
                (int(m.group(2)), int(m.group(3)), name))
    if len(found) > 1:
        raise ValueError(
            f"several module trees hold layer<s>.<i> blocks (prefixes "
            f"{sorted(found)}): pass layers= as a list of module names"
        )
    return [n for _, _, n in sorted(next(iter(found.values()), []))]


def _preset_cifar_resnet(model):
    names = _stage_blocks(model, stages={1, 2, 3})
    if not names:
        raise ValueError(
            "preset 'cifar_resnet' needs modules named layer1.0 ... layer3.<n-1> "
            "(every basic block); this model has none"
        )
    return names


def _preset_resnet50(model):
    modules = dict(model.named_modules())
    prefixes = {n[: -len("layer1.0")] for n in modules if n.endswith("layer1.0")}
    for prefix in sorted(prefixes, key=len):
        names = [prefix + b for b in _RESNET50_BLOCKS]
        if all(n in modules for n in names):
            return names
    raise ValueError(
        "preset 'resnet50' needs the 16 bottlenecks layer1.0-2, layer2.0-3, "
        "layer3.0-5, layer4.0-2; this model lacks some of them"
    )


def _preset_inception_v3(model):
    names = [
        n for n, _ in model.named_modules()
        if re.fullmatch(r"(?:.*\.)?Mixed_\w+", n)
        and not re.search(r"Mixed_\w+\.", n)
    ]
    if not names:
        raise ValueError(
            "preset 'inception_v3' needs modules named Mixed_5b ... Mixed_7c; "
            "this model has none"
        )
    return names


#: Layer presets by name: each maps a model to the module names to hook.
LAYER_PRESETS = {
    "cifar_resnet": _preset_cifar_resnet,
    "resnet50": _preset_resnet50,
    "inception_v3": _preset_inception_v3,
}


def resolve_layers(model, layers="auto"):
    """Module names to hook, from a preset name, "auto" or a list.

    Parameters
    ----------
    model : torch.nn.Module
    layers : "auto", str or list of str, default="auto"
        * a list of module names as given by ``model.named_modules()``, hooked
          (and laid out in ``X``) in the order given;
        * a preset: ``"cifar_resnet"`` (every basic block ``layer1.0`` ...
          ``layer3.<n-1>``), ``"resnet50"`` (the 16 bottlenecks ``layer1.0``
          ... ``layer4.2``), ``"inception_v3"`` (the ``Mixed_*`` modules);
        * ``"auto"``: the model's ``feature_layers`` attribute when it has
          one, else the Inception mixed layers, else every ``layer<s>.<i>``
          block (ResNets); otherwise an error asking for a list;
        * a single module name.

    Returns
    -------
    names : list of str

    Examples
    --------
    >>> from sklearn_advdet.deep.models import cifar_resnet
    >>> from sklearn_advdet.deep.extraction import resolve_layers
    >>> resolve_layers(cifar_resnet(20), "cifar_resnet")[-2:]
    ['layer3.1', 'layer3.2']
    """
    if isinstance(layers, str):
        if layers in LAYER_PRESETS:
            names = LAYER_PRESETS[layers](model)
        elif layers == "auto":
            names = getattr(model, "feature_layers", None)
            if names is None:
                modules = dict(model.named_modules())
                if any(re.fullmatch(r"(?:.*\.)?Mixed_\w+", n) for n in modules):
                    names = _preset_inception_v3(model)
                else:
                    names = _stage_blocks(model)
            if not names:
                raise ValueError(
                    f"layers='auto' found no preset for {type(model).__name__}: "
                    "pass layers= as a list of module names, e.g. "
                    f"{[n for n, _ in model.named_modules() if n][:4]}"
                )
            names = list(names)
        else:
            names = [layers]
    else:
        try:
            names = [str(n) for n in layers]
        except TypeError:
            raise TypeError(
                "layers must be 'auto', a preset name "
                f"{sorted(LAYER_PRESETS)} or a list of module names, got {layers!r}"
            ) from None
    if not names:
        raise ValueError("layers selects no module: pass at least one name")
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(
            f"{type(model).__name__} has no module(s) {unknown}: layer names "
            "come from model.named_modules(), e.g. "
            f"{[n for n in modules if n][:6]}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"layers lists a module twice: {names}")
    return names


# ------------------------------------------------------------------ sources
class _ArraySource:
    """Images in memory: numpy array or tensor, (N, C, H, W) or any (N, ...)."""

    ordered = True

    def __init__(self, images, labels=None, description=None):
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
                raise TypeError(
                    f"image arrays must be uint8 (0-255) or float (0-1), got "
                    f"{images.dtype}"
                )
        elif isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8 and not images.is_floating_point():
                raise TypeError(
                    f"image tensors must be uint8 (0-255) or float (0-1), got "
                    f"{images.dtype}"
                )
        if images.ndim < 2:
            raise ValueError(
                f"images must have a leading sample axis, got shape "
                f"{tuple(images.shape)}"
            )
        self.images = images
        self.labels = labels
        self.description = description or (
            f"{type(images).__name__} {tuple(images.shape)} {images.dtype}")

    def __len__(self):
        return int(self.images.shape[0])

    @property
    def has_labels(self):
        return self.labels is not None

    def batches(self, lo, hi, batch_size):
        for i in range(lo, hi, batch_size):
            j = min(i + batch_size, hi)
            x = self.images[i:j]
            if isinstance(x, np.ndarray):
                x = torch.from_numpy(np.ascontiguousarray(x))
            y = None if self.labels is None else self.labels[i:j]
            yield x, y


def _split_batch(batch):
    if isinstance(batch, (list, tuple)):
        if not batch:
            raise ValueError("the data loader yielded an empty batch")
        x = batch[0]
        y = batch[1] if len(batch) > 1 else None
    elif isinstance(batch, dict):
        raise TypeError(
            "batches are dicts: make the dataset return (image, label) tuples"
        )
    else:
        x, y = batch, None
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"the dataset yields images of type {type(x).__name__}, not tensors: "
            "give it a transform that returns tensors (e.g. torchvision's "
            "ToTensor) or pass a numpy array"
        )
    if y is not None:
        y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).astype(np.int64)
    return x, y


class _DatasetSource:
    """A map-style Dataset (or an ordered DataLoader over one)."""

    ordered = True

    def __init__(self, dataset, batch_size=None, collate_fn=None, num_workers=0,
                 pin_memory=False, description=None, loader=None):
        try:
            self._len = len(dataset)
        except TypeError:
            raise TypeError(
                f"{type(dataset).__name__} has no len(): pass a map-style "
                "Dataset or a DataLoader"
            ) from None
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.loader = loader
        self.description = description or f"{type(dataset).__name__} ({self._len} items)"
        self._has_labels = None

    def __len__(self):
        return self._len

    @property
    def has_labels(self):
        if self._has_labels is None:
            item = self.dataset[0]
            self._has_labels = isinstance(item, (list, tuple)) and len(item) > 1
        return self._has_labels

    def batches(self, lo, hi, batch_size):
        from torch.utils.data import DataLoader, Subset

        bs = self.batch_size or batch_size
        if self.loader is not None and lo == 0 and hi == self._len:
            loader = self.loader
        else:
            subset = self.dataset if (lo, hi) == (0, self._len) else Subset(
                self.dataset, range(lo, hi))
            kwargs = {"collate_fn": self.collate_fn} if self.collate_fn else {}
            loader = DataLoader(subset, batch_size=bs, shuffle=False,
                                num_workers=self.num_workers,
                                pin_memory=self.pin_memory, **kwargs)
        for batch in loader:
            yield _split_batch(batch)


class _LoaderSource:
    """A DataLoader that cannot be re-sliced (shuffled or iterable)."""

    ordered = False

    def __init__(self, loader):
        self.loader = loader
        self.description = f"DataLoader over {type(loader.dataset).__name__}"
        self.has_labels = None

    def __len__(self):
        try:
            return len(self.loader.dataset)
        except TypeError:
            return None

    def batches(self, lo, hi, batch_size):
        for batch in self.loader:
            yield _split_batch(batch)


def _as_source(data, labels=None):
    from torch.utils.data import (BatchSampler, DataLoader, Dataset,
                                  IterableDataset, SequentialSampler)

    if isinstance(data, (str, PathLike)):
        images, folder_labels, _ = load_image_folder(data)
        return _ArraySource(images, folder_labels if labels is None else labels,
                            description=str(data))
    if isinstance(data, (np.ndarray, torch.Tensor)):
        return _ArraySource(data, labels)
    if isinstance(data, DataLoader):
        sequential = (
            not isinstance(data.dataset, IterableDataset)
            and isinstance(data.sampler, SequentialSampler)
            and type(data.batch_sampler) is BatchSampler
            and not data.batch_sampler.drop_last
        )
        if sequential:
            return _DatasetSource(
                data.dataset, batch_size=data.batch_size, collate_fn=data.collate_fn,
                num_workers=data.num_workers, pin_memory=data.pin_memory,
                description=f"DataLoader over {type(data.dataset).__name__} "
                            f"({len(data.dataset)} items)",
                loader=data)
        return _LoaderSource(data)
    if isinstance(data, Dataset) or (
            hasattr(data, "__getitem__") and hasattr(data, "__len__")
            and not isinstance(data, (Mapping, str, bytes))):
        if isinstance(data, IterableDataset):
            from torch.utils.data import DataLoader as _DL
            return _LoaderSource(_DL(data, batch_size=None))
        return _DatasetSource(data)
    raise TypeError(
        "data must be a numpy array or tensor of images, a torch Dataset or "
        "DataLoader, or the path of an image folder / ImageFolder tar; got "
        f"{type(data).__name__}"
    )


# ------------------------------------------------------------------ engine
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


def _resolve_device(model, device):
    if device is None or (isinstance(device, str) and device == "auto"):
        devices = {t.device for t in list(model.parameters()) + list(model.buffers())}
        if device is None:
            if len(devices) == 1:
                return next(iter(devices))
            return torch.device("cpu")
        for d in devices:
            if d.type == "cuda":
                return d
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def _session(model, names, device, amp):
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
                raise RuntimeError(
                    f"module {name!r} ran twice in one forward pass: hook a "
                    "module that runs once per input"
                )
            outputs[name] = _pool(name, out)
        return hook

    use_amp = bool(amp) and device.type == "cuda"

    def forward(x):
        outputs.clear()
        x = x.to(device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0
        elif x.dtype != torch.float32:
            x = x.to(torch.float32)
        if use_amp:
            with torch.autocast("cuda", dtype=torch.float16):
                logits = model(x)
        else:
            logits = model(x)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        missing = [n for n in names if n not in outputs]
        if missing:
            raise RuntimeError(
                f"hooked module(s) {missing} did not run in the forward pass: "
                "hook modules that the model's forward() calls"
            )
        feats = [outputs[n] for n in names]
        outputs.clear()
        if logits.ndim != 2:
            raise ValueError(
                f"the model returned shape {tuple(logits.shape)}; expected "
                "(batch, n_classes) logits"
            )
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
        feat_batches.append(f)
        logit_batches.append(lg)
        label_batches.append(y)
        bar.update(len(x))
    return feat_batches, logit_batches, label_batches


def _progress(total, enabled, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img",
                dynamic_ncols=True, leave=False)


def _model_name(model):
    arch = getattr(model, "arch", None)
    return arch if isinstance(arch, str) else type(model).__name__


# ------------------------------------------------------------------ results
@dataclass
class ExtractedFeatures:
    """Features of a set of images, in memory.

    Attributes
    ----------
    X : ndarray of float32, shape (n_samples, n_features)
        Pooled features of every hooked layer in layout order, followed by
        the logits when ``layout.has_logits``.
    layout : FeatureLayout
        Layer names are the module names; the logits block is last.
    logits : ndarray of float32, shape (n_samples, n_classes)
    predictions : ndarray of int64, shape (n_samples,)
        Argmax of the logits.
    labels : ndarray of int64 or None
        True classes when the data carried them.
    """

    X: np.ndarray
    layout: FeatureLayout
    logits: np.ndarray
    predictions: np.ndarray
    labels: Optional[np.ndarray] = None

    def layer(self, name):
        """Columns of one layer (by module name or index)."""
        return self.X[:, self.layout.slice_of(name)]

    def __len__(self):
        return self.X.shape[0]


def _layout(names, sizes, n_classes, include_logits):
    if include_logits:
        return FeatureLayout(list(sizes) + [n_classes], names=list(names) + ["logits"],
                             has_logits=True)
    return FeatureLayout(list(sizes), names=list(names))


# ------------------------------------------------------------------ public
class FeatureExtractor:
    """Extract globally pooled hidden-layer features of a torch model.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning ``(batch, n_classes)`` logits. It is put in eval
        mode for the run; its previous train/eval flags are restored.
    layers : "auto", preset name or list of str, default="auto"
        Modules to hook; see :func:`resolve_layers`. Presets:
        ``"cifar_resnet"``, ``"resnet50"``, ``"inception_v3"``.
    device : "auto", None, str or torch.device, default="auto"
        ``"auto"``: CUDA when available (or the model's CUDA device), else
        CPU. None: the device the model is on. The model is moved there for
        the run and moved back afterwards.
    batch_size : int, default=256
        Images per forward pass (a DataLoader's own batch size wins).
    amp : bool, default=False
        Mixed precision (float16 autocast) on CUDA; ignored on CPU. Features
        are returned as float32 either way.
    progress : bool, default=True
        Show a tqdm progress bar.
    include_logits : bool, default=True
        Append the logits block to ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet.deep.models import cifar_resnet
    >>> from sklearn_advdet.deep.extraction import FeatureExtractor
    >>> images = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    >>> fx = FeatureExtractor(cifar_resnet(20), layers="cifar_resnet",
    ...                       device="cpu", progress=False)
    >>> feats = fx.extract(images)
    >>> feats.X.shape, feats.layout.n_layers, feats.layout.names[:2]
    ((4, 346), 9, ('layer1.0', 'layer1.1'))
    >>> feats.layer("layer3.2").shape
    (4, 64)
    """

    def __init__(self, model, layers="auto", device="auto", batch_size=256,
                 amp=False, progress=True, include_logits=True):
        self.model = model
        self.layers = layers
        self.device = device
        self.batch_size = batch_size
        self.amp = amp
        self.progress = progress
        self.include_logits = include_logits

    def _prepare(self, data, labels):
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        names = resolve_layers(self.model, self.layers)
        if labels is not None:
            labels = np.asarray(labels).astype(np.int64, copy=False)
            if labels.ndim != 1:
                raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        source = _as_source(data, labels)
        if labels is not None and len(source) is not None and len(labels) != len(source):
            raise ValueError(
                f"got {len(labels)} labels for {len(source)} images: give one "
                "label per image"
            )
        device = _resolve_device(self.model, self.device)
        return names, source, device

    @staticmethod
    def _batches(source, lo, hi, batch_size, labels):
        """Batches of (x, y) with explicit labels overriding the source's."""
        offset = lo
        for x, y in source.batches(lo, hi, batch_size):
            if labels is not None and not isinstance(source, _ArraySource):
                y = labels[offset:offset + len(x)]
            offset += len(x)
            yield x, y

    def iter_extract(self, data, labels=None):
        """Yield an :class:`ExtractedFeatures` per batch (no progress bar).

        Hooks stay registered while the generator is alive; close it (or
        exhaust it) to remove them.
        """
        names, source, device = self._prepare(data, labels)
        n = len(source) or 0
        with _session(self.model, names, device, self.amp) as forward:
            for x, y in self._batches(source, 0, n, int(self.batch_size), labels):
                feats, logits = forward(x)
                f, lg = _to_numpy(feats, logits)
                yield self._assemble(names, [f], [lg],
                                     None if y is None else [y])

    def _assemble(self, names, feat_batches, logit_batches, label_batches):
        layers = [np.concatenate([b[i] for b in feat_batches]) for i in range(len(names))]
        logits = np.concatenate(logit_batches)
        blocks = layers + ([logits] if self.include_logits else [])
        X = np.concatenate(blocks, axis=1).astype(np.float32, copy=False)
        layout = _layout(names, [a.shape[1] for a in layers], logits.shape[1],
                         self.include_logits)
        labels = None
        if label_batches is not None and all(y is not None for y in label_batches):
            labels = np.concatenate(label_batches).astype(np.int64)
        return ExtractedFeatures(X=X, layout=layout, logits=logits,
                                 predictions=logits.argmax(axis=1).astype(np.int64),
                                 labels=labels)

    def extract(self, data, labels=None):
        """Extract the features of every image in ``data``.

        Parameters
        ----------
        data : array, tensor, Dataset, DataLoader or path
            * numpy array or tensor of shape (N, C, H, W) (any (N, ...) the
              model accepts): float in ``[0, 1]``, or uint8 divided by 255;
            * a torch Dataset returning ``(image, label)`` (or just images)
              as tensors;
            * a DataLoader yielding such batches (shuffling allowed here);
            * the path of an image folder or tar file in ImageFolder layout
              (labels = sorted class-folder index).
        labels : array-like of shape (N,), default=None
            True classes; override those the data carries.

        Returns
        -------
        ExtractedFeatures
        """
        names, source, device = self._prepare(data, labels)
        n = len(source)
        with _session(self.model, names, device, self.amp) as forward, \
                _progress(n, self.progress, "extract") as bar:
            feat_batches, logit_batches, label_batches = _collect(
                forward, self._batches(source, 0, n or 0, int(self.batch_size), labels),
                bar)
        if not feat_batches:
            raise ValueError("data holds no images")
        return self._assemble(names, feat_batches, logit_batches, label_batches)

    def extract_to_store(self, data, path, labels=None, metadata=None,
                         chunk_size=2048, resume=True, start=None, stop=None,
                         source=None):
        """Extract features chunk by chunk into a resumable feature store.

        Parameters
        ----------
        data : array, tensor, Dataset, DataLoader or path
            As for :meth:`extract`, but a DataLoader must not shuffle (rows
            must have fixed positions to resume).
        path : str or path-like
            Store directory (see :mod:`sklearn_advdet.deep.store`).
        labels : array-like of shape (N,), default=None
            True classes; override those the data carries.
        metadata : dict of array-like, default=None
            Per-sample arrays saved as ``meta_<name>.npy``.
        chunk_size : int, default=2048
            Rows committed at a time; a crash loses at most one chunk of work.
        resume : bool, default=True
            Keep the committed chunks of an existing compatible store and
            compute only the missing ones; False starts over.
        start, stop : int, default=None
            Compute only rows ``[start, stop)`` (multiples of ``chunk_size``):
            a shard, so that several processes or GPUs fill one store. The
            store is marked complete by whichever shard finishes last.
        source : str, default=None
            Description recorded in the manifest (default: the path, or the
            type and shape of the data).

        Returns
        -------
        FeatureStore
            Opened for reading; when other shards are still missing it is
            opened with ``allow_incomplete=True``.
        """
        names, src, device = self._prepare(data, labels)
        if not src.ordered:
            raise ValueError(
                "a shuffling (or iterable) DataLoader gives rows no fixed "
                "position, so its store could not be resumed: pass the "
                "Dataset itself or a DataLoader with shuffle=False"
            )
        n = len(src)
        if not n:
            raise ValueError("data holds no images")
        if labels is not None:
            labels = np.asarray(labels).astype(np.int64, copy=False)
        bs = int(self.batch_size)
        with _session(self.model, names, device, self.amp) as forward:
            # a one-image probe gives the layer widths and the logits width
            probe = self._batches(src, 0, 1, 1, labels)
            x, y = next(probe)
            probe.close()
            feats, logits = forward(x)
            writer = FeatureStoreWriter.create(
                path, count=n, layer_names=names,
                layer_sizes=[f.shape[1] for f in feats], n_classes=logits.shape[1],
                chunk_size=chunk_size, has_labels=y is not None, metadata=metadata,
                model=_model_name(self.model), source=source or src.description,
                extra={"include_logits": bool(self.include_logits),
                       "extractor": "sklearn_advdet.deep.extraction.FeatureExtractor"},
                resume=resume)
            try:
                todo = writer.missing_chunks(start, stop)
                total = sum(writer.chunk_bounds(k)[1] - writer.chunk_bounds(k)[0]
                            for k in todo)
                with _progress(total, self.progress, "extract") as bar:
                    for k in todo:
                        lo, hi = writer.chunk_bounds(k)
                        fb, lb, yb = _collect(
                            forward, self._batches(src, lo, hi, bs, labels), bar)
                        layers = [np.concatenate([b[i] for b in fb])
                                  for i in range(len(names))]
                        rows = sum(len(a) for a in lb)
                        if rows != hi - lo:
                            raise RuntimeError(
                                f"chunk {k} expected {hi - lo} rows, the data "
                                f"gave {rows}: the data changed length")
                        writer.write_chunk(
                            k, layers=layers, logits=np.concatenate(lb),
                            labels=(np.concatenate(yb)
                                    if writer.manifest["arrays"]["labels"] else None))
            finally:
                writer.close()
        complete = writer.finalize()
        return FeatureStore.open(path, allow_incomplete=not complete)


def extract_features(model, images, layers="auto", batch_size=256, device=None,
                     amp=False, include_logits=True, progress=False):
    """Extract pooled features of an in-memory batch: returns ``(X, layout)``.

    A thin wrapper of :class:`FeatureExtractor` for pipelines (attacks,
    detection-set builders) that already hold the images as an array or a
    tensor. ``device=None`` (the default here) runs where the model is.

    Parameters
    ----------
    model : torch.nn.Module
    images : ndarray or Tensor of shape (N, ...)
        Float in ``[0, 1]`` or uint8.
    layers : "auto", preset name or list of str, default="auto"
    batch_size : int, default=256
    device : None, "auto", str or torch.device, default=None
    amp : bool, default=False
    include_logits : bool, default=True
    progress : bool, default=False

    Returns
    -------
    X : ndarray of float32, shape (N, n_features)
    layout : FeatureLayout

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_advdet.deep.extraction import extract_features
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
    ...                     nn.Linear(4 * 6 * 6, 3))
    >>> X, layout = extract_features(net, torch.rand(5, 1, 8, 8), layers=["0", "3"])
    >>> X.shape, layout.sizes
    ((5, 10), (4, 3, 3))
    """
    res = FeatureExtractor(model, layers=layers, device=device, batch_size=batch_size,
                           amp=amp, progress=progress,
                           include_logits=include_logits).extract(images)
    return res.X, res.layout
