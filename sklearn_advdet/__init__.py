"""sklearn_advdet: detect adversarial images from a classifier's deep features.

The scikit-learn side (this package's top level) imports without torch; the
torch side that extracts features and runs attacks lives in
:mod:`sklearn_advdet.deep`.
"""

import importlib

__version__ = "0.1.0.dev0"

# public name -> module that defines it; imported on first access so that
# ``import sklearn_advdet`` stays cheap and never pulls torch in.
_EXPORTS = {
    "AuthenticDensityDetector": ".authentic",
    "ConformalFusionDetector": ".fusion",
    "FeatureLayout": "._layout",
    "PivotEmbedder": ".embedding",
    "SequenceLSTMDetector": ".detectors",
    "MLPDetector": ".detectors",
    "balanced_sample_weight": ".sample_weights",
    "KNNClassScorer": ".knn",
    "LayerSequenceUnion": ".features.sequence",
    "LIDScorer": ".features.lid",
    "LogitFeatures": ".features.logit",
    "MahalanobisScorer": ".features.mahalanobis",
    "make_detector": ".recipes",
    "heldout_log_likelihood_scorer": ".authentic",
    "natural_error_report": ".authentic",
    "ScoreThresholdDetector": ".thresholds",
    "load_digits_detection": ".deep.digits_detection",
    "load_feature_store": ".datasets",
    "get_data_home": ".datasets",
}

__all__ = sorted(_EXPORTS) + ["metrics", "datasets"]


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name], __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in ("metrics", "datasets", "deep", "embedding", "knn", "detectors"):
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
