"""Image loading for feature extraction: folders and tar files in ImageFolder layout.

An ImageFolder layout is ``<root>/<class name>/<image file>``; the class index
of an image is the position of its folder name in sorted order. A tar file is
read in place (``tarfile`` + Pillow, nothing extracted to disk); its images
may sit under a common prefix such as ``test/`` (``test/<class>/<file>``).

Images come back as **uint8 arrays of shape (N, C, H, W)** (channels first,
as torch models want; ``np.transpose(images, (0, 2, 3, 1))`` to display
them). uint8 keeps all 60,000 CIFAR-10 images in 184 MB instead of 737 MB of
float32; :class:`~sklearn_advdet.deep.extraction.FeatureExtractor` divides
uint8 input by 255 on the device.

This module does not need torch.
"""

import io
import os
import tarfile
from os import PathLike
from pathlib import Path, PurePosixPath

import numpy as np

__all__ = ["load_image_folder", "list_image_folder", "is_image_folder_source",
           "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif",
                    ".tiff", ".webp", ".gif")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def _is_tar_path(path):
    return str(path).lower().endswith(_TAR_SUFFIXES)


def is_image_folder_source(data):
    """Whether ``data`` is a path to an image folder or an ImageFolder tar."""
    return isinstance(data, (str, PathLike))


def _group(entries, where):
    """entries: list of (relative posix path, handle). Returns sorted lists."""
    images = [
        (PurePosixPath(p), h) for p, h in entries
        if p.lower().endswith(IMAGE_EXTENSIONS)
        and not any(part.startswith(".") for part in PurePosixPath(p).parts)
    ]
    if not images:
        raise ValueError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {where}"
        )
    roots = {p.parts[:-2] for p, _ in images}
    if any(len(p.parts) < 2 for p, _ in images) or len(roots) != 1:
        raise ValueError(
            f"{where} is not in ImageFolder layout: every image must sit in a "
            "class folder, all class folders under one root "
            "(<root>/<class>/<image>); found images under "
            f"{sorted('/'.join(r) or '.' for r in roots)[:5]}"
        )
    classes = sorted({p.parts[-2] for p, _ in images})
    index = {c: i for i, c in enumerate(classes)}
    images.sort(key=lambda t: (index[t[0].parts[-2]], t[0].name))
    labels = np.array([index[p.parts[-2]] for p, _ in images], dtype=np.int64)
    return images, labels, classes


def _select(labels, limit, per_class):
    idx = np.arange(len(labels))
    if per_class is not None:
        if int(per_class) < 1:
            raise ValueError(f"per_class must be a positive int, got {per_class!r}")
        keep = np.zeros(len(labels), dtype=bool)
        for c in np.unique(labels):
            keep[np.flatnonzero(labels == c)[: int(per_class)]] = True
        idx = idx[keep]
    if limit is not None:
        if int(limit) < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        idx = idx[: int(limit)]
    return idx


def list_image_folder(path):
    """List the images of a folder or tar in ImageFolder layout.

    Parameters
    ----------
    path : str or path-like
        A directory ``<root>/<class>/<image>`` or a tar file holding that
        layout (possibly under a common prefix).

    Returns
    -------
    files : list of str
        Relative paths (inside the folder or the tar), sorted by class index
        then file name.
    labels : ndarray of int64
        Class index of each file.
    classes : list of str
        Sorted class-folder names.
    """
    images, labels, classes, tar = _scan(path)
    if tar is not None:
        tar.close()
    return [str(p) for p, _ in images], labels, classes


def _scan(path):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such image folder or tar file: {path}")
    if path.is_dir():
        entries = []
        for dirpath, _, files in os.walk(path):
            rel = Path(dirpath).relative_to(path)
            for f in files:
                entries.append(((rel / f).as_posix(), None))
        images, labels, classes = _group(entries, str(path))
        return images, labels, classes, None
    if _is_tar_path(path) or tarfile.is_tarfile(path):
        try:
            tar = tarfile.open(path)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ValueError(f"{path} is not a readable tar file ({exc}): it is "
                             "damaged or truncated, fetch it again") from None
        try:
            members = _tar_members(tar, path)
            entries = [(m.name, m) for m in members if m.isfile()]
            images, labels, classes = _group(entries, str(path))
        except BaseException:
            tar.close()
            raise
        return images, labels, classes, tar
    raise ValueError(
        f"{path} is neither a directory nor a tar file: pass an image folder "
        "in ImageFolder layout or a tar of one"
    )


