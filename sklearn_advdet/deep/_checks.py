"""The one validation layer of the torch side (images, labels, model outputs).

Extraction, the attacks and the attack-set builder check their inputs here,
so the same input gets the same answer everywhere:

- :func:`as_tensor`: numpy arrays, lists and tensors in, a tensor out
  (anything else is a ``TypeError``).
- :func:`check_images`: a float batch ``(N, C, H, W)`` with values in
  [0, 1], no NaN or inf.  uint8 images, images in 0..255 and NHWC arrays are
  refused with the fix in the message.
- :func:`check_labels`: integer class indices of shape ``(N,)``, within the
  model's number of classes when it is known (a ``ValueError``, never torch's
  ``IndexError`` from inside a loss).
- :func:`select_logits` / :func:`model_logits`: a model output that is one
  logits tensor ``(N, n_classes)``; tuples, lists and dicts need an explicit
  ``output=`` selector (an int index or a dict key).
- :func:`n_classes_of`: the width of the model's logits, from one image.
- :func:`first_forward`: the first forward pass of a run; a model that
  cannot take the input (other channels or image size) fails there with a
  ``RuntimeError`` from inside torch, turned into a ``ValueError`` naming
  the input's shape.

Nothing here moves data between devices or changes dtypes beyond turning a
numpy array into a tensor.
"""

import numbers
import warnings

import numpy as np
import torch

__all__ = [
    "as_tensor",
    "check_images",
    "check_labels",
    "check_output_selector",
    "first_forward",
    "model_logits",
    "n_classes_of",
    "select_logits",
]

# channel counts of the usual image formats (grey, RGB, RGBA)
_CHANNEL_COUNTS = (1, 3, 4)
# unsigned integer dtypes wider than uint8, which torch only half supports
_WIDE_UNSIGNED = tuple(getattr(torch, name) for name in ("uint16", "uint32", "uint64")
                       if hasattr(torch, name))


def as_tensor(array, name="images"):
    """A torch tensor from a tensor, a numpy array, a list or a tuple.

    Parameters
    ----------
    array : torch.Tensor, ndarray, list or tuple
    name : str, default="images"
        Used in the error message.

    Returns
    -------
    torch.Tensor
        The tensor itself, or a tensor sharing the numpy array's memory
        (read-only arrays too: they are never written).

    Raises
    ------
    TypeError
        For any other type.
    """
    if isinstance(array, torch.Tensor):
        return array
    if isinstance(array, (np.ndarray, list, tuple)):
        try:
            arr = np.asarray(array)
        except ValueError:  # ragged nested lists
            arr = np.empty(0, dtype=object)
        if arr.dtype == object:
            raise TypeError(
                f"{name} must be a numeric array or tensor, got an array of Python "
                "objects (ragged or mixed input): stack the items into one array"
            )
        if not arr.flags.writeable:
            # a read-only array (np.load(mmap_mode="r")): shared, never written
            # (nothing here changes its input in place), so torch's warning
            # about writing to it does not apply
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not "
                                        "writable", category=UserWarning)
                return torch.as_tensor(arr)
        return torch.as_tensor(arr)
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(array).__name__}")


def _looks_nhwc(shape):
    return (
        len(shape) == 4
        and shape[-1] in _CHANNEL_COUNTS
        and shape[1] not in _CHANNEL_COUNTS
        and shape[1] > 4
    )


