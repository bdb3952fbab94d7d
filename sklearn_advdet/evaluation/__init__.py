"""Evaluation protocols, the detection report and peer detectors (torch-free).

- Protocols as scikit-learn cross-validation splitters, usable as ``cv=``:
  :class:`LeaveOneAttackOut`, :class:`UnseenAttackSplit` (train on a fixed
  set, test on each other family), :class:`AttackTransferSplit` (the
  train-attack x test-attack matrix), :class:`CrossEpsilonSplit`.
- :func:`detection_report`: per-attack AUC, TPR at 1 % / 5 % FPR, FPR at
  95 % TPR and EER accuracy, each with a bootstrap interval over source
  images, the macro over attacks, as Markdown, JSON or a pandas frame.
- Peer detectors as one-column score transformers (higher = more
  adversarial) on the package's feature matrix: :class:`MaxSoftmaxPeer`,
  :class:`EnergyPeer`, :class:`DeepKNNPeer`, :class:`KernelDensityPeer`,
  :class:`DkNNCredibilityPeer`, :class:`MahalanobisPeer`, :class:`LIDPeer`.

Read more in the :ref:`User Guide <evaluation>`.
"""

import importlib

_EXPORTS = {
    "LeaveOneAttackOut": ".splitters",
    "UnseenAttackSplit": ".splitters",
    "AttackTransferSplit": ".splitters",
    "CrossEpsilonSplit": ".splitters",
    "DetectionReport": ".report",
    "detection_report": ".report",
    "MaxSoftmaxPeer": ".peers",
    "EnergyPeer": ".peers",
    "DeepKNNPeer": ".peers_knn",
    "DkNNCredibilityPeer": ".peers_knn",
    "KernelDensityPeer": ".peers_density",
    "MahalanobisPeer": ".peers",
    "LIDPeer": ".peers",
    "PEERS": ".peers",
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
