"""GuardedModel: the torch conversion equals the numpy pipeline; export, errors."""

import json
import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.naive_bayes import GaussianNB
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_advdet import (AuthenticDensityDetector, ConformalFusionDetector, FeatureLayout, KNNClassScorer, LayerSequenceUnion, LIDScorer,
                            LogitFeatures, MahalanobisScorer, MLPDetector, PivotEmbedder,
                            SequenceLSTMDetector, make_detector)
from sklearn_advdet.experiments._torch_steps import convert_detector
from sklearn_advdet.deep.digits import DIGITS_LAYERS, train_digits_cnn
from sklearn_advdet.deep.extraction import FeatureExtractor
from sklearn_advdet.experiments import guarded as guarded_mod
from sklearn_advdet.experiments.guarded import (REJECT, GuardedModel, export_guarded,
                                                load_guarded)

LAYERS = list(DIGITS_LAYERS)


@pytest.fixture(scope="module")
def digits():
    """A digits CNN, reference features, detection features and their images."""
    torch.manual_seed(0)
    d = load_digits()
    X, y = (d.images / 16).astype(np.float32)[:, None], d.target
    model = train_digits_cnn(X[:600], y[:600], epochs=3, random_state=0)
    fx = FeatureExtractor(model, layers=LAYERS, device="cpu", progress=False)
    ref = fx.extract(X[:400])
    images = torch.from_numpy(X[600:760])
    det = fx.extract(images)
    rng = np.random.RandomState(0)
    # detection labels: rows pushed off by noise are "adversarial" (any fitted
    # pipeline will do for the equality; a learnable signal keeps nets sane)
    y_det = (rng.rand(len(det)) < 0.5).astype(int)
    return dict(model=model, layout=ref.layout, X_ref=ref.X, y_ref=y[:400],
                images=images, X=det.X, y_det=y_det, labels=torch.from_numpy(y[600:760]))


def _frozen(step, d, y=True):
    return FrozenEstimator(step.fit(d["X_ref"], d["y_ref"] if y else None))


def _pipelines(d):
    lay = d["layout"]
    return {
        "pivots-centroid-euclidean-mlp": make_pipeline(
            _frozen(PivotEmbedder(lay), d), MLPDetector(max_epochs=3, random_state=0)),
        "pivots-medoid-cosine-lstm": make_pipeline(
            _frozen(PivotEmbedder(lay, pivots="medoid", metric="cosine"), d),
            SequenceLSTMDetector(n_steps=4, max_epochs=2, random_state=0)),
        "pivots-cosine-similarity-logistic": make_pipeline(
            _frozen(PivotEmbedder(lay, metric="cosine_similarity", layers=[1, 3]), d),
            StandardScaler(), LogisticRegression()),
        "logit-features": make_pipeline(LogitFeatures(lay, temperature=2.0), StandardScaler(),
                                        LogisticRegression()),
        "mahalanobis-predicted-log": make_pipeline(
            _frozen(MahalanobisScorer(lay, log=True), d), StandardScaler(), LogisticRegression()),
        "mahalanobis-closest-oas": make_pipeline(
            _frozen(MahalanobisScorer(lay, class_mean="closest", covariance="oas"), d),
            StandardScaler(), LogisticRegression()),
        "knn-uniform": make_pipeline(
            _frozen(KNNClassScorer(lay, layers="all", n_neighbors=40), d), LogisticRegression()),
        "knn-rank-l2": make_pipeline(
            _frozen(KNNClassScorer(lay, layers="all", n_neighbors=25, weights="rank",
                                   preprocessing="l2"), d), LogisticRegression()),
        "knn-distance-pca": make_pipeline(
            _frozen(KNNClassScorer(lay, layers=[0, 3], n_neighbors=15, weights="distance",
                                   preprocessing="pca", n_components=8, random_state=0), d),
            LogisticRegression()),
        "lid": make_pipeline(_frozen(LIDScorer(lay, n_neighbors=10), d, y=False),
                             StandardScaler(), LogisticRegression()),
        "sequence-static-step-lstm": make_pipeline(
            LayerSequenceUnion([("piv", _frozen(PivotEmbedder(lay), d)),
                                ("maha", _frozen(MahalanobisScorer(lay), d)),
                                ("logit", LogitFeatures(lay, features=["margin", "entropy"]))],
                               static=["logit"]),
            SequenceLSTMDetector(n_steps=5, max_epochs=2, random_state=0)),
        "sequence-broadcast-mlp": make_pipeline(
            LayerSequenceUnion([("piv", _frozen(PivotEmbedder(lay), d)),
                                ("knn", _frozen(KNNClassScorer(lay, layers="all",
                                                               n_neighbors=20), d)),
                                ("logit", LogitFeatures(lay, features=["energy"]))],
                               static=["logit"], static_as="broadcast"),
            MLPDetector(max_epochs=2, random_state=0)),
        "make_detector-supervised": make_detector(lay, d["X_ref"], d["y_ref"],
                                                  mode="supervised", random_state=0),
        "make_detector-logistic": make_detector(
            lay, d["X_ref"], d["y_ref"], mode="supervised",
            features=["logit", "mahalanobis", "lid", "knn", "pivots"], classifier="logistic"),
    }


