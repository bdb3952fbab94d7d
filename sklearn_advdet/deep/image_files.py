"""Image folders and ImageFolder tars as a torch Dataset, decoded one image at a time.

:class:`ImageFileDataset` lists the files once (names, labels, and for a tar
the byte offset of every member) and decodes an image only when it is asked
for, so that a :class:`torch.utils.data.DataLoader` with worker processes
decodes batch by batch and memory stays bounded by the batches in flight,
whatever the number of images.  Each worker opens the file itself (nothing
open is pickled); plain tars are read by offset, compressed tars through
:mod:`tarfile` (much slower: decompress them once for big sets).

Every read is checked: a member shorter than the index says, an undecodable
image and a tar cut short fail naming the member (see
:mod:`sklearn_advdet.deep.data`).
"""

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import _decode, _read_member, _scan

__all__ = ["ImageFileDataset", "collate_images"]


class ImageFileDataset(Dataset):
    """Images of a folder or tar in ImageFolder layout, decoded on access.

    Parameters
    ----------
    path : str or path-like
        ``<root>/<class>/<image>`` folder, or a tar holding that layout.
    size : (width, height), default=None
        Resize every image to this size; by default all images must already
        share one size (checked when a batch is stacked).

    Attributes
    ----------
    files : list of str
        Relative paths, in class-then-file-name order.
    labels : ndarray of int64
    classes : list of str

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from sklearn_advdet.deep.image_files import ImageFileDataset
    >>> root = tempfile.mkdtemp()
    >>> for cls in ("dog", "cat"):
    ...     os.makedirs(os.path.join(root, cls))
    ...     Image.new("RGB", (4, 4)).save(os.path.join(root, cls, "0.png"))
    >>> ds = ImageFileDataset(root)
    >>> len(ds), ds.classes, ds[1][0].shape, ds[1][1]
    (2, ['cat', 'dog'], torch.Size([3, 4, 4]), 1)
    """

    def __init__(self, path, size=None):
        self.path = Path(path)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        images, labels, classes, tar = _scan(self.path)
        self.files = [str(p) for p, _ in images]
        self.labels = labels
        self.classes = classes
        self._compressed = False
        self._members = None
        if tar is not None:
            self._compressed = not isinstance(tar.fileobj, io.BufferedReader)
            # (name, data offset, size): what a worker needs, nothing open
            self._members = [(m.name, m.offset_data, m.size) for _, m in images]
            tar.close()
        self._handle = None
        self._pid = None

    def __len__(self):
        return len(self.files)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, None
        return state

    def _open(self):
        if self._handle is None or self._pid != os.getpid():
            if self._compressed:
                tar = tarfile.open(self.path)
                self._handle = (tar, {m.name: m for m in tar.getmembers()})
            else:
                self._handle = open(self.path, "rb")
            self._pid = os.getpid()
        return self._handle

    def close(self):
        """Close the file this process opened (reopened on the next access)."""
        if self._handle is not None and self._pid == os.getpid():
            h = self._handle[0] if isinstance(self._handle, tuple) else self._handle
            h.close()
        self._handle = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def _raw(self, i):
        if self._members is None:
            return self.path / self.files[i], str(self.path / self.files[i])
        name, offset, size = self._members[i]
        where = f"member {name!r} of {self.path}"
        if self._compressed:
            tar, members = self._open()
            return _read_member(tar, members[name], self.path), where
        f = self._open()
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise ValueError(f"{where} is truncated ({len(data)} of {size} bytes): the "
                             "tar is damaged")
        return io.BytesIO(data), where

    def __getitem__(self, i):
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        raw, where = self._raw(i % len(self))
        arr = _decode(raw, where, self.size)
        image = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        return image, int(self.labels[i])


def collate_images(items):
    """Stack ``(uint8 image, label)`` items; images of different sizes are a
    ValueError that says to pass ``size=``."""
    shapes = {tuple(x.shape) for x, _ in items}
    if len(shapes) > 1:
        raise ValueError(f"images of different sizes {sorted(shapes)[:4]} in one batch: "
                         "pass size=(width, height) to resize them")
    x = torch.stack([x for x, _ in items])
    y = torch.tensor([y for _, y in items], dtype=torch.int64)
    return x, y