def check_images(images, *, name="images", ndim=None):
    """Check a batch of float images in [0, 1], channels first.

    Parameters
    ----------
    images : torch.Tensor or ndarray of shape (N, C, H, W)
        Any shape with the batch first and at least 2 dimensions is taken
        (``ndim`` narrows it); a 4-D array whose last axis looks like the
        channels (1, 3 or 4 of them, with more than 4 "channels" in axis 1)
        is refused as NHWC.
    name : str, default="images"
        Used in the error messages.
    ndim : int or None, default=None
        The number of dimensions required, e.g. 4; None takes any >= 2.

    Returns
    -------
    images : torch.Tensor
        The input as a tensor (not copied).

    Raises
    ------
    TypeError
        For a non-float dtype (uint8: divide by 255) or a non-array type.
    ValueError
        For a wrong shape or layout, NaN/inf, or values outside [0, 1].

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep._checks import check_images
    >>> check_images(torch.zeros(2, 3, 4, 4)).shape
    torch.Size([2, 3, 4, 4])
    >>> check_images(torch.zeros(2, 32, 32, 3))
    Traceback (most recent call last):
    ...
    ValueError: images has shape (2, 32, 32, 3), which looks like NHWC (channels last); ...
    """
    images = as_tensor(images, name)
    if images.is_complex() or not images.is_floating_point():
        hint = " (divide uint8 images by 255)" if images.dtype == torch.uint8 else ""
        raise TypeError(f"{name} must be floats in [0, 1], got dtype {images.dtype}{hint}")
    shape = tuple(images.shape)
    if images.ndim < 2 or (ndim is not None and images.ndim != ndim):
        want = f"{ndim}-D" if ndim is not None else "at least 2-D"
        raise ValueError(
            f"{name} must be a batch of shape (N, C, H, W) ({want}), got shape {shape}; "
            f"a single image needs a batch axis: x.unsqueeze(0) (numpy: x[None])"
        )
    if _looks_nhwc(shape):
        raise ValueError(
            f"{name} has shape {shape}, which looks like NHWC (channels last); "
            f"the models take NCHW: pass x.permute(0, 3, 1, 2) "
            f"(numpy: x.transpose(0, 3, 1, 2))"
        )
    if images.numel():
        finite = torch.isfinite(images)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(
                f"{name} contain {bad} NaN or infinite value(s): remove or repair those "
                "images first"
            )
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            hint = " (0-255 images: divide by 255)" if hi > 1.5 and lo >= -1e-6 else ""
            if lo < -1e-6:
                hint = " (normalised images: pass the raw [0, 1] images and put the " \
                       "normalisation inside the model)"
            raise ValueError(
                f"{name} must be in [0, 1] (normalisation belongs inside the model), "
                f"got values in [{lo:g}, {hi:g}]{hint}"
            )
    return images


def check_labels(labels, n, n_classes=None, *, name="labels"):
    """Check integer class indices for a batch of ``n`` images.

    Parameters
    ----------
    labels : torch.Tensor, ndarray or list of int, shape (n,)
    n : int
        Number of images the labels belong to.
    n_classes : int or None, default=None
        The model's number of classes; when given, every label must be below
        it.
    name : str, default="labels"
        Used in the error messages (e.g. ``"target"``).

    Returns
    -------
    labels : torch.Tensor of int64, shape (n,)

    Raises
    ------
    TypeError
        For float, bool or complex labels.
    ValueError
        For a wrong shape or a class index outside ``[0, n_classes)``.

    Examples
    --------
    >>> from sklearn_advdet.deep._checks import check_labels
    >>> check_labels([0, 2], 2, n_classes=3)
    tensor([0, 2])
    >>> check_labels([0, 3], 2, n_classes=3)
    Traceback (most recent call last):
    ...
    ValueError: labels must be class indices in [0, 3) (the model has 3 classes), got 3 ...
    """
    labels = as_tensor(labels, name)
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},) to match the images, got {tuple(labels.shape)}"
        )
    if labels.dtype in _WIDE_UNSIGNED:  # torch has no min/max for them: int64 values
        wide = labels.cpu().numpy()
        if wide.size and int(wide.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"{name} must be class indices, got {int(wide.max())}")
        labels = torch.from_numpy(wide.astype(np.int64))
    if n:
        lo = int(labels.min())
        if lo < 0:
            raise ValueError(f"{name} must be class indices >= 0, got {lo}")
        if n_classes is not None:
            hi = int(labels.max())
            if hi >= n_classes:
                count = int((labels >= n_classes).sum())
                raise ValueError(
                    f"{name} must be class indices in [0, {n_classes}) (the model has "
                    f"{n_classes} classes), got {hi} for {count} image(s): check that "
                    f"the labels belong to this model"
                )
    return labels.long()


def check_output_selector(output):
    """Check an ``output=`` selector: None, an int index or a str dict key."""
    if output is None or isinstance(output, str):
        return output
    if isinstance(output, numbers.Integral) and not isinstance(output, bool):
        return int(output)
    raise TypeError(
        f"output must be None, an int (index into a tuple output) or a str (key of a "
        f"dict output), got {type(output).__name__} {output!r}"
    )


def _describe(out):
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, dict):
        return f"a dict with keys {list(out)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} items"
    return f"a {type(out).__name__}"


