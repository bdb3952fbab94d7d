"""Fitted detection steps of this package as torch modules (float32 buffers).

:func:`convert_detector` walks a fitted detection Pipeline and returns one
:class:`torch.nn.Module` that maps the feature rows ``X`` (layout of
:class:`~sklearn_advdet.deep.extraction.FeatureExtractor`: pooled hooked
layers, then the logits) to the detector's logit, so that
``sigmoid(logit) == pipeline.predict_proba(X)[:, 1]``.  Every module computes
what the numpy step computes, in float32 (the pivot distances in float64, as
numpy computes them); a step without a converter raises a
TypeError naming it.  The neighbour steps (kNN class score, LID) search the
reference set as a float32 tensor: a screening GEMM picks the ``k`` nearest,
whose distances are then recomputed from coordinate differences.
"""

import numpy as np
import torch
from torch import nn

from ._torch_fusion import convert_final
from ._torch_heads import HEAD_STEPS, _Buffers, check_binary_classes, convert_head

__all__ = ["convert_detector", "find_layout", "CONVERTIBLE_STEPS"]

#: the steps :func:`convert_detector` knows (class names), besides Pipeline,
#: FeatureUnion and FrozenEstimator, which it unwraps
CONVERTIBLE_STEPS = (
    "PivotEmbedder", "StandardScaler", "LogitFeatures", "MahalanobisScorer",
    "KNNClassScorer", "LIDScorer", "LayerSequenceUnion",
) + HEAD_STEPS


# ----------------------------------------------------------------- pieces
class _Sequential(nn.Module):
    def __init__(self, steps):
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, X):
        for step in self.steps:
            X = step(X)
        return X


class _Union(nn.Module):
    """FeatureUnion: the transformers' outputs side by side (weights applied)."""

    def __init__(self, parts, weights):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.weights = [float(w) for w in weights]

    def forward(self, X):
        outs = [p(X) * w if w != 1.0 else p(X) for p, w in zip(self.parts, self.weights)]
        return torch.cat(outs, dim=1)


class _Identity(nn.Module):
    def forward(self, X):
        return X


class _Scaler(_Buffers):
    def __init__(self, est):
        super().__init__()
        d = est.n_features_in_
        self._put("mean", est.mean_ if est.mean_ is not None else np.zeros(d))
        self._put("scale", est.scale_ if est.scale_ is not None else np.ones(d))

    def forward(self, X):
        return (X - self.mean) / self.scale


def _distances_to(X, P, metric):
    """Distances of rows of X to pivots P: (n, C), by coordinate differences."""
    if metric == "euclidean":
        return torch.linalg.vector_norm(X[:, None, :] - P[None, :, :], dim=2)
    xn = torch.linalg.vector_norm(X, dim=1, keepdim=True)
    pn = torch.linalg.vector_norm(P, dim=1)
    S = (X @ P.T) / torch.where(xn > 0, xn, torch.ones_like(xn))
    S = S / torch.where(pn > 0, pn, torch.ones_like(pn))
    return S if metric == "cosine_similarity" else 1.0 - S


class _Pivots(_Buffers):
    """PivotEmbedder, in float64 like the numpy step, float32 out.

    Cosine similarities of ReLU features cluster near 1: in float32 their
    rounding, magnified by a following standardisation, moved p_adv by 3e-5.
    """

    def __init__(self, est):
        super().__init__()
        self.metric = est.metric
        self.slices = [est.layout_.slice_of(i) for i in est.layer_indices_]
        for j, P in enumerate(est.pivots_):
            self.register_buffer(f"pivots_{j}", torch.as_tensor(np.asarray(P, np.float64)))

    def forward(self, X):
        X = X.to(torch.float64)
        return torch.cat([_distances_to(X[:, sl], getattr(self, f"pivots_{j}"), self.metric)
                          for j, sl in enumerate(self.slices)], dim=1).to(torch.float32)


