"""A fitted binary HistGradientBoostingClassifier as a torch module (exact, no gradient).

Every tree is walked at once: the current node of each (row, tree) moves to
its left or right child, ``max depth`` times, by the rule of scikit-learn's
predictor (``x <= threshold`` goes left, NaN follows ``missing_go_to_left``);
the leaf values are summed with the baseline in float64, as scikit-learn
does.  The output is piecewise constant in the input: attacks need another
last step (or a surrogate detector) to get a gradient.
"""

import numpy as np
import torch
from torch import nn

__all__ = ["HGBHead"]


class HGBHead(nn.Module):
    """``decision_function`` of a binary HistGradientBoostingClassifier.

    Summed in float64 and returned as ``dtype`` (float64 where the score is
    compared with float64 calibration scores, as in a conformal fusion).
    """

    def __init__(self, est, dtype=torch.float32):
        super().__init__()
        self.dtype = dtype
        if getattr(est, "_preprocessor", None) is not None or (
                est.is_categorical_ is not None and np.any(est.is_categorical_)):
            raise TypeError(
                "cannot convert a HistGradientBoostingClassifier with categorical "
                "features to torch: the guarded model converts numeric splits only")
        if est.n_trees_per_iteration_ != 1:
            raise ValueError("HistGradientBoostingClassifier must be binary")
        trees = [it[0].nodes for it in est._predictors]
        M = max(len(t) for t in trees)

        def table(field, dtype, fill=0):
            out = np.full((len(trees), M), fill, dtype=dtype)
            for i, t in enumerate(trees):
                out[i, :len(t)] = t[field]
            return torch.as_tensor(out.reshape(-1))

        offsets = torch.arange(len(trees), dtype=torch.int64) * M
        self.register_buffer("offsets", offsets)
        self.register_buffer("feature", table("feature_idx", np.int64))
        self.register_buffer("threshold", table("num_threshold", np.float64))
        self.register_buffer("left", table("left", np.int64))
        self.register_buffer("right", table("right", np.int64))
        self.register_buffer("is_leaf", table("is_leaf", np.bool_, True))
        self.register_buffer("missing_left", table("missing_go_to_left", np.bool_))
        self.register_buffer("value", table("value", np.float64))
        self.register_buffer("baseline", torch.as_tensor(
            np.asarray(est._baseline_prediction, np.float64).reshape(())))
        self.depth = int(max(int(t["depth"].max()) for t in trees))

    def forward(self, X):
        X = X.to(torch.float64)
        n = X.shape[0]
        node = self.offsets.expand(n, -1)  # flat index of (tree, node 0)
        for _ in range(self.depth):
            x = torch.gather(X, 1, self.feature[node])
            go_left = torch.where(torch.isnan(x), self.missing_left[node],
                                  x <= self.threshold[node])
            child = torch.where(go_left, self.left[node], self.right[node]) + self.offsets
            node = torch.where(self.is_leaf[node], node, child)
        return (self.value[node].sum(dim=1) + self.baseline).to(self.dtype)