def select_logits(out, output=None, *, n=None):
    """The logits tensor ``(N, n_classes)`` in a model's output.

    Parameters
    ----------
    out : torch.Tensor, tuple, list or dict
        What the model returned.
    output : int, str or None, default=None
        Selects the logits in a tuple/list (int index) or a dict (key); None
        accepts a plain tensor only.
    n : int or None, default=None
        The batch size the logits must have.

    Returns
    -------
    logits : torch.Tensor of shape (N, n_classes)

    Raises
    ------
    ValueError
        For a tuple/dict output without a selector, a selector that does not
        fit the output, or a tensor that is not 2-D floats.
    """
    output = check_output_selector(output)
    if output is not None:
        if isinstance(out, dict):
            if output not in out:
                raise ValueError(
                    f"output={output!r} selects no entry of the model's output, "
                    f"{_describe(out)}: pass one of its keys"
                )
            out = out[output]
        elif isinstance(out, (tuple, list)):
            if not isinstance(output, int) or not -len(out) <= output < len(out):
                raise ValueError(
                    f"output={output!r} selects no entry of the model's output, "
                    f"{_describe(out)}: pass an index in [0, {len(out)})"
                )
            out = out[output]
        else:
            raise ValueError(
                f"output={output!r} was given but the model returned {_describe(out)}: "
                "leave output=None for a model that returns its logits"
            )
    elif isinstance(out, (tuple, list, dict)):
        how = "a key, e.g. output='logits'" if isinstance(out, dict) else "an index, e.g. output=0"
        raise ValueError(
            f"the model returned {_describe(out)}, not one logits tensor: pass output= "
            f"({how}) to say which entry holds the logits, or wrap the model so that "
            "it returns the logits alone"
        )
    if not isinstance(out, torch.Tensor):
        raise ValueError(
            f"the model's logits must be a tensor of shape (N, n_classes), got {_describe(out)}"
        )
    if out.ndim != 2 or not out.is_floating_point():
        raise ValueError(
            f"the model must return float logits of shape (N, n_classes), got "
            f"{_describe(out)} of dtype {out.dtype}"
        )
    if n is not None and out.shape[0] != n:
        raise ValueError(
            f"the model returned logits for {out.shape[0]} images from a batch of {n}: "
            "its forward must keep the batch axis first"
        )
    return out


def model_logits(model, x, output=None):
    """``model(x)``, checked to be (or to hold, via ``output=``) a logits tensor.

    Parameters
    ----------
    model : callable
        Usually a ``torch.nn.Module``.
    x : torch.Tensor
        The batch, already checked (see :func:`check_images`).
    output : int, str or None, default=None
        See :func:`select_logits`.

    Returns
    -------
    logits : torch.Tensor of shape (len(x), n_classes)

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep._checks import model_logits
    >>> class Two(torch.nn.Module):
    ...     def forward(self, x):
    ...         return {"logits": x.flatten(1)[:, :3], "features": x}
    >>> model_logits(Two(), torch.zeros(2, 1, 2, 2), output="logits").shape
    torch.Size([2, 3])
    """
    return select_logits(model(x), output, n=x.shape[0])


def first_forward(forward, x):
    """``forward(x)`` for the first batch of a run, with input errors made clear.

    A model that cannot take ``x`` (another number of channels, an image
    too small for its kernels, a flattening layer of another width) raises
    a ``RuntimeError`` from inside torch on the first batch it sees.  Here
    that becomes a ``ValueError`` naming the input's shape (torch's message
    kept, the original exception chained).  Subclasses of RuntimeError
    (out of memory, the hooks' own errors) pass through unchanged.

    Parameters
    ----------
    forward : callable
        Runs the model on ``x``.
    x : torch.Tensor
        The batch.

    Returns
    -------
    Whatever ``forward(x)`` returns.
    """
    try:
        return forward(x)
    except RuntimeError as exc:
        if type(exc) is not RuntimeError:  # out of memory, the package's own errors
            raise
        raise ValueError(
            f"the model cannot take images of shape {tuple(x.shape[1:])} (a batch of "
            f"{x.shape[0]}, {x.dtype}), its forward raised: {exc} -- pass images of "
            "the channels and size the model was built for, channels first (NCHW)"
        ) from exc


def n_classes_of(model, x, output=None):
    """The number of classes of ``model``: the width of its logits on ``x[:1]``.

    Parameters
    ----------
    model : callable
    x : torch.Tensor
        At least one image, on the model's device.
    output : int, str or None, default=None
        See :func:`select_logits`.

    Returns
    -------
    int
    """
    if x.shape[0] == 0:
        raise ValueError("n_classes_of needs at least one image")
    with torch.no_grad():
        logits = first_forward(lambda b: model_logits(model, b, output), x[:1])
    n_classes = int(logits.shape[1])
    if n_classes < 1:
        raise ValueError("the model returned logits with 0 classes")
    return n_classes