class _LogitStats(nn.Module):
    def __init__(self, est):
        super().__init__()
        self.sl = est.layout_.logits_slice
        self.features = tuple(est.features_)
        self.T = float(est.temperature)

    def forward(self, X):
        Z = X[:, self.sl]
        S = Z / self.T
        lse = torch.logsumexp(S, dim=1)
        P = torch.softmax(S, dim=1)
        top2 = torch.topk(Z, 2, dim=1).values
        stats = {
            "max_softmax": torch.exp(S.max(dim=1).values - lse),
            "margin": top2[:, 0] - top2[:, 1],
            "energy": -self.T * lse,
            "entropy": torch.clamp(lse - (P * S).sum(dim=1), min=0.0),
            "max_logit": top2[:, 0],
        }
        return torch.stack([stats[f] for f in self.features], dim=1)


def _predicted_index(X, logits_slice, lookup):
    """Row of each sample's predicted class (argmax of the logits) in a class table."""
    return lookup[torch.argmax(X[:, logits_slice], dim=1)]


class _Mahalanobis(_Buffers):
    def __init__(self, est):
        super().__init__()
        self.closest = est.class_mean == "closest"
        self.log = bool(est.log)
        self.slices = [est.layout_.slice_of(i) for i in est.layers_]
        if not self.closest:
            n_logits = est.layout_.n_logits
            missing = sorted(set(range(n_logits)) - set(np.asarray(est.classes_).tolist()))
            if missing:
                raise ValueError(
                    f"MahalanobisScorer has no reference sample of class(es) {missing}: "
                    "the guarded model would have no mean to compare a row predicted "
                    "as them with; refit it on every class or use class_mean='closest'"
                )
            lookup = np.zeros(n_logits, dtype=np.int64)
            lookup[np.asarray(est.classes_, dtype=np.int64)] = np.arange(len(est.classes_))
            self.register_buffer("lookup", torch.as_tensor(lookup))
            self.logits_slice = est.layout_.logits_slice
        for j, (mu, U) in enumerate(zip(est.means_, est.precision_cholesky_)):
            self._put(f"U_{j}", U)
            self._put(f"Mw_{j}", mu @ U)

    def forward(self, X):
        rows = None if self.closest else _predicted_index(X, self.logits_slice, self.lookup)
        cols = []
        for j, sl in enumerate(self.slices):
            Xw = X[:, sl] @ getattr(self, f"U_{j}")
            Mw = getattr(self, f"Mw_{j}")
            if rows is None:
                d = torch.linalg.vector_norm(Xw[:, None, :] - Mw[None], dim=2).min(dim=1).values
            else:
                d = torch.linalg.vector_norm(Xw - Mw[rows], dim=1)
            cols.append(d)
        D = torch.stack(cols, dim=1)
        return torch.log1p(D) if self.log else D


class _Neighbours(_Buffers):
    """Shared search of the kNN and LID steps: the k nearest reference rows."""

    def _references(self, est):
        self.slices = [est.layout_.slice_of(i) for i in est.layers_]
        states = getattr(est, "preprocessors_", None) or [None] * len(self.slices)
        self.pre = []
        for j, index in enumerate(est._indexes):
            R = np.asarray(index.data, dtype=np.float64)
            self._put(f"ref_{j}", R)
            self._put(f"centre_{j}", R.mean(axis=0))
            self._put(f"refsq_{j}", np.einsum("ij,ij->i", R - R.mean(axis=0), R - R.mean(axis=0)))
            state = states[j]
            if state is None or isinstance(state, str):
                self.pre.append(state)
            else:  # a fitted PCA
                self.pre.append("pca")
                self._put(f"pca_mean_{j}", state.mean_)
                comp = state.components_
                if state.whiten:
                    comp = comp / np.sqrt(state.explained_variance_)[:, None]
                self._put(f"pca_comp_{j}", comp.T)

    def _prep(self, Z, j):
        kind = self.pre[j]
        if kind == "l2":
            n = torch.linalg.vector_norm(Z, dim=1, keepdim=True)
            return Z / torch.where(n > 0, n, torch.ones_like(n))
        if kind == "pca":
            return (Z - getattr(self, f"pca_mean_{j}")) @ getattr(self, f"pca_comp_{j}")
        return Z

    def _nearest(self, Z, j, k):
        """(distances, indices) of the k nearest references, by (distance, index)."""
        R, c = getattr(self, f"ref_{j}"), getattr(self, f"centre_{j}")
        Zc = Z - c
        approx = getattr(self, f"refsq_{j}")[None, :] - 2.0 * (Zc @ (R - c).T)
        idx = torch.topk(approx.detach(), k, dim=1, largest=False).indices
        idx = torch.sort(idx, dim=1).values  # ties by reference index
        d = torch.linalg.vector_norm(Z[:, None, :] - R[idx], dim=2)
        order = torch.sort(d.detach(), dim=1, stable=True).indices
        return torch.gather(d, 1, order), torch.gather(idx, 1, order)


