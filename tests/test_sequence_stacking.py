"""LayerSequenceUnion: step-major interleaving checked against a hand-built reshape."""

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_advdet import (
    FeatureLayout,
    KNNClassScorer,
    LayerSequenceUnion,
    LIDScorer,
    LogitFeatures,
    MahalanobisScorer,
    PivotEmbedder,
)

LAYOUT = FeatureLayout([3, 4, 5, 3], has_logits=True)  # 3 layers + 3 logits


def _ref(n=90, seed=0):
    rng = np.random.RandomState(seed)
    y = np.arange(n) % 3
    X = rng.normal(size=(n, 15)) + y[:, None]
    X[:, 12:] += 3 * np.eye(3)[y]
    return X, y


def _fitted(layers="all"):
    X, y = _ref()
    return {
        "piv": PivotEmbedder(LAYOUT).fit(X, y),
        "knn": KNNClassScorer(LAYOUT, layers=layers, n_neighbors=7).fit(X, y),
        "maha": MahalanobisScorer(LAYOUT).fit(X, y),
        "lid": LIDScorer(LAYOUT, n_neighbors=5).fit(X, y),
    }


def _union(fitted, **kw):
    return LayerSequenceUnion(
        [(n, FrozenEstimator(t)) for n, t in fitted.items()]
        + [("logit", LogitFeatures(LAYOUT, features=["margin", "energy", "entropy",
                                                       "max_logit", "max_softmax"]))],
        static=["logit"], **kw)


def test_step_major_order_matches_hand_built_reshape():
    fitted = _fitted()
    X, y = _ref(seed=1)
    union = _union(fitted).fit(X, y)
    P = fitted["piv"].transform(X)          # (n, 3 * 3), layer-major
    K = fitted["knn"].transform(X)          # (n, 3)
    M = fitted["maha"].transform(X)         # (n, 3)
    D = fitted["lid"].transform(X)          # (n, 3)
    F = LogitFeatures(LAYOUT, features=["margin", "energy", "entropy", "max_logit",
                                        "max_softmax"]).fit_transform(X)
    steps = [np.hstack([P[:, 3 * l:3 * l + 3], K[:, [l]], M[:, [l]], D[:, [l]]])
             for l in range(3)]
    C = 6
    static = np.zeros((len(X), C))          # K = 5 static values in one padded step
    static[:, :5] = F
    expected = np.stack(steps + [static], axis=1)   # (n, steps, channels)
    assert (union.n_layers_, union.n_steps_, union.n_channels_) == (3, 4, C)
    S = union.transform(X)
    np.testing.assert_allclose(S.reshape(len(X), 4, C), expected, rtol=1e-6)
    np.testing.assert_allclose(S, expected.reshape(len(X), -1), rtol=1e-6)
    names = union.get_feature_names_out()
    assert len(names) == S.shape[1] == len(set(names))
    assert list(names[:6]) == ["piv__layer0_class0", "piv__layer0_class1",
                               "piv__layer0_class2", "knn__knn_score_layer0",
                               "maha__mahalanobis_layer0", "lid__lid_layer0"]
    assert list(names[18:]) == ["logit__margin", "logit__energy", "logit__entropy",
                                "logit__max_logit", "logit__max_softmax", "pad__0"]
    assert union.channel_widths_ == {"piv": 3, "knn": 1, "maha": 1, "lid": 1}
    assert union.layer_names_ == ["layer0", "layer1", "layer2"]


def test_padding_and_broadcast():
    fitted = _fitted()
    X, y = _ref(seed=2)
    few = LayerSequenceUnion([("maha", FrozenEstimator(fitted["maha"])),
                              ("knn", FrozenEstimator(fitted["knn"])),
                              ("logit", LogitFeatures(LAYOUT))], static=["logit"])
    S = few.fit_transform(X, y)  # C = 2, K = 5: 3 extra steps, one zero at the end
    assert (few.n_steps_, few.n_channels_) == (6, 2)
    F = LogitFeatures(LAYOUT).fit_transform(X)
    np.testing.assert_allclose(S[:, 6:11], F)
    assert np.all(S[:, 11] == 0) and few.get_feature_names_out()[-1] == "pad__0"
    bc = LayerSequenceUnion(few.transformers, static=["logit"], static_as="broadcast")
    B = bc.fit_transform(X, y).reshape(len(X), 3, 7)
    M, Kn = fitted["maha"].transform(X), fitted["knn"].transform(X)
    for l in range(3):
        np.testing.assert_allclose(B[:, l], np.column_stack([M[:, l], Kn[:, l], F]))
    assert bc.get_feature_names_out()[2] == "layer0__logit__max_softmax"


