"""Peer detectors against their formulas, in pipelines, and (crosscheck) against pytorch-ood."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.special import logsumexp, softmax
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KernelDensity
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_advdet import FeatureLayout, MahalanobisScorer
from sklearn_advdet.evaluation import (
    DeepKNNPeer,
    DkNNCredibilityPeer,
    EnergyPeer,
    KernelDensityPeer,
    LIDPeer,
    MahalanobisPeer,
    MaxSoftmaxPeer,
)
from sklearn_advdet.knn import ScoreThresholdDetector


def _features(n_ref=150, n=40, sizes=(3, 4), n_classes=3, seed=0):
    rng = np.random.RandomState(seed)
    y_ref = np.arange(n_ref) % n_classes
    blocks = [rng.normal(size=(n_ref, d)) + 2.0 * y_ref[:, None] for d in sizes]
    logits_ref = np.eye(n_classes)[y_ref] * 3 + rng.normal(size=(n_ref, n_classes))
    X_ref = np.hstack(blocks + [logits_ref])
    X = rng.normal(size=(n, sum(sizes) + n_classes)) * 1.5 + 2.0
    return X_ref, y_ref, X, FeatureLayout(list(sizes) + [n_classes], has_logits=True)


def test_max_softmax_and_energy_formulas():
    X_ref, y_ref, X, layout = _features()
    Z = X[:, layout.logits_slice]
    for T in (1.0, 2.5):
        msp = MaxSoftmaxPeer(layout, temperature=T).fit(X).transform(X)[:, 0]
        np.testing.assert_allclose(msp, 1 - softmax(Z / T, axis=1).max(axis=1), rtol=1e-12)
        energy = EnergyPeer(layout, temperature=T).fit(X).transform(X)[:, 0]
        np.testing.assert_allclose(energy, -T * logsumexp(Z / T, axis=1), rtol=1e-12)
    with pytest.raises(ValueError, match="needs the logits block"):
        EnergyPeer((3, 4, 3)).fit(X)


def test_deep_knn_is_kth_normalised_distance():
    X_ref, _, X, layout = _features()
    for k in (1, 5, 50):
        got = DeepKNNPeer(layout, n_neighbors=k).fit(X_ref).transform(X)[:, 0]
        sl = layout.slice_of(1)  # the last hidden layer, never the logits
        R = X_ref[:, sl] / np.linalg.norm(X_ref[:, sl], axis=1, keepdims=True)
        Q = X[:, sl] / np.linalg.norm(X[:, sl], axis=1, keepdims=True)
        np.testing.assert_allclose(got, np.sort(cdist(Q, R), axis=1)[:, k - 1], rtol=1e-9)
    first = DeepKNNPeer(layout, layer=0, n_neighbors=3).fit(X_ref).transform(X)[:, 0]
    assert not np.allclose(first, got)


def test_kernel_density_formula_and_sklearn():
    X_ref, y_ref, X, layout = _features()
    sigma = 1.3
    got = KernelDensityPeer(layout, bandwidth=sigma).fit(X_ref, y_ref).transform(X)[:, 0]
    sl = layout.slice_of(1)
    pred = X[:, layout.logits_slice].argmax(axis=1)
    expect = np.array([
        -np.log(np.mean(np.exp(-cdist(X[i : i + 1, sl], X_ref[y_ref == c, sl],
                                      "sqeuclidean")[0] / sigma**2)))
        for i, c in enumerate(pred)])
    np.testing.assert_allclose(got, expect, rtol=1e-9)
    # the same up to the Gaussian normalisation: sklearn's kernel exp(-d^2 / 2h^2), h = sigma/sqrt 2
    h, d = sigma / np.sqrt(2), sl.stop - sl.start
    for c in range(3):
        kde = KernelDensity(bandwidth=h).fit(X_ref[y_ref == c, sl])
        rows = pred == c
        np.testing.assert_allclose(
            -got[rows], kde.score_samples(X[rows, sl]) + d / 2 * np.log(2 * np.pi * h**2),
            rtol=1e-8)
    best = KernelDensityPeer(layout, bandwidth=sigma, classes="max").fit(X_ref, y_ref)
    assert np.all(best.transform(X)[:, 0] <= got + 1e-12)


def test_kernel_density_missing_class():
    X_ref, y_ref, X, layout = _features()
    keep = y_ref != 2
    peer = KernelDensityPeer(layout).fit(X_ref[keep], y_ref[keep])
    X[:, layout.logits_slice] = [0, 0, 5]
    with pytest.raises(ValueError, match="no sample of them"):
        peer.transform(X)


def _dknn_brute(X_ref, y_ref, X, layout, k, cal, train):
    def counts(Q):
        out = np.zeros((len(Q), 3), int)
        for layer in range(layout.n_layers):
            sl = layout.slice_of(layer)
            D = cdist(Q[:, sl], X_ref[train][:, sl])
            for i, row in enumerate(np.argsort(D, axis=1)[:, :k]):
                for j in y_ref[train][row]:
                    out[i, j] += 1
        return out

    n_layers = layout.n_layers
    A = [n_layers * k - c[y] for c, y in zip(counts(X_ref[cal]), y_ref[cal])]
    cred = []
    for c in counts(X):
        p = [np.mean([a >= n_layers * k - c[j] for a in A]) for j in range(3)]
        cred.append(max(p))
    return 1 - np.array(cred)


def test_dknn_credibility_brute_force():
    X_ref, y_ref, X, layout = _features(n_ref=90, n=15)
    k, rs = 7, 3
    peer = DkNNCredibilityPeer(layout, n_neighbors=k, calibration_size=0.2,
                               random_state=rs).fit(X_ref, y_ref)
    perm = np.random.RandomState(rs).permutation(90)
    cal, train = np.sort(perm[:18]), np.sort(perm[18:])
    np.testing.assert_allclose(peer.transform(X)[:, 0],
                               _dknn_brute(X_ref, y_ref, X, layout, k, cal, train))
    assert peer.calibration_scores_.shape == (18,)
    with pytest.raises(ValueError, match="calibration rows"):
        DkNNCredibilityPeer(layout, calibration_size=90).fit(X_ref, y_ref)


def test_mahalanobis_peer_is_scorer_column():
    X_ref, y_ref, X, layout = _features()
    peer = MahalanobisPeer(layout).fit(X_ref, y_ref)
    ref = MahalanobisScorer(layout, layers=[1], class_mean="closest").fit(X_ref, y_ref)
    np.testing.assert_allclose(peer.transform(X), ref.transform(X))
    # and the formula: min over classes with a tied Ledoit-Wolf covariance
    sl = layout.slice_of(1)
    Z = X_ref[:, sl]
    mu = np.array([Z[y_ref == c].mean(axis=0) for c in range(3)])
    P = np.linalg.inv(LedoitWolf(assume_centered=True).fit(Z - mu[y_ref]).covariance_)
    d = np.min([np.einsum("ij,jk,ik->i", X[:, sl] - m, P, X[:, sl] - m) for m in mu], axis=0)
    np.testing.assert_allclose(peer.transform(X)[:, 0], np.sqrt(d), rtol=1e-8)


def test_lid_peer_is_scorer_column():
    lid = pytest.importorskip("sklearn_advdet.features.lid",
                              reason="LIDScorer (helper H2) not in this checkout yet")
    X_ref, y_ref, X, layout = _features()
    peer = LIDPeer(layout)
    ref = lid.LIDScorer(layout, layers=[1], n_neighbors=20).fit(X_ref, y_ref)
    np.testing.assert_allclose(peer.fit(X_ref, y_ref).transform(X), ref.transform(X))


def test_peers_compose_with_threshold_and_logistic():
    rng = np.random.RandomState(0)
    layout = FeatureLayout([4, 3], has_logits=True)
    # authentic: hidden features around (3, 0, 0, 0), confident logits; adversarial:
    # around (0, 3, 0, 0) (another direction too, for the normalised deep kNN), unsure
    home, away = np.eye(4)[0] * 3, np.eye(4)[1] * 3
    X_ref = np.hstack([rng.normal(size=(200, 4)) * 0.5 + home, np.eye(3)[np.arange(200) % 3] * 4])
    y_ref = np.arange(200) % 3
    auth = np.hstack([rng.normal(size=(100, 4)) * 0.5 + home, np.eye(3)[np.arange(100) % 3] * 4])
    adv = np.hstack([rng.normal(size=(100, 4)) * 0.5 + away, rng.normal(size=(100, 3))])
    X, y = np.vstack([auth, adv]), np.r_[np.zeros(100), np.ones(100)]
    for peer in (DeepKNNPeer(layout, layer=0, n_neighbors=10).fit(X_ref),
                 KernelDensityPeer(layout, layer=0).fit(X_ref, y_ref),
                 MaxSoftmaxPeer(layout).fit(X_ref)):
        s = peer.transform(X)
        assert roc_auc_score(y, s[:, 0]) > 0.9
        det = ScoreThresholdDetector(direction="high").fit(s, y)
        assert np.mean(det.predict(s) == y) > 0.8
        from sklearn.frozen import FrozenEstimator
        pipe = make_pipeline(FrozenEstimator(peer), LogisticRegression()).fit(X, y)
        assert roc_auc_score(y, pipe.decision_function(X)) > 0.9
        assert list(peer.get_feature_names_out()) == [peer._score_name]


@parametrize_with_checks([
    MaxSoftmaxPeer("logits"), EnergyPeer("logits", temperature=2.0),
    DeepKNNPeer("single", n_neighbors=3),
    KernelDensityPeer("single", classes="max"),
    DkNNCredibilityPeer("single", n_neighbors=3, calibration_size=0.3, random_state=0),
    MahalanobisPeer("single"),
    LIDPeer("single", n_neighbors=3),
])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.crosscheck
def test_pytorch_ood_same_scores():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision", reason="pytorch-ood imports torchvision (crosscheck extra)")
    pood = pytest.importorskip("pytorch_ood.detector",
                               reason="pytorch-ood not installed (pip install pytorch-ood --no-deps)")
    X_ref, y_ref, X, layout = _features(n_ref=300, n=50)
    sl, ls = layout.slice_of(1), layout.logits_slice
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64)  # noqa: E731
    energy = pood.EnergyBased.score(t(X[:, ls]), t=1.5).numpy()
    np.testing.assert_allclose(EnergyPeer(layout, temperature=1.5).fit(X).transform(X)[:, 0],
                               energy, rtol=1e-10)
    knn = pood.KNN(None, k=50).fit_features(t(X_ref[:, sl]), torch.as_tensor(y_ref))
    np.testing.assert_allclose(DeepKNNPeer(layout).fit(X_ref).transform(X)[:, 0],
                               knn.predict_features(t(X[:, sl])).numpy(), rtol=1e-6)
    # pytorch-ood keeps its means in float32
    t32 = lambda a: t(a).float()  # noqa: E731
    maha = pood.Mahalanobis(None).fit_features(t32(X_ref[:, sl]), torch.as_tensor(y_ref))
    ours = MahalanobisPeer(layout, covariance="empirical").fit(X_ref, y_ref).transform(X)[:, 0]
    # pytorch-ood: 0.5 d^2 with the summed (not averaged) scatter matrix as covariance
    np.testing.assert_allclose(maha.predict_features(t32(X[:, sl])).numpy(),
                               0.5 * ours**2 / len(X_ref), rtol=1e-3)
