"""Shared machinery of the fuzz suite (test_fuzz_estimators.py, test_fuzz_torch.py).

The rule every public estimator and function is fuzzed against: a call
either returns a valid result or raises a ``ValueError`` / ``TypeError`` that
says what was wrong.  Anything else -- an ``IndexError``, ``RuntimeError``,
``ZeroDivisionError``, ``LinAlgError``, a numpy warning turned into an error,
or a ValueError/TypeError whose message is numpy's or Python's own (a
broadcast failure, "truth value of an array is ambiguous", "zero-size array
to reduction operation") -- is a failure, reported with the inputs.

CI runs a fixed, derandomized set of examples.  For a deeper search set
``ADVDET_FUZZ_SCALE=20`` (20 times the examples, a fresh random draw each
run); a failure it finds belongs in a plain regression test.
"""

import os
import re

import numpy as np
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

__all__ = ["FUZZ", "call", "describe", "check_rows", "x_mutations", "mutate_x",
           "y_mutations", "mutate_y"]


_SCALE = int(os.environ.get("ADVDET_FUZZ_SCALE", "0") or 0)


def FUZZ(n):
    """Reproducible, bounded settings: ``n`` examples, derandomized, no database."""
    explore = _SCALE > 0
    return settings(max_examples=n * (_SCALE if explore else 1), deadline=None,
                    derandomize=not explore, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


# messages of errors raised by numpy / torch / Python internals, not by a check
_INTERNAL = re.compile("|".join([
    r"unsupported operand type", r"not supported between instances",
    r"object is not (subscriptable|iterable|callable)", r"'NoneType'",
    r"unhashable type", r"positional argument", r"unexpected keyword",
    r"truth value of an? .* is ambiguous", r"operands could not be broadcast",
    r"could not broadcast", r"zero-size array to reduction",
    r"argmax of an empty sequence", r"argmin of an empty sequence",
    r"setting an array element with a sequence", r"cannot reshape (array|tensor)",
    r"values to unpack", r"math domain error", r"need at least one array",
    r"shape mismatch", r"must be real number, not", r"only integer scalar arrays",
    r"out of bounds for", r"index .* is out of bounds", r"cannot convert float NaN",
    r"invalid literal for int",
]))


def describe(value, depth=0):
    """A short description of an input, for failure reports."""
    if type(value).__module__.startswith("torch") and hasattr(value, "numel"):
        vals = ""
        if value.numel() and value.is_floating_point():
            vals = _values(value.detach().cpu().double().numpy())
        return f"tensor{tuple(value.shape)} {value.dtype} {vals}".strip()
    if isinstance(value, np.ndarray):
        vals = _values(value) if value.dtype.kind == "f" and value.size else ""
        return f"ndarray{value.shape} {value.dtype} {vals}".strip()
    if isinstance(value, (list, tuple)) and depth < 1 and len(value) > 6:
        return f"{type(value).__name__} of {len(value)}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {describe(v, depth + 1)}" for k, v in value.items()) + "}"
    return repr(value)[:200]


def _values(a):
    a = np.asarray(a, dtype=np.float64)
    fin = a[np.isfinite(a)]
    rng = f"[{fin.min():.3g}, {fin.max():.3g}]" if fin.size else "[]"
    return f"nan={int(np.isnan(a).sum())} inf={int(np.isinf(a).sum())} range={rng}"


