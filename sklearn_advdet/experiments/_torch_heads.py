"""Last steps of a detection pipeline as torch modules giving the detector's logit.

``sigmoid(logit) == predict_proba(X)[:, 1]``; for a last step without
``predict_proba`` (:class:`~sklearn_advdet.ScoreThresholdDetector`) the logit
is its ``decision_function`` and ``p_adv`` its sigmoid (monotone in it, so
thresholds and ROC curves are the step's own).
"""

import copy

import numpy as np
import torch
from torch import nn

__all__ = ["convert_head", "check_binary_classes", "HEAD_STEPS"]

#: the last steps :func:`convert_head` knows (class names)
HEAD_STEPS = ("LogisticRegression", "MLPDetector", "SequenceLSTMDetector",
              "HistGradientBoostingClassifier", "ScoreThresholdDetector",
              "AuthenticDensityDetector", "ConformalFusionDetector")


def _f32(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


class _Buffers(nn.Module):
    """A module whose tensors are float32 buffers, registered by name."""

    def _put(self, name, value):
        self.register_buffer(name, value if isinstance(value, torch.Tensor) else _f32(value))


class _LinearHead(_Buffers):
    def __init__(self, est):
        super().__init__()
        self._put("coef", est.coef_.reshape(-1))
        self._put("intercept", np.asarray(est.intercept_).reshape(()))

    def forward(self, X):
        return X @ self.coef + self.intercept


class _NetHead(_Buffers):
    """A skorch detector: its standardisation, then a float32 copy of its net."""

    def __init__(self, est):
        super().__init__()
        self._put("mean", est.mean_)
        self._put("scale", est.scale_)
        net = copy.deepcopy(est.net_.module_).to("cpu", torch.float32).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net

    def train(self, mode=True):  # dropout stays off: the detector is fitted
        return super().train(False)

    def forward(self, X):
        return self.net((X - self.mean) / self.scale).reshape(-1)


class _ThresholdHead(nn.Module):
    """ScoreThresholdDetector: its signed score column minus its threshold."""

    def __init__(self, est):
        super().__init__()
        self.column = int(est.column)
        self.sign = -1.0 if est.direction == "low" else 1.0
        # the value decision_function subtracts (the float just below threshold_)
        self.offset = float(np.nextafter(est.threshold_, -np.inf))

    def forward(self, X):
        return (self.sign * X[:, self.column].to(torch.float64) - self.offset).to(torch.float32)


def check_binary_classes(est, name):
    classes = np.asarray(getattr(est, "classes_", []))
    if classes.shape != (2,) or not np.array_equal(classes, [0, 1]):
        raise ValueError(
            f"{name} has classes {classes.tolist()}: the guarded model reads the "
            "probability of class 1 (adversarial) of a binary detector fitted on "
            "y in {0, 1}")


def convert_head(est, float64=False):
    """The fitted last step ``est`` as a module giving the detector's logit.

    The conformal last steps (AuthenticDensityDetector,
    ConformalFusionDetector) are converted by ``_torch_fusion``;
    ``float64``: boosted trees return their float64 sum.
    """
    name = type(est).__name__
    if name in ("MLPDetector", "SequenceLSTMDetector"):
        check_binary_classes(est, name)
        return _NetHead(est)
    if name == "LogisticRegression":
        check_binary_classes(est, name)
        if est.coef_.shape[0] != 1:
            raise ValueError("LogisticRegression must be binary (one row of coef_)")
        return _LinearHead(est)
    if name == "HistGradientBoostingClassifier":
        from ._torch_trees import HGBHead

        check_binary_classes(est, name)
        return HGBHead(est, dtype=torch.float64 if float64 else torch.float32)
    if name == "ScoreThresholdDetector":
        check_binary_classes(est, name)
        return _ThresholdHead(est)
    raise TypeError(
        f"cannot convert the final step {name} to torch: the guarded model's last "
        f"step must be one of {', '.join(HEAD_STEPS)}")
