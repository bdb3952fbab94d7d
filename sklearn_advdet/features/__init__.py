"""Per-image detection features computed from the deep-feature matrix ``X``.

Every transformer here reads ``X`` through the package's one column
convention (a :class:`~sklearn_advdet.FeatureLayout` passed as
``layer_sizes``) and is torch-free:

- :class:`LogitFeatures` — statistics of the logits block (max softmax,
  top-1 minus top-2 margin, energy, entropy, max logit);
- :class:`MahalanobisScorer` — Lee et al. (2018): per hooked layer, the
  Mahalanobis distance to the class means under one tied, shrunk covariance;
- :class:`LIDScorer` — Ma et al. (2018): per-layer local intrinsic
  dimensionality from the nearest reference distances;
- :class:`LayerSequenceUnion` — stacks several per-layer transformers into
  one step-major sequence that
  :class:`~sklearn_advdet.SequenceLSTMDetector` reads as
  ``(n_steps, n_channels)``, with static features (e.g. the logit features)
  as a last step or repeated at every step.
"""

import importlib

_EXPORTS = {
    "LogitFeatures": ".logit",
    "MahalanobisScorer": ".mahalanobis",
    "LIDScorer": ".lid",
    "LayerSequenceUnion": ".sequence",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name], __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