def call(fn, *args, **kwargs):
    """``(result, None)``, or ``(None, exc)`` for a ValueError/TypeError of the package.

    Raises AssertionError (the fuzz failure, with the inputs) for any other
    exception, or for a ValueError/TypeError that is an internal one.
    """
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        result = fn(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        if msg and not _INTERNAL.search(msg):
            event(f"{name}: {type(exc).__name__} {msg[:40]}")
            return None, exc
        failure = exc
    except Exception as exc:  # noqa: BLE001 - classifying is the point
        failure = exc
    else:
        event(f"{name}: ok")
        return result, None
    inputs = "\n".join(f"  arg{i}: {describe(a)}" for i, a in enumerate(args))
    inputs += "".join(f"\n  {k}: {describe(v)}" for k, v in kwargs.items())
    raise AssertionError(
        f"{name} raised {type(failure).__name__}: {failure}\ninputs:\n{inputs}"
    ) from failure


def check_rows(out, n_rows, *, n_cols=None, finite=True, what="output"):
    """A valid numeric result: ``n_rows`` rows (and ``n_cols``), finite when asked."""
    out = np.asarray(out)
    assert out.shape[0] == n_rows, f"{what} has {out.shape[0]} rows for {n_rows} inputs"
    if n_cols is not None:
        assert out.ndim == 2 and out.shape[1] == n_cols, (
            f"{what} has shape {out.shape}, expected ({n_rows}, {n_cols})")
    if finite and out.dtype.kind in "fc":
        bad = int((~np.isfinite(out)).sum())
        assert not bad, f"{what} holds {bad} NaN/inf value(s) for finite inputs"
    return out


# ------------------------------------------------------------ mutations of X
#: how a valid X is spoilt (``mutate_x(X, "none", rng)`` keeps it)
x_mutations = st.sampled_from([
    "float16", "float32", "int", "bool", "str", "object_num",
    "nan", "inf", "-inf", "wider", "narrower", "no_rows", "one_row", "1d", "3d",
    "list", "huge", "constant", "constant_column", "duplicate_rows", "zeros", "complex",
])


def mutate_x(X, how, rng):
    """``(X', clean)``: X spoilt as ``how`` says; ``clean`` when it is still valid."""
    X = np.array(X, dtype=np.float64)
    n, d = X.shape
    cell = (rng.integers(max(n, 1)), rng.integers(max(d, 1)))
    if how == "float16":
        return X.astype(np.float16), False  # float16 rounds, finite for |x| < 65504
    if how == "float32":
        return X.astype(np.float32), True
    if how == "int":
        return np.round(X).astype(np.int64), False
    if how == "bool":
        return X > 0, False
    if how == "str":
        S = X.astype(str).astype(object)
        if n and d:
            S[cell] = "a"
        return S, False
    if how == "object_num":
        return X.astype(object), True
    if how in ("nan", "inf", "-inf"):
        if n and d:
            X[cell] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[how]
        return X, not (n and d)
    if how == "wider":
        return np.hstack([X, X[:, :1] if d else np.zeros((n, 1))]), False
    if how == "narrower":
        return X[:, :-1], False
    if how == "no_rows":
        return X[:0], False
    if how == "one_row":
        return X[:1], False
    if how == "1d":
        return X[0] if n else X.ravel(), False
    if how == "3d":
        return X[:, :, None], False
    if how == "list":
        return X.tolist(), True
    if how == "huge":
        # beyond float32 squares (the medoid's GEMM tiles), within float64
        # ones: values whose squares overflow float64 (|x| > 1e150) are out
        # of the fuzzed domain
        return X * 1e25, False
    if how == "constant":
        return np.ones_like(X), False
    if how == "constant_column":  # a layer of width 1 with no variance
        X[:, 0] = 1.0
        return X, False
    if how == "duplicate_rows":
        return np.repeat(X[:1], n, axis=0), False
    if how == "zeros":
        return np.zeros_like(X), False
    if how == "complex":
        return X + 1j, False
    return X, True


# ------------------------------------------------------------ mutations of y
#: how valid labels are spoilt (``mutate_y(y, "none", ...)`` keeps them)
y_mutations = st.sampled_from([
    "single_class", "out_of_range", "negative", "float_int",
    "float_frac", "nan", "str", "bool", "short", "2d", "none_y", "object_mixed",
])


def mutate_y(y, how, n_classes, rng):
    """y spoilt as ``how`` says (``"none"`` keeps it)."""
    y = np.asarray(y)
    n = y.shape[0]
    if how == "single_class":
        return np.zeros(n, dtype=np.int64)
    if how == "out_of_range":
        y = y.copy()
        if n:
            y[rng.integers(n)] = n_classes
        return y
    if how == "negative":
        y = y.copy()
        if n:
            y[rng.integers(n)] = -1
        return y
    if how == "float_int":
        return y.astype(np.float64)
    if how == "float_frac":
        return y + 0.5
    if how == "nan":
        y = y.astype(np.float64)
        if n:
            y[rng.integers(n)] = np.nan
        return y
    if how == "str":
        return np.array([f"c{v}" for v in y])
    if how == "bool":
        return y > 0
    if how == "short":
        return y[:-1]
    if how == "2d":
        return np.column_stack([y, y])
    if how == "none_y":
        return None
    if how == "object_mixed":
        out = y.astype(object)
        if n:
            out[0] = "x"
        return out
    return y