class _KNNScore(_Neighbours):
    """KNNClassScorer; ``surrogate`` adds a soft-kNN gradient (BPDA)."""

    def __init__(self, est, surrogate=False, temperature=0.1):
        super().__init__()
        if not est.layout_.has_logits:
            raise TypeError(
                "KNNClassScorer(layer_sizes='single') scores the neighbours' own "
                "majority class; the guarded model converts only the predicted-class "
                "score: fit it with the layout that has the logits block")
        self._references(est)
        self.k = int(est.n_neighbors_)
        self.weights = est.weights
        self.logits_slice = est.layout_.logits_slice
        self.register_buffer("ref_labels", torch.as_tensor(np.asarray(est.ref_labels_, np.int64)))
        self.surrogate = bool(surrogate)
        self.temperature = float(temperature)

    def _weights(self, d):
        if self.weights == "uniform":
            return torch.ones_like(d)
        if self.weights == "rank":
            r = torch.arange(1, d.shape[1] + 1, dtype=d.dtype, device=d.device)
            return (1.0 / r).expand_as(d)
        zero = d == 0
        has_zero = zero.any(dim=1, keepdim=True)
        inv = 1.0 / torch.where(zero, torch.ones_like(d), d) ** 2
        return torch.where(has_zero, zero.to(d.dtype), inv)

    def forward(self, X):
        pred = torch.argmax(X[:, self.logits_slice], dim=1)
        cols = []
        for j, sl in enumerate(self.slices):
            d, idx = self._nearest(self._prep(X[:, sl], j), j, self.k)
            match = (self.ref_labels[idx] == pred[:, None]).to(d.dtype)
            w = self._weights(d)
            score = (w * match).sum(dim=1) / w.sum(dim=1)
            if self.surrogate:
                scale = d[:, -1:].detach().clamp_min(1e-12) * self.temperature
                soft = (torch.softmax(-d / scale, dim=1) * match).sum(dim=1)
                score = score.detach() + soft - soft.detach()
            cols.append(score)
        return torch.stack(cols, dim=1)


class _LID(_Neighbours):
    # extra neighbours searched so that exact copies of reference rows (zero
    # distances, skipped like LIDScorer does) still leave k positive ones
    _MARGIN = 8

    def __init__(self, est):
        super().__init__()
        self._references(est)
        self.k = int(est.n_neighbors_)
        self.n_ref = int(est._indexes[0].data.shape[0])

    def forward(self, X):
        cols = []
        for j, sl in enumerate(self.slices):
            d, _ = self._nearest(X[:, sl], j, min(self.n_ref, self.k + self._MARGIN))
            pos = d > 0
            keep = pos & (torch.cumsum(pos.to(torch.int64), dim=1) <= self.k)
            kf = keep.to(d.dtype)
            dk = (d * kf).max(dim=1, keepdim=True).values
            dk = torch.where(dk > 0, dk, torch.ones_like(dk))
            safe = torch.where(keep, d, torch.ones_like(d)) / dk
            s = (torch.log(safe) * kf).sum(dim=1)
            m = kf.sum(dim=1)
            lid = -m / torch.where(s < 0, s, -torch.ones_like(s))
            cols.append(torch.where(s < 0, lid, torch.full_like(lid, float("inf"))))
        return torch.stack(cols, dim=1)