def test_mixed_layers_or_widths_are_refused():
    fitted = _fitted()
    X, y = _ref()
    last_only = KNNClassScorer(LAYOUT, layers=-1, n_neighbors=7).fit(X, y)
    with pytest.raises(ValueError, match="same layers"):
        LayerSequenceUnion([("maha", FrozenEstimator(fitted["maha"])),
                            ("knn", FrozenEstimator(last_only))]).fit(X, y)
    with pytest.raises(ValueError, match="not a multiple of the 3 layers.*static="):
        LayerSequenceUnion([("maha", FrozenEstimator(fitted["maha"])),
                            ("logit", LogitFeatures(LAYOUT))]).fit(X, y)
    with pytest.raises(ValueError, match="pass n_layers"):
        LayerSequenceUnion([("sc", StandardScaler())]).fit(X, y)
    with pytest.raises(ValueError, match="n_layers=2 but"):
        LayerSequenceUnion([("maha", FrozenEstimator(fitted["maha"]))], n_layers=2).fit(X, y)
    with pytest.raises(ValueError, match="not in transformers"):
        LayerSequenceUnion([("maha", fitted["maha"])], static=["logits"]).fit(X, y)
    with pytest.raises(ValueError, match="every transformer is static"):
        LayerSequenceUnion([("lf", LogitFeatures(LAYOUT))], static=["lf"]).fit(X, y)


class _ClassMajor(TransformerMixin, BaseEstimator):
    """Pivot distances in class-major order: what a plain reshape would mix."""

    def __init__(self, embedder=None):
        self.embedder = embedder

    def fit(self, X, y=None):
        self.layout_ = self.embedder.layout_
        self.layers_ = self.embedder.layer_indices_
        return self

    def transform(self, X):
        Z = self.embedder.transform(X)
        return Z.reshape(len(X), 3, 3).transpose(0, 2, 1).reshape(len(X), -1)

    def get_feature_names_out(self, input_features=None):
        names = self.embedder.get_feature_names_out()
        return names.reshape(3, 3).T.ravel()


def test_layer_mixing_output_is_refused():
    fitted = _fitted()
    X, y = _ref()
    with pytest.raises(ValueError, match="not layer-major"):
        bad = FrozenEstimator(_ClassMajor(fitted["piv"]).fit(X))
        LayerSequenceUnion([("bad", bad)]).fit(X, y)


def test_pipeline_gridsearch_and_lstm_shape():
    fitted = _fitted()
    X_ref, y_ref = _ref()
    rng = np.random.RandomState(3)
    X = np.vstack([X_ref, X_ref + rng.normal(scale=2.0, size=X_ref.shape)])
    y = np.repeat([0, 1], len(X_ref))
    pipe = Pipeline([("seq", _union(fitted)), ("clf", LogisticRegression(max_iter=500))])
    params = pipe.get_params()
    assert "seq__logit__temperature" in params and "seq__maha__estimator" in params
    grid = GridSearchCV(pipe, {"seq__logit__temperature": [1.0, 2.0], "clf__C": [0.1, 1.0]},
                        cv=3, scoring="roc_auc").fit(X, y)
    assert grid.best_score_ > 0.7
    best = grid.best_estimator_.named_steps["seq"]
    assert best.transformers_[0][1] is pipe.named_steps["seq"].transformers[0][1]
    assert best.transformers_[0][1].estimator is fitted["piv"]  # frozen, not refitted
    pytest.importorskip("torch")
    from sklearn_advdet import SequenceLSTMDetector
    union = _union(fitted).fit(X, y)
    det = SequenceLSTMDetector(n_steps=union.n_steps_, max_epochs=2, batch_size=64,
                               random_state=0)
    det.fit(union.transform(X).astype(np.float32), y)
    assert (det.n_steps_, det.step_size_) == (union.n_steps_, union.n_channels_)


@parametrize_with_checks([
    LayerSequenceUnion([("sc", StandardScaler()),
                        ("maha", MahalanobisScorer("single", class_mean="closest"))],
                       n_layers=1),
])
def test_sklearn_compatible(estimator, check):
    check(estimator)
