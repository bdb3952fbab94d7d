"""The detectors a benchmark compares: the papers', compositions, the default, the peers.

Every entry of :data:`DETECTORS` is ``name -> (group, factory)``; the
factory ``factory(layout, X_ref, y_ref, settings)`` returns an **unfitted
detection estimator** (``fit(X, y)`` then ``decision_function`` or
``predict_proba``) whose reference steps (pivots, kNN index, class means,
peers) are already fitted on the reference set and frozen, so a protocol
that refits the detector on every split never refits them.
"""

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline, make_union
from sklearn.preprocessing import StandardScaler

__all__ = ["DETECTORS", "DEFAULT_DETECTORS", "CALIBRATED", "resolve_detectors",
           "detection_scores"]


def _frozen(est, X_ref, y_ref):
    return FrozenEstimator(est.fit(X_ref, y_ref))


def _pivots_mlp(layout, X_ref, y_ref, settings):
    from ..detectors import MLPDetector
    from ..embedding import PivotEmbedder

    emb = _frozen(PivotEmbedder(layout, pivots="centroid", metric="euclidean"), X_ref, y_ref)
    return make_pipeline(emb, MLPDetector(max_epochs=settings["max_epochs"],
                                          random_state=settings["random_state"]))


def _pivots_lstm(layout, X_ref, y_ref, settings):
    from ..detectors import SequenceLSTMDetector
    from ..embedding import PivotEmbedder

    emb = _frozen(PivotEmbedder(layout, pivots="medoid", metric="cosine"), X_ref, y_ref)
    return make_pipeline(emb, SequenceLSTMDetector(layout.n_layers,
                                                   max_epochs=settings["max_epochs"],
                                                   random_state=settings["random_state"]))


def _knn_score(layout, X_ref, y_ref, settings):
    from ..knn import KNNClassScorer
    from ..thresholds import ScoreThresholdDetector

    k = int(min(1000, max(1, X_ref.shape[0] // 5)))
    scorer = _frozen(KNNClassScorer(layout, layers=-1, n_neighbors=k, weights="rank"),
                     X_ref, y_ref)
    return make_pipeline(scorer, ScoreThresholdDetector(direction="low"))


def _logit_mahalanobis(layout, X_ref, y_ref, settings):
    from ..features.logit import LogitFeatures
    from ..features.mahalanobis import MahalanobisScorer

    union = make_union(_frozen(LogitFeatures(layout), X_ref, y_ref),
                       _frozen(MahalanobisScorer(layout, log=True), X_ref, y_ref))
    return make_pipeline(union, HistGradientBoostingClassifier(
        max_iter=200, learning_rate=0.05, random_state=settings["random_state"]))


def _logit_mahalanobis_logistic(layout, X_ref, y_ref, settings):
    from ..features.logit import LogitFeatures
    from ..features.mahalanobis import MahalanobisScorer

    union = make_union(_frozen(LogitFeatures(layout), X_ref, y_ref),
                       _frozen(MahalanobisScorer(layout, log=True), X_ref, y_ref))
    return make_pipeline(union, StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))


def _default_supervised(layout, X_ref, y_ref, settings):
    """make_detector's supervised mode: the features, then gradient boosting."""
    from ..recipes import make_detector

    return make_detector(layout, X_ref, y_ref, mode="supervised",
                         random_state=settings["random_state"], n_jobs=settings["n_jobs"])


def _default_authentic(layout, X_ref, y_ref, settings):
    """make_detector's authentic-only mode; it drops the adversarial rows of a split."""
    from ..recipes import make_detector

    det = make_detector(layout, X_ref, y_ref, mode="authentic",
                        random_state=settings["random_state"], n_jobs=settings["n_jobs"])
    return det.set_params(detector__drop_adversarial=True)


def _default_hybrid(layout, X_ref, y_ref, settings):
    """make_detector's hybrid mode: the default classifier or an authentic density."""
    from ..recipes import make_detector

    return make_detector(layout, X_ref, y_ref, mode="hybrid",
                         random_state=settings["random_state"], n_jobs=settings["n_jobs"])


def _peer(cls_name, **params):
    def factory(layout, X_ref, y_ref, settings):
        from .. import evaluation
        from ..thresholds import ScoreThresholdDetector

        peer = getattr(evaluation, cls_name)(layout, **params)
        return make_pipeline(_frozen(peer, X_ref, y_ref),
                             ScoreThresholdDetector(direction="high"))
    return factory


#: name -> (group, factory); groups: "paper", "composition", the three modes of
#: make_detector ("default (hybrid)", the recommended one; "default, supervised";
#: "default, authentic only", fitted on the authentic rows of each split), "peer"
DETECTORS = {
    "pivots_lstm": ("paper", _pivots_lstm),
    "pivots_mlp": ("paper", _pivots_mlp),
    "knn_score": ("paper", _knn_score),
    "logit_mahalanobis_boosting": ("composition", _logit_mahalanobis),
    "logit_mahalanobis_logistic": ("composition", _logit_mahalanobis_logistic),
    "default_hybrid": ("default (hybrid)", _default_hybrid),
    "default_supervised": ("default, supervised", _default_supervised),
    "default_authentic": ("default, authentic only", _default_authentic),
    "max_softmax": ("peer", _peer("MaxSoftmaxPeer")),
    "energy": ("peer", _peer("EnergyPeer")),
    "mahalanobis": ("peer", _peer("MahalanobisPeer")),
    "lid": ("peer", _peer("LIDPeer")),
    "deep_knn": ("peer", _peer("DeepKNNPeer")),
    "kernel_density": ("peer", _peer("KernelDensityPeer")),
    "dknn_credibility": ("peer", _peer("DkNNCredibilityPeer", random_state=0)),
}

#: detectors whose ``decision_function > 0`` is a threshold calibrated to a
#: target false-positive rate on authentic rows: name -> that target
CALIBRATED = {"default_authentic": 0.05, "default_hybrid": 0.05}

#: what ``detectors=None`` runs: every entry but the pivots LSTM, whose training
#: (one per split: 1 + F + F^2 + budgets^2 fits for F families) dominates a CPU
#: run; the MLP on pivots stands for paper 1 by default (ask for
#: ``"pivots_lstm"`` by name)
DEFAULT_DETECTORS = tuple(d for d in DETECTORS if d != "pivots_lstm")


def resolve_detectors(detectors):
    """``{name: (group, factory)}`` from names, a dict of factories, or None (all)."""
    if detectors is None:
        detectors = DEFAULT_DETECTORS
    if isinstance(detectors, str):
        detectors = [detectors]
    if isinstance(detectors, dict):
        out = {}
        for name, factory in detectors.items():
            if not callable(factory):
                raise TypeError(
                    f"detector {name!r}: a factory(layout, X_ref, y_ref, settings) "
                    f"returning an unfitted estimator is needed, got {factory!r}"
                )
            out[str(name)] = ("custom", factory)
        return out
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown:
        raise ValueError(
            f"unknown detector(s) {unknown!r}: choose among {list(DETECTORS)} or pass "
            "a dict {name: factory}"
        )
    return {d: DETECTORS[d] for d in detectors}


def detection_scores(estimator, X):
    """Higher = more adversarial: ``decision_function`` or ``predict_proba[:, 1]``."""
    if hasattr(estimator, "decision_function"):
        try:
            return np.asarray(estimator.decision_function(X), dtype=np.float64).ravel()
        except AttributeError:
            pass
    return np.asarray(estimator.predict_proba(X)[:, 1], dtype=np.float64)