PIPELINE_NAMES = [
    "pivots-centroid-euclidean-mlp", "pivots-medoid-cosine-lstm",
    "pivots-cosine-similarity-logistic", "logit-features", "mahalanobis-predicted-log",
    "mahalanobis-closest-oas", "knn-uniform", "knn-rank-l2", "knn-distance-pca", "lid",
    "sequence-static-step-lstm", "sequence-broadcast-mlp", "make_detector-supervised",
    "make_detector-logistic",
]


@pytest.fixture(scope="module")
def fitted(digits):
    pipes = _pipelines(digits)
    assert sorted(pipes) == sorted(PIPELINE_NAMES)
    return {k: p.fit(digits["X"], digits["y_det"]) for k, p in pipes.items()}


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_p_adv_equals_the_numpy_pipeline(digits, fitted, name):
    pipe = fitted[name]
    guard = GuardedModel(digits["model"], pipe, layers=LAYERS)
    logits, p_adv = guard(digits["images"])
    expected = pipe.predict_proba(digits["X"])[:, 1]
    assert p_adv.dtype == torch.float32 and p_adv.shape == (len(expected),)
    np.testing.assert_allclose(p_adv.detach().numpy(), expected, rtol=0, atol=1e-5)
    # the features the guard builds are those FeatureExtractor builds
    _, X = guard.features(digits["images"])
    np.testing.assert_allclose(X.detach().numpy(), digits["X"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(logits.argmax(1).numpy(),
                                  digits["X"][:, digits["layout"].logits_slice].argmax(1))


def test_gradients_reach_the_input(digits, fitted):
    guard = GuardedModel(digits["model"], fitted["pivots-centroid-euclidean-mlp"], layers=LAYERS)
    x = digits["images"][:8].clone().requires_grad_(True)
    _, p = guard(x)
    (g,) = torch.autograd.grad(p.sum(), x)
    assert torch.isfinite(g).all() and (g.flatten(1).abs().sum(1) > 0).all()
    # the gradient is the derivative: a small step along it raises p_adv
    step = 1e-3 * g / g.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        assert (guard(x + step)[1] > p.detach()).float().mean() >= 0.75


def test_calibrate_and_predict(digits, fitted):
    guard = GuardedModel(digits["model"], fitted["logit-features"], layers=LAYERS)
    with pytest.raises(ValueError, match="calibrate"):
        guard.predict(digits["images"])
    guard.calibrate(digits["images"], target_fpr=0.1)
    with torch.no_grad():
        logits, p = guard(digits["images"])
    t = float(guard.threshold)
    assert (p > t).float().mean() <= 0.1  # at most the target FPR is rejected
    assert (p >= t).float().mean() > 0.1  # and the threshold is the smallest such
    pred = guard.predict(digits["images"])
    np.testing.assert_array_equal(
        pred.numpy(), np.where(p.numpy() > t, REJECT, logits.argmax(1).numpy()))
    with pytest.raises(ValueError, match="target_fpr"):
        guard.calibrate(digits["images"], target_fpr=1.0)


def test_export_and_reload_give_the_same_outputs(digits, fitted, tmp_path, monkeypatch):
    guard = GuardedModel(digits["model"], fitted["pivots-medoid-cosine-lstm"], layers=LAYERS)
    guard.calibrate(digits["images"], target_fpr=0.05)
    export_guarded(guard, tmp_path / "guard", digits["images"][:4])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guard.json", "guard.pt2"]
    info = json.loads((tmp_path / "guard.json").read_text())
    assert info["threshold"] == pytest.approx(float(guard.threshold))
    assert FeatureLayout.from_dict(info["layout"]) == digits["layout"]
    assert info["layers"] == LAYERS
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_guarded(tmp_path / "guard.pt2")
    assert torch.load is spy  # restored after loading
    assert all(c is True for c in calls)  # only tensors were unpickled
    x = digits["images"][:37]  # another batch size than the example
    with torch.no_grad():
        a, b = guard(x), loaded(x)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(guard.predict(x).numpy(), loaded.predict(x).numpy())


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_loading_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "evil": _Evil()}, path)
    with guarded_mod._tensors_only():
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=False)  # forced to weights_only=True
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="sklearn_advdet.guarded/1"):
        load_guarded(tmp_path / "bad")


