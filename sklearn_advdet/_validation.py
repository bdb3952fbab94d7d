"""Parameter and label checks shared by every estimator of the package.

One home, so that the same bad value gets the same message everywhere.
Estimators declare their parameters with ``_parameter_constraints``; the
helpers here cover what constraints cannot say (detection labels 0/1, sample
weights, one class only).
"""

import numbers

import numpy as np
from sklearn.utils.multiclass import check_classification_targets, type_of_target

__all__ = ["check_binary_y", "check_class_targets", "check_label_types",
           "require_both_classes", "check_sample_weight", "check_int", "check_real"]


def check_label_types(y, what="y"):
    """Raise a TypeError when an object array of labels mixes strings and numbers.

    numpy cannot sort such an array (``np.unique`` raises "'<' not supported
    between instances of 'int' and 'str'"), so every check that looks at the
    distinct labels needs them of one kind.
    """
    y = np.asarray(y)
    if y.dtype == object and y.size:
        is_str = np.fromiter((isinstance(v, (str, bytes)) for v in y.ravel()),
                             dtype=bool, count=y.size)
        if is_str.any() and not is_str.all():
            kinds = sorted({type(v).__name__ for v in y.ravel()})
            raise TypeError(
                f"{what} mixes labels of types {kinds} (e.g. {y.ravel()[is_str][0]!r} "
                f"and {y.ravel()[~is_str][0]!r}): pass labels of one type, all "
                "strings or all numbers"
            )
    return y


def check_class_targets(y, what="y"):
    """``check_classification_targets`` after :func:`check_label_types`."""
    check_label_types(y, what)
    check_classification_targets(y)


def check_binary_y(y, what="y"):
    """Return y as a float32 array of 0/1, or raise a ValueError."""
    check_class_targets(y, what)
    y = np.asarray(y)
    if type_of_target(y, input_name=what) == "multiclass":
        raise ValueError(
            "Only binary classification is supported. The type of the target "
            f"is multiclass: {what} must hold only 0 (authentic) and 1 "
            f"(adversarial), got labels {np.unique(y)[:5].tolist()!r}: encode the "
            "detection labels as 0/1"
        )
    if y.dtype.kind not in "biuf":
        values = np.unique(y)
        raise ValueError(
            f"{what} must hold 0 (authentic) and 1 (adversarial), got labels "
            f"{values[:5].tolist()!r}: encode the detection labels as 0/1"
        )
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        values = np.unique(y[bad])
        raise ValueError(
            f"{what} must hold only 0 (authentic) and 1 (adversarial), got "
            f"also {values[:5].tolist()!r}: encode the detection labels as 0/1"
        )
    return (y == 1).astype(np.float32)


def require_both_classes(y01, where):
    """Raise when a 0/1 label array holds one class only."""
    present = np.unique(y01)
    if present.size < 2:
        only = int(present[0]) if present.size else None
        raise ValueError(
            f"{where} holds one class only ({only!r}): a detector needs both "
            "authentic (y=0) and adversarial (y=1) samples to train"
        )


def check_sample_weight(sample_weight, n_samples):
    """Float64 weights of shape (n_samples,), finite, >= 0, not all zero."""
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim == 0:
        w = np.full(n_samples, float(w))
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(
            f"sample_weight has shape {w.shape} but X has {n_samples} rows: "
            "pass one weight per row"
        )
    if not np.all(np.isfinite(w)):
        raise ValueError("sample_weight contains NaN or infinity")
    if np.any(w < 0):
        raise ValueError("sample_weight must be non-negative")
    if not np.any(w > 0):
        raise ValueError(
            "sample_weight is zero everywhere: at least one row must have a "
            "positive weight"
        )
    return w


def check_int(value, name, low):
    """Raise a ValueError unless ``value`` is an integer >= ``low``."""
    if (
        not isinstance(value, numbers.Integral)
        or isinstance(value, bool)
        or value < low
    ):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_real(value, name, low, high, low_open=False, high_open=True):
    """Raise a ValueError unless ``value`` is a finite number in the interval."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = np.isfinite(v) and (v > low if low_open else v >= low)
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        lb = "(" if low_open else "["
        rb = ")" if high_open else "]"
        raise ValueError(f"{name} must be a number in {lb}{low}, {high}{rb}, got {value!r}")
    return float(value)