class _LayerSequence(nn.Module):
    def __init__(self, est, parts):
        super().__init__()
        names = [n for n, _ in est.transformers_]
        self.static = [n in est.static for n in names]
        self.parts = nn.ModuleList(parts)
        self.widths = [0 if s else est.channel_widths_[n] for n, s in zip(names, self.static)]
        self.L, self.C, self.n_steps = est.n_layers_, est.n_channels_, est.n_steps_
        self.step = est.static_as == "step"

    def forward(self, X):
        outs = [p(X) for p in self.parts]
        n = X.shape[0]
        blocks = [o.reshape(n, self.L, c) for o, c, s in zip(outs, self.widths, self.static)
                  if not s]
        static = [o for o, s in zip(outs, self.static) if s]
        if static and not self.step:
            S = torch.cat(static, dim=1)
            blocks.append(S[:, None, :].expand(n, self.L, S.shape[1]))
        seq = torch.cat(blocks, dim=2).reshape(n, -1)
        if static and self.step:
            S = torch.cat(static, dim=1)
            pad = (self.n_steps - self.L) * self.C - S.shape[1]
            seq = torch.cat([seq, S, S.new_zeros(n, pad)], dim=1)
        return seq


# ------------------------------------------------------------- the walker
def _pipeline_steps(est):
    """A Pipeline's steps, FrozenEstimator unwrapped, None / "passthrough" left out."""
    return [_unwrap(s) for _, s in est.steps if s not in (None, "passthrough")]


def _unwrap(step):
    from sklearn.frozen import FrozenEstimator

    while isinstance(step, FrozenEstimator):
        step = step.estimator
    return step


def _convert_transformer(est, surrogate, temperature):
    from sklearn.pipeline import FeatureUnion, Pipeline

    est = _unwrap(est)
    name = type(est).__name__
    if isinstance(est, Pipeline):
        return _Sequential([_convert_transformer(s, surrogate, temperature)
                            for s in _pipeline_steps(est)])
    if isinstance(est, FeatureUnion):
        parts, weights = [], []
        for n, t in est.transformer_list:
            if t == "drop":
                continue
            parts.append(_Identity() if t == "passthrough"
                         else _convert_transformer(t, surrogate, temperature))
            weights.append((est.transformer_weights or {}).get(n, 1.0))
        return _Union(parts, weights)
    simple = {"PivotEmbedder": _Pivots, "StandardScaler": _Scaler,
              "LogitFeatures": _LogitStats, "MahalanobisScorer": _Mahalanobis,
              "LIDScorer": _LID}
    if name in simple:
        return simple[name](est)
    if name == "KNNClassScorer":
        return _KNNScore(est, surrogate, temperature)
    if name == "LayerSequenceUnion":
        return _LayerSequence(est, [_convert_transformer(t, surrogate, temperature)
                                    for _, t in est.transformers_])
    raise TypeError(
        f"cannot convert the step {name} to torch: the guarded model converts "
        f"{', '.join(CONVERTIBLE_STEPS)} (and Pipeline, FeatureUnion, "
        "FrozenEstimator around them); replace it or extend "
        "sklearn_advdet.experiments._torch_steps")


def _convert_classifier(est):
    """A conformal fusion's supervised component as a module giving its score."""
    from sklearn.pipeline import Pipeline

    est = _unwrap(est)
    if isinstance(est, Pipeline):
        steps = _pipeline_steps(est)
        return _Sequential([_convert_transformer(s, False, 0.1) for s in steps[:-1]]
                           + [_convert_classifier(steps[-1])])
    # float64 sums (boosted trees), as the calibration scores they are compared with
    return convert_head(est, float64=True)