def _tar_members(tar, path):
    """Every member of a tar, refusing one that is cut short.

    ``tarfile`` stops silently at a header that the file ends in the middle
    of, so a truncated tar would read as a smaller whole one: the archive must
    end with its end-of-archive block (512 zero bytes) where the last member
    ends.
    """
    try:
        members = tar.getmembers()
        tar.fileobj.seek(tar.offset)
        tail = tar.fileobj.read(512)
    except (tarfile.TarError, OSError, EOFError) as exc:
        read = tar.members
        after = f"after member {read[-1].name!r}" if read else "at its start"
        raise ValueError(f"{path} is truncated or damaged {after} ({exc}): "
                         f"{len(read)} members could be read; fetch the tar again"
                         ) from None
    if len(tail) < 512 or tail.count(0) != 512:
        after = f"after member {members[-1].name!r}" if members else "at its start"
        raise ValueError(
            f"{path} is truncated or damaged {after} (no end-of-archive block at "
            f"byte {tar.offset}): {len(members)} members could be read; fetch the "
            "tar again"
        )
    return members


def _read_member(tar, member, path):
    """The bytes of one tar member, or a ValueError naming it."""
    try:
        f = tar.extractfile(member)
        data = f.read() if f is not None else None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"member {member.name!r} of {path} cannot be read ({exc}): "
                         "the tar is damaged or truncated") from None
    if data is None or len(data) != member.size:
        got = 0 if data is None else len(data)
        raise ValueError(f"member {member.name!r} of {path} is truncated ({got} of "
                         f"{member.size} bytes): the tar is damaged")
    return io.BytesIO(data)


def _decode(raw, where, size):
    """One image as a uint8 (H, W, 3) array; a ValueError naming ``where``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(raw) as img:
            img = img.convert("RGB")
            if size is not None and img.size != size:
                img = img.resize(size, Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as exc:
        raise ValueError(f"{where} is not a readable image ({type(exc).__name__}: "
                         f"{exc}): remove or replace that file") from None
    return arr


def load_image_folder(path, limit=None, per_class=None, size=None):
    """Read an image folder, or a tar file in ImageFolder layout, into memory.

    Parameters
    ----------
    path : str or path-like
        A directory ``<root>/<class>/<image>`` or a tar file (plain or
        compressed) with that layout, possibly under a common prefix such as
        ``test/``. Tar files are read in place, not extracted.
    limit : int, default=None
        Keep only the first ``limit`` images (after ``per_class``), in
        class-then-file-name order.
    per_class : int, default=None
        Keep only the first ``per_class`` images of every class.
    size : (width, height), default=None
        Resize every image to this size (bilinear). By default all images
        must already have the same size.

    Returns
    -------
    images : ndarray of uint8, shape (N, 3, H, W)
        RGB, channels first, in ``[0, 255]``.
    labels : ndarray of int64, shape (N,)
        Class index = position of the class-folder name in sorted order.
    classes : list of str
        Sorted class-folder names.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from PIL import Image
    >>> from sklearn_advdet.deep.data import load_image_folder
    >>> root = tempfile.mkdtemp()
    >>> for cls in ("dog", "cat"):
    ...     os.makedirs(os.path.join(root, cls))
    ...     Image.new("RGB", (4, 4)).save(os.path.join(root, cls, "0.png"))
    >>> images, labels, classes = load_image_folder(root)
    >>> images.shape, labels.tolist(), classes
    ((2, 3, 4, 4), [0, 1], ['cat', 'dog'])
    """
    if size is not None:
        size = (int(size[0]), int(size[1]))
    images, labels, classes, tar = _scan(path)
    try:
        idx = _select(labels, limit, per_class)
        arrays = []
        for i in idx:
            rel, member = images[i]
            if tar is not None:
                raw = _read_member(tar, member, path)
                where = f"member {str(rel)!r} of {path}"
            else:
                raw = Path(path) / rel
                where = str(raw)
            arrays.append(_decode(raw, where, size))
    finally:
        if tar is not None:
            tar.close()
    if len(arrays) != len(idx):  # the count read against the index
        raise ValueError(f"{path}: {len(arrays)} images were read but the index "
                         f"lists {len(idx)}")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"images in {path} have different sizes {sorted(shapes)[:4]}: pass "
            "size=(width, height) to resize them"
        )
    out = np.stack(arrays).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out), labels[idx], classes
