"""Resolve the ``reference`` parameter of :class:`~sklearn_advdet.PivotEmbedder`.

The reference set is the classifier's *training-set* features with their
class labels.  It is not the detection data, so an estimator that sits
inside a detection pipeline receives it as a parameter rather than through
``fit``.  This module turns the accepted forms of that parameter into a pair
of arrays ``(X_ref, y_ref)``; a feature store becomes a lazy
:class:`~sklearn_advdet._layered.LayeredView` of its layer files.
"""

import os

__all__ = ["load_reference"]


def _from_mapping_or_attrs(obj):
    """(X, y) from a Bunch / dict / object exposing them, or None."""
    for x_key, y_key in (("X", "y"), ("X_ref", "y_ref"), ("data", "target")):
        if isinstance(obj, dict):
            if x_key in obj and y_key in obj:
                return obj[x_key], obj[y_key]
        elif hasattr(obj, x_key) and hasattr(obj, y_key):
            return getattr(obj, x_key), getattr(obj, y_key)
    return None


def load_reference(reference):
    """Return the reference arrays ``(X_ref, y_ref)`` named by ``reference``.

    Parameters
    ----------
    reference : tuple, dict, Bunch, FeatureStore, str or os.PathLike
        ``(X_ref, y_ref)``; a mapping or object holding them as ``X``/``y``,
        ``X_ref``/``y_ref`` or ``data``/``target`` (e.g. a Bunch); or a
        feature store (opened, or its directory) whose ``X`` (layers, then
        the logits when the store has them; a :class:`LayeredView` over the
        memory-mapped files, nothing concatenated) and ``labels`` are used.

    Returns
    -------
    X_ref : array-like or LayeredView of shape (n_reference, n_features)
    y_ref : array-like of shape (n_reference,)
    layout : FeatureLayout or None
        The store's column layout when ``reference`` is a feature store.
    """
    if isinstance(reference, (str, bytes, os.PathLike)):
        from .store import open_store

        reference = open_store(os.fsdecode(reference))
    if hasattr(reference, "get_X") and hasattr(reference, "labels"):  # FeatureStore
        labels = reference.labels
        if labels is None:
            raise ValueError(
                f"the feature store at {str(reference.path)!r} has no class "
                "labels: the reference set must be the classifier's training "
                "features stored with their labels"
            )
        # out of core: the layer files stay memory-mapped, never concatenated
        from ._layered import LayeredView

        return LayeredView.from_store(reference), labels, reference.layout
    if isinstance(reference, (tuple, list)) and len(reference) == 2:
        return reference[0], reference[1], None
    pair = _from_mapping_or_attrs(reference)
    if pair is not None:
        return pair[0], pair[1], None
    raise TypeError(
        "reference must be None, a pair (X_ref, y_ref), a Bunch/dict with X and "
        "y, or the path of a feature store; got "
        f"{type(reference).__name__}"
        + (f" of length {len(reference)}" if isinstance(reference, (tuple, list)) else "")
    )

