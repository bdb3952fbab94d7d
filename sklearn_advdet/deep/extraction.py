"""Deep-feature extraction with forward hooks, in memory or to a feature store.

:class:`FeatureExtractor` hooks named modules of any :class:`torch.nn.Module`,
globally average-pools each output over its spatial dimensions (2-D outputs
pass through), appends the logits, and returns the 2-D ``X`` with its
:class:`~sklearn_advdet.FeatureLayout` -- or writes everything to a
resumable :mod:`feature store <sklearn_advdet.store>`.

Guarantees of every run:

* hooks exist only during the run and are removed in a ``finally`` block,
  also when the run fails;
* each hooked output is pooled (or, for 2-D outputs, cloned) inside the hook,
  before later in-place operations (``ReLU(inplace=True)``) can change it;
* the model runs in eval mode under :func:`torch.inference_mode`; the
  train/eval flag of every submodule is restored afterwards, and so is the
  model's device when the run moved it.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .._layout import FeatureLayout
from .._progress import progress as _progress_bar
from .._store_fingerprint import array_digest
from ..store import FeatureStore, FeatureStoreWriter
from .._validation import check_int
from ._checks import as_tensor, check_labels, check_output_selector
from ._hooks import _collect, _pool, _run_device, _session, _to_numpy  # noqa: F401
from .layers import LAYER_PRESETS, resolve_layers
from .sources import _ArraySource, _as_source, _shard, model_digest

__all__ = ["FeatureExtractor", "ExtractedFeatures", "extract_features",
           "resolve_layers", "LAYER_PRESETS"]


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
    num_workers : int, default=0
        Decoding processes of the DataLoader that streams an image folder or
        tar (0: decode in this process). Images are decoded batch by batch,
        so memory stays bounded whatever the number of images.
    output : int, str or None, default=None
        Which entry of a model output that is a tuple/list (int) or a dict
        (key) holds the logits; None for a model that returns the logits
        tensor itself (a tuple or dict output is then refused, naming the fix).

    Images are checked batch by batch as the attacks check them
    (:func:`sklearn_advdet.deep._checks.check_images`): uint8 images are
    divided by 255; float images must lie in [0, 1] (images in 0..255 or
    normalised ones are refused, naming the fix), NaN/inf and NHWC arrays are
    refused. Labels must be class indices below the model's number of classes.

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
                 amp=False, progress=True, include_logits=True, output=None,
                 num_workers=0):
        self.model = model
        self.layers = layers
        self.device = device
        self.batch_size = batch_size
        self.amp = amp
        self.progress = progress
        self.include_logits = include_logits
        self.output = output
        self.num_workers = num_workers

    def _prepare(self, data, labels):
        check_int(self.batch_size, "batch_size", 1)
        check_output_selector(self.output)
        names = resolve_layers(self.model, self.layers)
        if labels is not None:
            # integer class indices >= 0 (floats are refused, never truncated)
            labels = as_tensor(labels, "labels")
            if labels.ndim != 1:
                raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
            labels = check_labels(labels, labels.shape[0]).cpu().numpy()
        check_int(self.num_workers, "num_workers", 0)
        source = _as_source(data, labels, num_workers=int(self.num_workers))
        if labels is not None and len(source) is not None and len(labels) != len(source):
            raise ValueError(
                f"got {len(labels)} labels for {len(source)} images: give one "
                "label per image"
            )
        device = _run_device(self.model, self.device)
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
        with _session(self.model, names, device, self.amp, self.output) as forward:
            for x, y in self._batches(source, 0, n, int(self.batch_size), labels):
                feats, logits = forward(x)
                f, lg = _to_numpy(feats, logits)
                if y is not None:
                    check_labels(y, len(x), lg.shape[1])
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

    def _bar(self, total, nested, desc):
        return _progress_bar(total, enabled=bool(self.progress), desc=desc or "extract",
                             nested=nested, unit="img")

    def extract(self, data, labels=None, *, nested=False, desc=None):
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
        nested : bool, default=False
            The extraction is one step of a larger stage: its progress bar
            disappears when done instead of leaving a line.
        desc : str, default=None
            Label of the progress bar (default ``"extract"``).

        Returns
        -------
        ExtractedFeatures
        """
        names, source, device = self._prepare(data, labels)
        n = len(source)
        with _session(self.model, names, device, self.amp, self.output) as forward, \
                self._bar(n, nested, desc) as bar:
            feat_batches, logit_batches, label_batches = _collect(
                forward, self._batches(source, 0, n or 0, int(self.batch_size), labels),
                bar)
        if not feat_batches:
            raise ValueError("data holds no images")
        rows = sum(len(b) for b in logit_batches)
        if source.ordered and n is not None and rows != n:  # the count against the index
            raise ValueError(f"the data yielded {rows} images but says it holds {n} "
                             "(len): its __len__ and its items disagree")
        return self._assemble(names, feat_batches, logit_batches, label_batches)

    def extract_to_store(self, data, path, labels=None, metadata=None,
                         chunk_size=2048, resume=True, start=None, stop=None,
                         source=None, *, shard=None, nested=False, desc=None,
                         lock_timeout=600.0, dtype="float32"):
        """Extract features chunk by chunk into a resumable feature store.

        Parameters
        ----------
        data : array, tensor, Dataset, DataLoader or path
            As for :meth:`extract`, but a DataLoader must not shuffle (rows
            must have fixed positions to resume).
        path : str or path-like
            Store directory (see :mod:`sklearn_advdet.store`).
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
        shard : (i, n), default=None
            Extract only the ``i``-th of ``n`` contiguous parts of the data
            (rows ``[i * N // n, (i + 1) * N // n)``) into its own store, e.g.
            one per GPU or machine; :func:`sklearn_advdet.store.merge_stores`
            joins the ``n`` shard stores into the store of the whole set.
            ``start``/``stop`` then count rows of the shard.
        nested, desc : bool, str
            As for :meth:`extract`.
        lock_timeout : float, default=600
            Seconds to wait for another live process allocating the same
            store before a :class:`~sklearn_advdet.store.StoreError` names it
            (a lock left by a dead process is taken over at once).
        dtype : {"float32", "float16"}, default="float32"
            Precision of the stored features and logits.  float16 halves the
            store (an ImageNet training set through ResNet-50's last block:
            5.2 GB instead of 10.5 GB); the estimators widen it exactly to
            float32 as they read it (out of core, see
            :class:`~sklearn_advdet.PivotEmbedder` and
            :class:`~sklearn_advdet.KNNClassScorer`).  Values beyond float16's
            range (65,504) are refused, not stored as inf.

        A resume checks the store's fingerprint against this run's input (a
        content hash of in-memory images and labels, names + sizes + mtimes
        of an image folder or tar, a Dataset's type and length, the model's
        weights and the layer list) and refuses any difference with a
        :class:`~sklearn_advdet.store.StoreError` naming it.

        In-memory images and labels are checked in full before the store is
        created.  A run that fails before committing its first chunk removes
        the store it allocated (and the directory it created); one that fails
        later leaves an incomplete store, refused by ``open_store``, to resume.

        Returns
        -------
        FeatureStore
            Opened for reading; when other shards are still missing it is
            opened with ``allow_incomplete=True``.
        """
        try:
            dtype_name = np.dtype(dtype).name
        except TypeError:
            dtype_name = None
        if dtype_name not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
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
        fingerprint = self._fingerprint(src, names, labels)
        extra = {"include_logits": bool(self.include_logits),
                 "extractor": "sklearn_advdet.deep.extraction.FeatureExtractor"}
        if shard is not None:
            src, labels, metadata, extra["shard"] = _shard(src, labels, metadata, shard)
            fingerprint["shard"] = "{index}/{of}".format(**extra["shard"])
            n = len(src)
        with _session(self.model, names, device, self.amp, self.output) as forward:
            # a one-image probe gives the layer widths and the logits width
            probe = self._batches(src, 0, 1, 1, labels)
            x, y = next(probe)
            probe.close()
            feats, logits = forward(x)
            if labels is not None:  # all of them, before the store is created
                check_labels(labels, len(labels), logits.shape[1])
            existed = Path(path).exists()
            writer = FeatureStoreWriter.create(
                path, count=n, layer_names=names,
                layer_sizes=[f.shape[1] for f in feats], n_classes=logits.shape[1],
                chunk_size=chunk_size, has_labels=y is not None, metadata=metadata,
                model=_model_name(self.model), source=source or src.description,
                extra=extra, resume=resume, fingerprint=fingerprint,
                lock_timeout=lock_timeout, dtype=dtype_name)
            try:
                self._fill(writer, forward, src, labels, names,
                           writer.missing_chunks(start, stop), nested, desc)
            except BaseException:
                # a store this run allocated and could not fill a chunk of
                # is removed; one with committed chunks stays, to resume
                if writer.allocated:
                    writer.discard(remove_dir=not existed)
                raise
            finally:
                writer.close()
        complete = writer.finalize()
        return FeatureStore.open(path, allow_incomplete=not complete)

    def _fingerprint(self, src, names, labels):
        """What a store made by this run is made from (see FeatureStoreWriter)."""
        if labels is None and isinstance(src, _ArraySource) and src.labels is not None:
            labels = np.asarray(src.labels)
        return {"data": src.fingerprint(),
                "labels": None if labels is None else array_digest(labels),
                "model": model_digest(self.model),
                "layers": ",".join(names)}

    def _fill(self, writer, forward, src, labels, names, todo, nested, desc):
        """Compute and commit the chunks ``todo``."""
        bs = int(self.batch_size)
        total = sum(writer.chunk_bounds(k)[1] - writer.chunk_bounds(k)[0] for k in todo)
        with self._bar(total, nested, desc) as bar:
            for k in todo:
                lo, hi = writer.chunk_bounds(k)
                fb, lb, yb = _collect(forward, self._batches(src, lo, hi, bs, labels), bar)
                rows = sum(len(a) for a in lb)
                if rows != hi - lo:
                    raise RuntimeError(f"chunk {k} expected {hi - lo} rows, the data "
                                       f"gave {rows}: the data changed length")
                layers = [np.concatenate([b[i] for b in fb]) for i in range(len(names))]
                logits = np.concatenate(lb)
                if writer.manifest["dtype"] == "float16":
                    _check_half_range(layers + [logits], names + ["logits"], k)
                writer.write_chunk(
                    k, layers=layers, logits=logits,
                    labels=(np.concatenate(yb)
                            if writer.manifest["arrays"]["labels"] else None))


def _check_half_range(arrays, names, chunk):
    """Refuse values that a float16 store would turn into inf."""
    limit = float(np.finfo(np.float16).max)
    for arr, name in zip(arrays, names):
        if arr.size and float(np.abs(arr).max()) > limit:
            raise ValueError(
                f"chunk {chunk}: {name} holds values up to {float(np.abs(arr).max()):.4g}, "
                f"beyond float16's range ({limit:g}): store this model's features "
                "with dtype='float32'")


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