def _convert_last(est, surrogate, helper):
    name = type(est).__name__
    if name in ("AuthenticDensityDetector", "ConformalFusionDetector"):
        check_binary_classes(est, name)
        return convert_final(est, _convert_classifier, surrogate, helper)
    return convert_head(est)


def convert_detector(pipeline, *, surrogate=False, knn_temperature=0.1,
                     classifier_surrogate=None):
    """A torch module mapping feature rows ``X`` to the detector's logit.

    Parameters
    ----------
    pipeline : fitted Pipeline or classifier
        Transformers of this package (see :data:`CONVERTIBLE_STEPS`), then a
        binary detector whose ``predict_proba(X)[:, 1]`` is the sigmoid of
        the returned module's output.
    surrogate : bool, default=False
        Gradients for attacks, values unchanged: kNN class scores get the
        soft-kNN gradient; the conformal p-values of AuthenticDensityDetector
        and ConformalFusionDetector the gradient of their
        ``decision_function`` (straight-through).
    knn_temperature : float, default=0.1
        Softmax temperature of the soft kNN, relative to each row's k-th
        neighbour distance.
    classifier_surrogate : fitted Pipeline or classifier, default=None
        Surrogate mode only: a differentiable detector (e.g. StandardScaler +
        LogisticRegression) fitted on the features a ConformalFusionDetector
        last step reads; its logit's gradient stands in for that of the
        fusion's supervised component when that one has none (boosted
        trees); its values are not used.

    Returns
    -------
    torch.nn.Module
        In eval mode, float32 buffers, no trainable parameter.
    """
    from sklearn.pipeline import Pipeline
    from sklearn.utils.validation import check_is_fitted

    est = _unwrap(pipeline)
    check_is_fitted(est)
    steps = _pipeline_steps(est) if isinstance(est, Pipeline) else [est]
    helper = None
    if classifier_surrogate is not None:
        last = type(steps[-1]).__name__
        if last != "ConformalFusionDetector" or not surrogate:
            raise ValueError(
                "classifier_surrogate lends its gradient to the supervised component "
                "of a ConformalFusionDetector last step in surrogate mode, but "
                + (f"the last step is {last}: attack a surrogate pipeline instead"
                   if last != "ConformalFusionDetector" else "surrogate=False")
                + "; pass classifier_surrogate=None")
        helper = convert_detector(classifier_surrogate, surrogate=True,
                                  knn_temperature=knn_temperature)
    if isinstance(est, Pipeline):
        body = [_convert_transformer(s, surrogate, knn_temperature) for s in steps[:-1]]
        module = _Sequential(body + [_convert_last(steps[-1], surrogate, helper)])
    else:
        module = _convert_last(est, surrogate, helper)
    return module.eval()


def find_layout(pipeline):
    """The FeatureLayout the first-level transformers were fitted on, or None."""
    from sklearn.pipeline import FeatureUnion, Pipeline

    found = []

    def walk(est, first):
        est = _unwrap(est)
        if isinstance(est, Pipeline):
            steps = _pipeline_steps(est)
            walk(steps[0], first)
        elif isinstance(est, FeatureUnion):
            for _, t in est.transformer_list:
                if t not in ("drop", "passthrough"):
                    walk(t, first)
        elif type(est).__name__ == "LayerSequenceUnion":
            for _, t in est.transformers_:
                walk(t, first)
        elif getattr(est, "layout_", None) is not None:
            found.append((type(est).__name__, est.layout_))

    walk(pipeline, True)
    for name, layout in found[1:]:
        if layout != found[0][1]:
            raise ValueError(
                f"{found[0][0]} was fitted on {found[0][1]!r} but {name} on {layout!r}: "
                "every step must read the same feature layout")
    return found[0][1] if found else None
