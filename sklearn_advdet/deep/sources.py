"""Where the images of an extraction come from: arrays, Datasets, DataLoaders, folders.

Every source yields ``(x, y)`` batches of rows ``[lo, hi)`` (``y`` None when
the data carries no labels) and describes itself for the store's manifest.
"""

from collections.abc import Mapping
from os import PathLike

import numpy as np
import torch

from .._store_fingerprint import array_digest, digest_chunks, files_digest
from ._checks import as_tensor, check_images, check_labels
from .image_files import ImageFileDataset, collate_images

__all__ = ["model_digest"]


class _ArraySource:
    """Images in memory: numpy array or tensor, (N, C, H, W) or any (N, ...)."""

    ordered = True

    def __init__(self, images, labels=None, description=None, fingerprint=None):
        if not isinstance(images, (np.ndarray, torch.Tensor)):
            raise TypeError(f"images must be a numpy array or a tensor, got "
                            f"{type(images).__name__}")
        if images.dtype in (np.uint8, torch.uint8):
            if images.ndim < 2:
                raise ValueError(f"images must have a leading sample axis, got shape "
                                 f"{tuple(images.shape)}")
        else:
            # the whole set up front, before any store is written: the same
            # checks (and messages) as the attacks
            check_images(images)
        self.images = images
        self.labels = labels
        self.description = description or (
            f"{type(images).__name__} {tuple(images.shape)} {images.dtype}")
        self._fingerprint = fingerprint

    def __len__(self):
        return int(self.images.shape[0])

    def fingerprint(self):
        """Content hash of the images (or of the files they were read from)."""
        if self._fingerprint is None:
            x = self.images
            if isinstance(x, torch.Tensor):
                x = x.detach().cpu().numpy()
            self._fingerprint = array_digest(x)
        return self._fingerprint

    @property
    def has_labels(self):
        return self.labels is not None

    def batches(self, lo, hi, batch_size):
        for i in range(lo, hi, batch_size):
            j = min(i + batch_size, hi)
            x = self.images[i:j]
            if isinstance(x, np.ndarray):
                x = as_tensor(np.ascontiguousarray(x))
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
    if y is not None:  # integer class indices (floats refused, never truncated)
        y = check_labels(y, len(x)).cpu().numpy()
    return x, y


class _DatasetSource:
    """A map-style Dataset (or an ordered DataLoader over one)."""

    ordered = True

    def __init__(self, dataset, batch_size=None, collate_fn=None, num_workers=0,
                 pin_memory=False, description=None, loader=None, fingerprint=None):
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
        self._fingerprint = fingerprint

    def __len__(self):
        return self._len

    def fingerprint(self):
        """A Dataset's items are not read twice: its type and length only
        (image files: their names, sizes and mtimes)."""
        if self._fingerprint is not None:
            return self._fingerprint
        return f"dataset:{type(self.dataset).__module__}.{type(self.dataset).__name__}:" \
               f"{self._len}"

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
        for batch in _batched(loader):
            yield _split_batch(batch)


def _batched(loader):
    """The loader's batches; items that cannot be stacked are a ValueError."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as exc:
            if "stack expects each tensor to be equal size" not in str(exc):
                raise
            raise ValueError(
                f"the images of data cannot be batched together ({exc}): every image "
                "must have the same shape, channels first (C, H, W)"
            ) from exc
        yield batch


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
        for batch in _batched(self.loader):
            yield _split_batch(batch)


def _as_source(data, labels=None, num_workers=0):
    """The source of ``data``; image folders and tars are streamed through a
    DataLoader with ``num_workers`` decoding processes (bounded memory)."""
    from torch.utils.data import (BatchSampler, DataLoader, Dataset,
                                  IterableDataset, SequentialSampler)

    if isinstance(data, (str, PathLike)):
        dataset = ImageFileDataset(data)
        return _DatasetSource(dataset, collate_fn=collate_images,
                              num_workers=int(num_workers), description=str(data),
                              fingerprint=files_digest(data))
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


def _shard(src, labels, metadata, shard):
    """The ``i``-th of ``n`` contiguous parts of a source (and its labels/metadata)."""
    try:
        i, n_shards = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise TypeError(f"shard must be a pair (i, n) of ints, got {shard!r}") from None
    total = len(src)
    if not (n_shards >= 1 and 0 <= i < n_shards) or n_shards > total:
        raise ValueError(f"shard=(i, n) needs 0 <= i < n <= {total} (the number of "
                         f"images), got {shard!r}")
    lo, hi = i * total // n_shards, (i + 1) * total // n_shards
    info = {"index": i, "of": n_shards, "start": lo, "stop": hi, "total": total}
    if labels is not None:
        labels = labels[lo:hi]
    if metadata is not None:
        metadata = {k: np.asarray(v)[lo:hi] for k, v in metadata.items()}
    return _RowRange(src, lo, hi), labels, metadata, info


class _RowRange:
    """Rows ``[lo, hi)`` of a source, seen as a source of its own."""

    ordered = True

    def __init__(self, src, lo, hi):
        self.src, self.lo, self.hi = src, lo, hi
        self.description = f"{src.description} rows [{lo}, {hi})"
        self.labels = None

    def __len__(self):
        return self.hi - self.lo

    @property
    def has_labels(self):
        return self.src.has_labels

    def fingerprint(self):
        return self.src.fingerprint()

    def batches(self, lo, hi, batch_size):
        return self.src.batches(self.lo + lo, self.lo + hi, batch_size)


def model_digest(model):
    """SHA-256 of a model's state dict (names, shapes, dtypes and values)."""
    def chunks():
        for name, t in sorted(model.state_dict().items()):
            if not isinstance(t, torch.Tensor):
                yield f"{name}={t!r}".encode()
                continue
            t = t.detach().to("cpu").contiguous().reshape(-1)
            yield f"{name}{tuple(t.shape)}{t.dtype}".encode()
            if t.numel():
                yield memoryview(t.view(torch.uint8).numpy())
    return digest_chunks(chunks(), "weights")