def test_unsupported_steps_are_named(digits):
    lay = digits["layout"]
    nb = make_pipeline(LogitFeatures(lay), GaussianNB()).fit(digits["X"], digits["y_det"])
    with pytest.raises(TypeError, match="final step GaussianNB"):
        GuardedModel(digits["model"], nb, layers=LAYERS)
    pca = make_pipeline(PCA(3), LogisticRegression()).fit(digits["X"], digits["y_det"])
    with pytest.raises(TypeError, match="cannot convert the step PCA"):
        GuardedModel(digits["model"], pca, layers=LAYERS)
    # a density without a torch form is named with the fix
    knn_density = make_pipeline(
        _frozen(MahalanobisScorer(lay, log=True), digits),
        AuthenticDensityDetector("knn", n_neighbors=5)).fit(digits["X"][digits["y_det"] == 0])
    with pytest.raises(TypeError, match=r"density='knn'.*density='gaussian'"):
        GuardedModel(digits["model"], knn_density, layers=LAYERS)


def test_layout_and_layer_mismatches_are_clear(digits, fitted):
    pipe = fitted["pivots-centroid-euclidean-mlp"]
    with pytest.raises(ValueError, match="fitted on 4 hooked layers"):
        GuardedModel(digits["model"], pipe, layers=LAYERS[:3])
    hooks = r"guarded model hooks \['conv1', 'conv2', 'conv3', 'fc2'\]"
    with pytest.raises(ValueError, match=hooks):
        GuardedModel(digits["model"], pipe, layers=LAYERS[:3] + ["fc2"])
    # a pipeline fitted on another layout: same count, default names, other widths
    lay = digits["layout"]
    other = FeatureLayout([lay.sizes[0], lay.sizes[1], lay.sizes[2], lay.sizes[3] - 28, 10],
                          has_logits=True)
    X_other = np.delete(digits["X"], np.s_[lay.slice_of(3).start:lay.slice_of(3).start + 28], 1)
    y_ref = digits["y_ref"]
    X_ref_other = np.delete(digits["X_ref"],
                            np.s_[lay.slice_of(3).start:lay.slice_of(3).start + 28], 1)
    pipe_other = make_pipeline(FrozenEstimator(PivotEmbedder(other).fit(X_ref_other, y_ref)),
                               StandardScaler(), LogisticRegression()).fit(X_other, digits["y_det"])
    guard = GuardedModel(digits["model"], pipe_other, layers=LAYERS)
    with pytest.raises(ValueError, match="give blocks of sizes"):
        guard(digits["images"][:2])
    # a step whose class table misses classes cannot be converted
    few = digits["y_ref"] < 9
    maha = MahalanobisScorer(lay).fit(digits["X_ref"][few], digits["y_ref"][few])
    X_ok = digits["X_ref"][digits["X_ref"][:, lay.logits_slice].argmax(1) < 9][:80]
    bad = make_pipeline(FrozenEstimator(maha), StandardScaler(), LogisticRegression()).fit(
        X_ok, np.arange(len(X_ok)) % 2)
    with pytest.raises(ValueError, match=r"class\(es\) \[9\]"):
        GuardedModel(digits["model"], bad, layers=LAYERS)


