"""Reading what the user points the CLI at, each failure as a UsageError
that names the file and the fix (imports numpy/torch lazily)."""

import pickle
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

from ._errors import USER_ERRORS, UsageError, one_line
from ._parser import parse_eps

__all__ = ["check_device", "load_model", "load_images", "read_detection_set",
           "load_fitted", "torch_threads", "parse_attack_option"]

# what reading a damaged file raises besides the user errors
_READ_ERRORS = USER_ERRORS + (RuntimeError, pickle.UnpicklingError, tarfile.TarError,
                              zipfile.BadZipFile, zlib.error)


def _logger():
    from .._progress import get_logger

    return get_logger("cli")


def check_device(device):
    """Resolve ``--device`` now, before any work (CUDA asked on a CPU machine)."""
    from .._device import resolve_device

    try:
        return resolve_device(device)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--device {device}: {one_line(exc)}") from None


def torch_threads(n_jobs):
    if n_jobs and n_jobs > 0:
        import torch

        torch.set_num_threads(n_jobs)


def load_model(depth, weights):
    """A CIFAR ResNet with the state dict ``weights``."""
    from ..deep.models import cifar_resnet

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = cifar_resnet(depth, weights=weights)
            failure = None
        except Exception as exc:  # any failure to read a user's file: not a weights file
            failure = exc
    if failure is None:
        for w in caught:  # a good file: its warnings still count
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return model
    raise UsageError(
        f"cannot load --weights {weights} into a CIFAR ResNet-{depth} "
        f"({type(failure).__name__}: {one_line(failure)}): give the state-dict file "
        "(.th/.pt) of a CIFAR ResNet and its --depth"
    ) from None


def load_images(path, limit, option, seed=0, *, limit_option="--limit"):
    """Images of a folder/tar; ``limit`` keeps a seeded class-stratified subset
    (given as ``limit_option``)."""
    import numpy as np

    from ..deep.data import load_image_folder

    try:
        images, labels, classes = load_image_folder(path)
    except _READ_ERRORS as exc:
        raise UsageError(
            f"cannot read {option} {path} ({one_line(exc)}): give an image folder or a "
            "tar file in ImageFolder layout (<class>/<image>)"
        ) from None
    if len(images) == 0:
        raise UsageError(f"{option} {path} holds no images: give an ImageFolder layout "
                         "(<class>/<image>)")
    if limit is not None:
        if limit < len(classes):
            raise UsageError(f"{limit_option} {limit} is smaller than the {len(classes)} "
                             f"classes of {option} {path}: "
                             f"give at least {len(classes)}")
        if limit < len(images):
            from sklearn.model_selection import train_test_split

            keep, _ = train_test_split(np.arange(len(images)), train_size=limit,
                                       stratify=labels, random_state=seed)
            keep = np.sort(keep)
            images, labels = images[keep], labels[keep]
    return images, labels, classes


def read_detection_set(path, option):
    """A detection set written by ``advdet attack``."""
    from ..datasets import load_detection_set

    try:
        _check_archive(path)
        return load_detection_set(path)
    except _READ_ERRORS as exc:
        message = one_line(exc)
        if "advdet attack" not in message:
            message += ": write it again with `advdet attack ... --out DIR`"
        raise UsageError(f"{option} {path}: {message}") from None


def _check_archive(path):
    """A truncated ``.npz`` fails here, its file closed (``np.load`` leaves
    the file of a damaged archive open)."""
    path = Path(path)
    file = path / "detection_set.npz" if path.is_dir() else path
    if file.is_file():
        with zipfile.ZipFile(file):
            pass


def load_fitted(path, *, trust_pickle=False, require_layout=True):
    """``(pipeline, metadata)`` of a model file written by ``advdet fit``.

    The sklearn_advdet format loads without running code; a pickle/joblib
    file (older versions) only with ``trust_pickle``.  Without
    ``require_layout``, a file of :func:`sklearn_advdet.persistence.save`
    lacking the ``layout`` metadata is accepted too.
    """
    from .. import persistence

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--model {path} is a folder: give the file written by `advdet fit`")
    if persistence.is_model_file(path):
        try:
            obj, meta = persistence.load(path, return_metadata=True)
        except persistence.PersistenceError as exc:
            raise UsageError(f"--model {path}: {one_line(exc)}") from None
        if require_layout and "layout" not in meta:
            raise UsageError(f"--model {path} was not written by `advdet fit`: "
                             "fit one with `advdet fit ... --out model.advdet`")
        return obj, meta
    if not trust_pickle:
        raise UsageError(
            f"--model {path} is not a sklearn_advdet model file; if it is a pickle/joblib "
            "file of an older advdet, loading it can run code: pass --trust-pickle only "
            "if you trust where it came from"
        )
    return _load_pickle(path)


def _load_pickle(path):
    import joblib

    _logger().warning("loading %s as a pickle (--trust-pickle): this can run code "
                      "from the file", path)
    try:
        obj = joblib.load(path)
    except Exception as exc:  # any unpickling failure: a file that is not ours
        raise UsageError(f"cannot read --model {path} as a fitted detector "
                         f"({one_line(exc)}): fit one with `advdet fit`") from None
    if not isinstance(obj, dict) or "pipeline" not in obj or "layout" not in obj:
        raise UsageError(f"--model {path} was not written by `advdet fit`")
    return obj["pipeline"], {k: v for k, v in obj.items() if k != "pipeline"}


_ATTACK_ALIASES = {"itc": "iterative_target_class"}


def parse_attack_option(text, known):
    """``'fgsm:8/255'`` -> ``('fgsm', 0.0313...)``; ``'lbfgs'`` -> ``('lbfgs', None)``."""
    name, _, eps = text.partition(":")
    name = name.strip().lower().replace("-", "")
    name = _ATTACK_ALIASES.get(name, name)
    if name not in known:
        raise UsageError(f"--attack {text}: unknown attack {name!r}; choose among "
                         f"{', '.join(sorted(known))}")
    if not eps:
        return (name, None)
    try:
        return (name, parse_eps(eps))
    except Exception as exc:  # argparse.ArgumentTypeError
        raise UsageError(f"--attack {text}: {exc}") from None