def test_surrogate_keeps_values_and_adds_a_gradient(digits, fitted):
    pipe = fitted["knn-uniform"]
    exact = GuardedModel(digits["model"], pipe, layers=LAYERS)
    soft = GuardedModel(digits["model"], pipe, layers=LAYERS, surrogate=True)
    x = digits["images"][:16]
    with torch.no_grad():
        torch.testing.assert_close(exact(x)[1], soft(x)[1], rtol=0, atol=1e-6)
    xx = x.clone().requires_grad_(True)
    # the exact score is piecewise constant in the features (uniform weights):
    # p_adv has no gradient path to the input at all
    assert not exact(xx)[1].requires_grad
    (grad,) = torch.autograd.grad(soft(xx)[1].sum(), xx)
    assert float(grad.abs().max()) > 0.0 and torch.isfinite(grad).all()


def test_torch_compile_gives_the_same_outputs(digits, fitted):
    """Under torch.compile (its graph capture and autograd tracing, aot_eager: no
    C++ toolchain needed), forward and input gradients are the eager ones."""
    guard = GuardedModel(digits["model"], fitted["pivots-centroid-euclidean-mlp"],
                         layers=LAYERS)
    compiled = torch.compile(guard, backend="aot_eager", dynamic=False)
    x = digits["images"][:16].clone().requires_grad_(True)
    logits, p = guard(x)
    (g,) = torch.autograd.grad(p.sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    c_logits, c_p = compiled(x2)
    (c_g,) = torch.autograd.grad(c_p.sum(), x2)
    torch.testing.assert_close(c_logits, logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(c_p, p, rtol=0, atol=1e-5)
    torch.testing.assert_close(c_g, g, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_gives_the_cpu_outputs(digits, fitted):
    guard = GuardedModel(digits["model"], fitted["make_detector-supervised"], layers=LAYERS)
    x = digits["images"][:32]
    with torch.no_grad():
        cpu = guard(x)
        gpu = guard.to("cuda")(x.to("cuda"))
    guard.to("cpu")
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-4, atol=1e-4)


# ------------------------------------------- conformal heads (hybrid, authentic)
N_FIT = 110  # the conformal detectors are fitted on the first rows, compared on the rest


def _conformal_pipelines(d):
    lay = d["layout"]
    X_ref, y_ref = d["X_ref"], d["y_ref"]
    smooth = ["logit", "mahalanobis"]
    gmm = ConformalFusionDetector(
        LogisticRegression(), AuthenticDensityDetector("gmm", n_components=2, cv=2,
                                                       calibration="cross"),
        target_fpr=0.5, random_state=0)
    return {
        # make_detector's default: boosted trees + Gaussian density on all four families
        "hybrid-default": make_detector(lay, X_ref, y_ref, random_state=0).set_params(
            detector__target_fpr=0.5),  # few authentic rows here: a loose target
        "hybrid-logistic": make_detector(lay, X_ref, y_ref, features=smooth,
                                         classifier="logistic", random_state=0).set_params(
            detector__target_fpr=0.5),
        "hybrid-gmm": make_pipeline(make_detector(lay, X_ref, y_ref, mode="supervised",
                                                  features=smooth)[0], gmm),
        "authentic": make_detector(lay, X_ref, y_ref, mode="authentic", random_state=0
                                   ).set_params(detector__drop_adversarial=True,
                                                detector__target_fpr=0.2),
    }


@pytest.fixture(scope="module")
def conformal(digits):
    X, y = digits["X"][:N_FIT], digits["y_det"][:N_FIT]
    return {k: p.fit(X, y) for k, p in _conformal_pipelines(digits).items()}


@pytest.mark.parametrize("name", ["hybrid-default", "hybrid-logistic", "hybrid-gmm",
                                  "authentic"])
def test_conformal_heads_equal_the_numpy_pipeline(digits, conformal, name):
    pipe = conformal[name]
    guard = GuardedModel(digits["model"], pipe, layers=LAYERS)
    with torch.no_grad():
        _, p_adv = guard(digits["images"][N_FIT:])
    expected = pipe.predict_proba(digits["X"][N_FIT:])[:, 1]
    # conformal p-values: counts of calibration scores, several distinct values here
    assert np.unique(expected).size >= 3
    np.testing.assert_allclose(p_adv.numpy(), expected, rtol=0, atol=1e-5)
    # the guard's decisions are the pipeline's at the detector's own threshold
    # (p_adv > 1 - target_fpr <=> fused p-value < target_fpr, away from ties)
    assert guard.calibrate(digits["images"][:N_FIT], 0.2).threshold.isfinite()


def test_conformal_surrogate_keeps_values_and_follows_the_decision_function(digits,
                                                                            conformal):
    """Surrogate mode: forward values unchanged; backward the gradient of the
    detector's decision_function, checked against numpy central differences."""
    for name in ("hybrid-logistic", "authentic"):
        pipe = conformal[name]
        X = torch.tensor(digits["X"][N_FIT:N_FIT + 6], dtype=torch.float32,
                         requires_grad=True)
        exact, soft = convert_detector(pipe), convert_detector(pipe, surrogate=True)
        z = soft(X)
        torch.testing.assert_close(z.detach(), exact(X).detach(), rtol=0, atol=1e-6)
        (g,) = torch.autograd.grad(z.sum(), X)
        assert not exact(X).requires_grad  # counts alone: no gradient
        x0, h = digits["X"][N_FIT:N_FIT + 6].astype(np.float64), 1e-5
        for j in np.argsort(-np.abs(g.numpy()).sum(0))[:4]:  # the most influential columns
            up, down = x0.copy(), x0.copy()
            up[:, j] += h
            down[:, j] -= h
            numeric = (pipe.decision_function(up) - pipe.decision_function(down)) / (2 * h)
            np.testing.assert_allclose(g.numpy()[:, j], numeric, rtol=2e-2, atol=1e-3)


def test_hybrid_trees_borrow_the_classifier_surrogate_gradient(digits, conformal):
    pipe = conformal["hybrid-default"]
    Z = pipe[:-1].transform(digits["X"][:N_FIT])
    helper = make_pipeline(StandardScaler(), LogisticRegression(C=0.1)).fit(
        Z, digits["y_det"][:N_FIT])
    exact = GuardedModel(digits["model"], pipe, layers=LAYERS)
    alone = GuardedModel(digits["model"], pipe, layers=LAYERS, surrogate=True)
    helped = GuardedModel(digits["model"], pipe, layers=LAYERS, surrogate=True,
                          classifier_surrogate=helper)
    x = digits["images"][N_FIT:N_FIT + 12]
    with torch.no_grad():
        for g in (alone, helped):
            torch.testing.assert_close(g(x)[1], exact(x)[1], rtol=0, atol=1e-6)
    grads = []
    for g in (alone, helped):
        xx = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(g.scores(xx)[1].sum(), xx)
        assert torch.isfinite(grad).all()
        grads.append(grad.flatten(1))
    # rows whose larger exceedance is the classifier's get a gradient only with the
    # helper (the trees have none); the density's rows get the same one either way
    Zt = torch.tensor(pipe[:-1].transform(digits["X"][N_FIT:N_FIT + 12]))
    fusion = pipe[-1]
    S = np.column_stack([fusion.classifier_.decision_function(Zt.numpy()),
                         -fusion.density_.score_samples(Zt.numpy())])
    by_classifier = ((S - fusion.thresholds_) / fusion.scales_).argmax(1) == 0
    assert 0 < by_classifier.sum() < len(by_classifier)
    assert (grads[0][by_classifier].abs().sum(1) == 0).all()
    assert (grads[1][by_classifier].abs().sum(1) > 0).all()
    torch.testing.assert_close(grads[0][~by_classifier], grads[1][~by_classifier])
    # the helper has nothing to stand in for elsewhere: a clear error, not a silent no-op
    with pytest.raises(ValueError, match="surrogate=False"):
        GuardedModel(digits["model"], pipe, layers=LAYERS, classifier_surrogate=helper)
    with pytest.raises(ValueError, match="last step is LogisticRegression"):
        plain = make_pipeline(StandardScaler(), LogisticRegression()).fit(
            digits["X"][:N_FIT], digits["y_det"][:N_FIT])
        GuardedModel(digits["model"], plain, layers=LAYERS, surrogate=True,
                     classifier_surrogate=helper)


def test_the_default_hybrid_exports_and_reloads(digits, conformal, tmp_path):
    guard = GuardedModel(digits["model"], conformal["hybrid-default"], layers=LAYERS)
    guard.calibrate(digits["images"][:N_FIT], target_fpr=0.2)
    export_guarded(guard, tmp_path / "hybrid", digits["images"][:4])
    loaded = load_guarded(tmp_path / "hybrid.pt2")
    x = digits["images"][N_FIT:]
    with torch.no_grad():
        a, b = guard(x), loaded(x)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(guard.predict(x).numpy(), loaded.predict(x).numpy())


def test_a_score_threshold_head_gives_the_sigmoid_of_its_decision_function(digits):
    """The papers' kNN detector (a kNN class score, thresholded): no predict_proba,
    so p_adv is the sigmoid of decision_function and the guard's decisions are its."""
    from scipy.special import expit

    from sklearn_advdet import ScoreThresholdDetector

    lay = digits["layout"]
    pipe = make_pipeline(_frozen(KNNClassScorer(lay, layers=-1, n_neighbors=30,
                                                weights="rank"), digits),
                         ScoreThresholdDetector(direction="low")).fit(digits["X"],
                                                                      digits["y_det"])
    guard = GuardedModel(digits["model"], pipe, layers=LAYERS)
    with torch.no_grad():
        _, p = guard(digits["images"])
    decision = pipe.decision_function(digits["X"])
    np.testing.assert_allclose(p.numpy(), expit(decision), rtol=0, atol=1e-6)
    guard.threshold.fill_(0.5)  # p_adv > 0.5 <=> decision_function > 0 <=> predict 1
    rejected = guard.predict(digits["images"]).numpy() == REJECT
    # except for scores exactly at the threshold (decision_function = 1 ulp there,
    # whose float32 sigmoid is 0.5): kNN class scores are discrete, so a few are
    away = np.abs(decision) > 1e-6
    assert away.mean() > 0.9
    np.testing.assert_array_equal(rejected[away], pipe.predict(digits["X"])[away] == 1)
