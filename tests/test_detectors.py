"""Tests for SequenceLSTMDetector, MLPDetector and balanced_sample_weight."""

import pickle
import re
import subprocess
import sys

import joblib
import numpy as np
import pytest
import sklearn
from sklearn.metrics import make_scorer, roc_auc_score
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

torch = pytest.importorskip("torch")
pytest.importorskip("skorch")

from sklearn_advdet import MLPDetector, SequenceLSTMDetector, balanced_sample_weight  # noqa: E402
from sklearn_advdet._torch_nets import LSTMNet  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # the test machines share few cores: one intra-op thread avoids the
    # spin-wait slowdown of an oversubscribed OpenMP pool
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_trajectories(n, n_steps=5, n_classes=3, noise=0.25, seed=0):
    """Synthetic pivot-distance trajectories (rows of n_steps * n_classes).

    Every step has one "near" class (distance lowered by 0.7).  Authentic
    rows stay near the same class at every step; adversarial rows switch to
    another class at a random step.  Each column is near with probability
    1/n_classes in both classes, so no single column separates them: a
    detector has to compare the steps.
    """
    rng = np.random.RandomState(seed)
    y = rng.randint(2, size=n)
    a = rng.randint(n_classes, size=n)
    b = (a + rng.randint(1, n_classes, size=n)) % n_classes
    switch = rng.randint(1, n_steps, size=n)
    steps = np.arange(n_steps)
    adv_now = (y[:, None] == 1) & (steps >= switch[:, None])
    current = np.where(adv_now, b[:, None], a[:, None])
    X = 1.0 + noise * rng.normal(size=(n, n_steps, n_classes))
    X[np.arange(n)[:, None], steps, current] -= 0.7
    return X.reshape(n, -1), y


def _fast(cls, **params):
    kw = dict(lr=1e-2, batch_size=64, max_epochs=10, random_state=0)
    if cls is SequenceLSTMDetector:
        kw["n_steps"] = 5
        kw["hidden_size"] = 32
    kw.update(params)
    return cls(**kw)


# ------------------------------------------------------------- common checks
_LABELS = (
    "by design y must be 0 (authentic) / 1 (adversarial) so that "
    "decision_function always scores 'adversarial'; this check fits with "
    "other labels ({1, 2}, {2, 3} or strings)"
)


def _expected_failed_checks(estimator):
    failed = {
        name: _LABELS
        for name in (
            "check_estimators_dtypes",
            "check_sample_weights_not_an_array",
            "check_sample_weights_pandas_series",
            "check_sample_weights_shape",
            "check_sample_weights_not_overwritten",
            "check_classifier_data_not_an_array",
            "check_classifiers_classes",
            "check_fit2d_1feature",
        )
    }
    failed["check_sample_weight_equivalence_on_dense_data"] = (
        "sample_weight drives a random sampler with replacement: integer "
        "weights equal repeated rows only in expectation, not exactly"
    )
    # (xfail is not strict: it passes on some machines)
    failed["check_methods_subset_invariance"] = (
        "torch's float32 kernels may round differently for different batch "
        "sizes (relative differences ~1e-7, above the check's rtol=1e-7)"
    )
    return failed


@parametrize_with_checks(
    [
        SequenceLSTMDetector(n_steps=1, hidden_size=16, max_epochs=3, lr=5e-2, batch_size=32),
        MLPDetector(hidden_size=16, max_epochs=3, lr=5e-2, batch_size=32),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_module_imports_without_torch():
    code = (
        "import sys, sklearn_advdet.detectors, sklearn_advdet; "
        "sklearn_advdet.SequenceLSTMDetector(n_steps=3); sklearn_advdet.MLPDetector(); "
        "assert 'torch' not in sys.modules and 'skorch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------- learning
@pytest.mark.parametrize("cls", [SequenceLSTMDetector, MLPDetector])
def test_separable_sequence_task(cls):
    X, y = make_trajectories(800, seed=0)
    X_test, y_test = make_trajectories(400, seed=1)
    # the task design: no single column separates the classes
    col_auc = [roc_auc_score(y_test, X_test[:, j]) for j in range(X.shape[1])]
    assert max(abs(a - 0.5) for a in col_auc) < 0.1
    det = _fast(cls, max_epochs=15).fit(X, y)
    assert roc_auc_score(y_test, det.decision_function(X_test)) > 0.95
    proba = det.predict_proba(X_test)
    assert proba.shape == (400, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(det.predict(X_test), (proba[:, 1] > 0.5).astype(int))
    np.testing.assert_array_equal(det.classes_, [0, 1])


@pytest.mark.parametrize("cls", [SequenceLSTMDetector, MLPDetector])
def test_shuffled_labels_give_chance_auc(cls):
    X, y = make_trajectories(600, seed=0)
    X_test, y_test = make_trajectories(600, seed=1)
    y_shuffled = np.random.RandomState(3).permutation(y)
    det = _fast(cls, max_epochs=8).fit(X, y_shuffled)
    auc = roc_auc_score(y_test, det.decision_function(X_test))
    assert 0.35 < auc < 0.65


def test_lstm_reads_rows_layer_major():
    # LSTMNet must see step l as columns l*C .. l*C+C-1: compare with a
    # plain nn.LSTM run on the explicitly reshaped sequence
    torch.manual_seed(0)
    net = LSTMNet(n_steps=4, n_inputs=3, hidden_size=5).eval()
    X = torch.randn(7, 12)
    seq = torch.stack([X[:, 3 * l : 3 * l + 3] for l in range(4)], dim=1)
    with torch.no_grad():
        out, _ = net.lstm(seq)
        expected = net.out(out[:, -1, :]).squeeze(-1)
        np.testing.assert_allclose(net(X).numpy(), expected.numpy(), rtol=1e-6)


@pytest.mark.parametrize("num_layers, bidirectional", [(2, False), (1, True), (2, True)])
def test_lstm_options(num_layers, bidirectional):
    X, y = make_trajectories(200, seed=0)
    det = _fast(
        SequenceLSTMDetector,
        max_epochs=2,
        num_layers=num_layers,
        bidirectional=bidirectional,
        dropout=0.2,
    ).fit(X, y)
    lstm = det.net_.module_.lstm
    assert lstm.num_layers == num_layers and lstm.bidirectional == bidirectional
    assert det.net_.module_.out.in_features == 32 * (2 if bidirectional else 1)
    assert (det.n_steps_, det.step_size_) == (5, 3)
    assert det.decision_function(X).shape == (200,)


def test_defaults_follow_the_paper():
    for det in (SequenceLSTMDetector(n_steps=3), MLPDetector()):
        p = det.get_params()
        assert (p["hidden_size"], p["lr"], p["batch_size"], p["max_epochs"]) == (
            100,
            3e-4,
            128,
            100,
        )
        assert p["dropout"] == 0.0 and p["validation_fraction"] is None
    X, y = make_trajectories(100, seed=0)
    det = SequenceLSTMDetector(n_steps=5, max_epochs=1, random_state=0).fit(X, y)
    assert det.net_.module_.lstm.hidden_size == 100
    assert isinstance(det.net_.optimizer_, torch.optim.Adam)
    assert det.net_.optimizer_.param_groups[0]["lr"] == 3e-4
    # standardisation fitted on the training rows
    np.testing.assert_allclose(det.mean_, X.mean(axis=0))
    np.testing.assert_allclose(det.scale_, X.std(axis=0))


# ------------------------------------------------------------ sample weights
def test_balanced_sample_weight_hand_worked():
    y = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    # authentic rows' attack names are ignored, whatever they say
    attack = ["x", "fgsm", "", None, "fgsm", "fgsm", "fgsm", "fgsm", "pgd", "pgd"]
    w = balanced_sample_weight(y, attack)
    # 3 groups (authentic: 4 rows, fgsm: 4, pgd: 2), n = 10:
    # weight = 10 / (3 * group size)
    expected = [10 / 12] * 8 + [10 / 6] * 2
    np.testing.assert_allclose(w, expected)
    assert w.sum() == pytest.approx(10)
    for rows in (slice(0, 4), slice(4, 8), slice(8, 10)):
        assert w[rows].sum() == pytest.approx(10 / 3)


def test_balanced_weighted_auc_is_macro_auc():
    # why the validation AUC weighted with balanced weights is the authors'
    # macro AUC criterion: checked against the metrics module
    from sklearn_advdet.metrics import macro_auc

    rng = np.random.RandomState(0)
    y = rng.randint(2, size=300)
    attack = np.where(y == 1, rng.choice(["a", "b", "c"], size=300, p=[0.6, 0.3, 0.1]), "")
    score = np.round(rng.normal(size=300) + y * rng.normal(size=300), 1)  # with ties
    w = balanced_sample_weight(y, attack)
    assert roc_auc_score(y, score, sample_weight=w) == pytest.approx(
        macro_auc(y, score, attack), abs=1e-12
    )


def test_balanced_sample_weight_only_authentic_and_errors():
    np.testing.assert_allclose(balanced_sample_weight([0, 0, 0], ["a", "b", "c"]), 1.0)
    with pytest.raises(ValueError, match="0 \\(authentic\\) and 1"):
        balanced_sample_weight([0, 2, 1], ["", "a", "b"])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        balanced_sample_weight([0, 1, 1], ["", "a"])


def test_sample_weight_drives_a_weighted_sampler(monkeypatch):
    drawn = []
    created = []

    class RecordingSampler(torch.utils.data.WeightedRandomSampler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self)

        def __iter__(self):
            for i in super().__iter__():
                drawn.append(i)
                yield i

    monkeypatch.setattr(torch.utils.data, "WeightedRandomSampler", RecordingSampler)
    X, y = make_trajectories(200, seed=0)
    w = np.where(np.arange(200) < 100, 1.0, 4.0)
    det = _fast(MLPDetector, max_epochs=20).fit(X, y, sample_weight=w)
    assert len(created) == 1 and created[0].num_samples == 200
    assert created[0].replacement
    counts = np.bincount(drawn, minlength=200)
    assert counts.sum() == 200 * det.n_epochs_ == 4000
    # rows of weight 4 are drawn 4 times as often: expected 800 vs 3200
    assert 700 < counts[:100].sum() < 900
    # the sampler is not kept inside the fitted net
    assert det.net_.iterator_train__sampler is None

    # equal weights mean plain shuffling: no sampler
    created.clear()
    _fast(MLPDetector, max_epochs=1).fit(X, y, sample_weight=np.full(200, 3.0))
    assert created == []


def test_zero_weight_rows_are_never_seen():
    X, y = make_trajectories(300, seed=0)
    rng = np.random.RandomState(1)
    w = rng.uniform(0.5, 2.0, size=300)
    w[::3] = 0.0
    kept = w > 0
    for cls in (SequenceLSTMDetector, MLPDetector):
        full = _fast(cls, max_epochs=3).fit(X, y, sample_weight=w)
        subset = _fast(cls, max_epochs=3).fit(X[kept], y[kept], sample_weight=w[kept])
        np.testing.assert_array_equal(full.predict_proba(X), subset.predict_proba(X))


def test_sample_weight_changes_what_is_learnt():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(600, 4))
    y_clean = (X[:, 0] > 0).astype(int)
    y = y_clean.copy()
    noisy = np.arange(600) % 2 == 1
    y[noisy] = 1 - y[noisy]  # half of the rows have inverted labels
    w = np.where(noisy, 1e-6, 1.0)
    X_test = rng.normal(size=(400, 4))
    y_test = (X_test[:, 0] > 0).astype(int)
    weighted = _fast(MLPDetector, max_epochs=10).fit(X, y, sample_weight=w)
    unweighted = _fast(MLPDetector, max_epochs=10).fit(X, y)
    assert roc_auc_score(y_test, weighted.decision_function(X_test)) > 0.95
    assert roc_auc_score(y_test, unweighted.decision_function(X_test)) < 0.8


# ------------------------------------------------------ determinism, devices
@pytest.mark.parametrize("cls", [SequenceLSTMDetector, MLPDetector])
def test_random_state_makes_fits_reproducible(cls):
    X, y = make_trajectories(200, seed=0)
    w = np.linspace(0.5, 2.0, 200)
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    a = _fast(cls, max_epochs=3, dropout=0.3, validation_fraction=0.25).fit(
        X, y, sample_weight=w
    )
    b = _fast(cls, max_epochs=3, dropout=0.3, validation_fraction=0.25).fit(
        X, y, sample_weight=w
    )
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    np.testing.assert_array_equal(a.validation_indices_, b.validation_indices_)
    c = _fast(cls, max_epochs=3, dropout=0.3, random_state=1).fit(X, y, sample_weight=w)
    assert not np.array_equal(a.predict_proba(X), c.predict_proba(X))
    # neither fitting nor predicting touches the global random states
    assert torch.equal(torch_state, torch.get_rng_state())
    np.testing.assert_array_equal(np_state, np.random.get_state()[1])


def test_device_resolution():
    X, y = make_trajectories(100, seed=0)
    det = _fast(MLPDetector, max_epochs=1, device="auto").fit(X, y)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert det.device_ == expected and det.net_.device == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            _fast(MLPDetector, device="cuda").fit(X, y)
    with pytest.raises(ValueError, match="device must be"):
        _fast(MLPDetector, device="not-a-device").fit(X, y)


def test_verbose(capsys):
    X, y = make_trajectories(100, seed=0)
    _fast(MLPDetector, max_epochs=2, validation_fraction=0.3).fit(X, y)
    assert capsys.readouterr().out == ""
    _fast(MLPDetector, max_epochs=2, verbose=1).fit(X, y)
    out = capsys.readouterr().out
    assert "epoch" in out and "train_loss" in out


# --------------------------------------------------------------- persistence
@pytest.mark.parametrize("cls", [SequenceLSTMDetector, MLPDetector])
def test_pipeline_persists_with_joblib(cls, tmp_path):
    X, y = make_trajectories(200, seed=0)
    pipe = Pipeline(
        [("scale", StandardScaler()), ("det", _fast(cls, max_epochs=2, validation_fraction=0.3))]
    ).fit(X, y)
    path = tmp_path / "pipe.joblib"
    joblib.dump(pipe, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X), pipe.predict_proba(X))
    det = pickle.loads(pickle.dumps(pipe[-1]))
    np.testing.assert_array_equal(det.decision_function(X), pipe[-1].decision_function(X))
    assert det.net_.device == "cpu" or torch.cuda.is_available()
    # the validation rows are not stored in the fitted net
    assert det.net_.train_split is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a CPU-only machine")
def test_gpu_trained_detector_reloads_on_cpu(monkeypatch):
    # A GPU fit pickles its tensors tagged "cuda:0" and records device
    # "cuda".  Write such a pickle (torch's storage tagger patched to say
    # cuda:0) and load it here, where no CUDA device exists: skorch maps the
    # tensors to the CPU with a DeviceWarning, and the probabilities are the
    # same.
    from skorch.exceptions import DeviceWarning

    X, y = make_trajectories(120, seed=0)
    det = _fast(MLPDetector, max_epochs=2).fit(X, y)
    expected = det.predict_proba(X)
    det.net_.device = det.device_ = "cuda"
    registry = list(torch.serialization._package_registry)
    monkeypatch.setattr(
        torch.serialization,
        "_package_registry",
        [(0, lambda storage: "cuda:0", lambda obj, location: None)] + registry,
    )
    blob = pickle.dumps(det)
    monkeypatch.undo()
    assert b"cuda:0" in blob
    with pytest.warns(DeviceWarning) as record:
        loaded = pickle.loads(blob)
    assert all("cpu" in str(w.message) for w in record)
    assert str(loaded.net_.device) == "cpu" and loaded.device_ == "cuda"
    assert all(p.device.type == "cpu" for p in loaded.net_.module_.parameters())
    np.testing.assert_array_equal(loaded.predict_proba(X), expected)


# ----------------------------------------------------------------- bad input
def _fitted_attrs(est):
    return sorted(k for k in vars(est) if k.endswith("_") and not k.startswith("_"))


def _bad_cases():
    X, y = make_trajectories(60, seed=0)  # 15 columns
    X_nan = X.copy()
    X_nan[3, 2] = np.nan
    X_inf = X.copy()
    X_inf[5, 0] = np.inf
    return [
        ("nan", X_nan, y, {}, {}, "NaN"),
        ("inf", X_inf, y, {}, {}, "infinity"),
        ("labels", X, np.where(y == 1, 2, 0), {}, {}, "0 \\(authentic\\) and 1"),
        ("multiclass", X, np.arange(60) % 3, {}, {}, "Only binary classification"),
        ("strings", X, np.where(y == 1, "adv", "auth"), {}, {}, "encode the detection labels"),
        ("single class", X, np.ones(60, dtype=int), {}, {}, "one class only"),
        ("weights zero one class", X, y, {"sample_weight": (y == 1) * 1.0}, {}, "one class only"),
        ("neg weight", X, y, {"sample_weight": -np.ones(60)}, {}, "non-negative"),
        ("weight length", X, y, {"sample_weight": np.ones(59)}, {}, "one weight per row"),
        ("all-zero weights", X, y, {"sample_weight": np.zeros(60)}, {}, "zero everywhere"),
        ("groups length", X, y, {"groups": np.arange(59)}, {}, "inconsistent numbers"),
        ("hidden_size", X, y, {}, {"hidden_size": 0}, "hidden_size must be an integer"),
        ("lr", X, y, {}, {"lr": -1.0}, "lr must be a number"),
        ("dropout", X, y, {}, {"dropout": 1.0}, "dropout must be a number"),
        ("validation_fraction", X, y, {}, {"validation_fraction": 1.5}, "validation_fraction"),
        ("one group", X, y, {"groups": np.zeros(60)}, {"validation_fraction": 0.3}, "2 distinct groups"),
    ]


@pytest.mark.parametrize("cls", [SequenceLSTMDetector, MLPDetector])
@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_clear_error_no_half_fit(cls, case):
    _, X, y, fit_kw, params, match = case
    det = _fast(cls, max_epochs=1, **params)
    with pytest.raises(ValueError, match=match):
        det.fit(X, y, **fit_kw)
    assert _fitted_attrs(det) == []


def test_lstm_shape_errors():
    X, y = make_trajectories(60, seed=0)  # 15 columns
    det = SequenceLSTMDetector(n_steps=4, max_epochs=1)
    with pytest.raises(ValueError, match=re.escape("X has 15 columns, not a multiple of n_steps=4")):
        det.fit(X, y)
    assert _fitted_attrs(det) == []
    det = SequenceLSTMDetector(max_epochs=1)
    with pytest.raises(ValueError, match="n_steps is required"):
        det.fit(X, y)
    assert _fitted_attrs(det) == []


def test_failed_refit_keeps_the_previous_model():
    X, y = make_trajectories(100, seed=0)
    det = _fast(MLPDetector, max_epochs=1).fit(X, y)
    before = det.predict_proba(X)
    attrs = _fitted_attrs(det)
    X_bad = np.hstack([X, X[:, :1]])
    X_bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        det.fit(X_bad, y)
    with pytest.raises(ValueError, match="one class only"):
        det.fit(X[:, :4], np.zeros(100, dtype=int))
    assert det.n_features_in_ == 15 and _fitted_attrs(det) == attrs
    np.testing.assert_array_equal(det.predict_proba(X), before)


# ------------------------------------------------------------ early stopping
def test_early_stopping_split_keeps_groups_apart():
    X, y = make_trajectories(400, seed=0)
    groups = np.arange(400) // 4  # e.g. an image and three adversarial versions
    rng = np.random.RandomState(0)
    y_noise = rng.permutation(y)  # nothing to learn: validation AUC wanders
    det = _fast(
        MLPDetector, max_epochs=40, validation_fraction=0.25, n_iter_no_change=3
    ).fit(X, y_noise, groups=groups)
    tr, va = det.train_indices_, det.validation_indices_
    assert np.intersect1d(groups[tr], groups[va]).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(400))
    assert 0.15 < va.size / 400 < 0.35
    # stopped early and kept the best epoch's weights
    assert det.n_epochs_ < 40
    assert det.best_epoch_ < det.n_epochs_
    assert len(det.validation_scores_) == det.n_epochs_
    assert det.best_validation_score_ == max(det.validation_scores_)
    assert det.best_epoch_ == int(np.argmax(det.validation_scores_)) + 1
    auc_now = roc_auc_score(y_noise[va], det.decision_function(X[va]))
    assert auc_now == pytest.approx(det.best_validation_score_, abs=1e-6)


def test_early_stopping_without_groups_is_stratified():
    X, y = make_trajectories(300, seed=0)
    det = _fast(SequenceLSTMDetector, max_epochs=3, validation_fraction=0.2).fit(X, y)
    va = det.validation_indices_
    assert va.size == 60
    assert abs(y[va].mean() - y.mean()) < 0.02
    # standardisation statistics come from the training part only
    np.testing.assert_allclose(det.mean_, X[det.train_indices_].mean(axis=0))
    # without validation no split is recorded
    det = _fast(SequenceLSTMDetector, max_epochs=1).fit(X, y, groups=np.arange(300))
    assert det.validation_indices_ is None and det.best_epoch_ is None


# --------------------------------------------------- pipeline + grid search
@pytest.mark.parametrize("cls", [SequenceLSTMDetector, MLPDetector])
def test_grid_search_routes_sample_weight(cls):
    X, y = make_trajectories(240, seed=0)
    groups = np.arange(240) // 2
    w = np.where(np.arange(240) % 3 == 0, 3.0, 1.0)
    def pipeline(**params):
        # groups (given to the search for GroupKFold) is not requested by
        # default, so it needs no set_fit_request(groups=False)
        det = _fast(cls, max_epochs=3, **params).set_fit_request(sample_weight=True)
        scale = StandardScaler().set_fit_request(sample_weight=False)
        return Pipeline([("scale", scale), ("det", det)])

    with sklearn.config_context(enable_metadata_routing=True):
        scorer = make_scorer(
            roc_auc_score, response_method="decision_function"
        ).set_score_request(sample_weight=False)
        search = GridSearchCV(
            pipeline(),
            {"det__hidden_size": [8, 16]},
            cv=GroupKFold(n_splits=2),
            scoring=scorer,
        ).fit(X, y, groups=groups, sample_weight=w)
        best = search.best_params_["det__hidden_size"]
        by_hand = pipeline(hidden_size=best).fit(X, y, sample_weight=w)
        unweighted = pipeline(hidden_size=best).fit(X, y)
    requests = search.best_estimator_[-1].get_metadata_routing().fit.requests
    assert requests == {"sample_weight": True, "groups": False}
    assert set(search.cv_results_["param_det__hidden_size"]) == {8, 16}
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    proba = search.best_estimator_.predict_proba(X)
    # the refit received the weights: identical to a weighted fit by hand
    np.testing.assert_array_equal(proba, by_hand.predict_proba(X))
    assert not np.array_equal(proba, unweighted.predict_proba(X))


def test_groups_routed_on_request():
    X, y = make_trajectories(200, seed=0)
    groups = np.arange(200) // 5
    with sklearn.config_context(enable_metadata_routing=True):
        det = _fast(MLPDetector, max_epochs=2, validation_fraction=0.3)
        pipe = Pipeline([("det", det.set_fit_request(groups=True))])
        pipe.fit(X, y, groups=groups)
    fitted = pipe[-1]
    tr, va = fitted.train_indices_, fitted.validation_indices_
    assert np.intersect1d(groups[tr], groups[va]).size == 0


@pytest.mark.parametrize("cls", [SequenceLSTMDetector, MLPDetector])
def test_pandas_inputs_with_detection_labels(cls):
    # what check_sample_weights_pandas_series tests, with y in {0, 1}
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    X = pd.DataFrame(rng.normal(size=(40, 4)))
    y = pd.Series(np.r_[np.zeros(20, int), np.ones(20, int)])
    w = pd.Series(np.r_[np.full(20, 2.0), np.ones(20)])
    kw = {"n_steps": 2} if cls is SequenceLSTMDetector else {}
    det = cls(max_epochs=2, random_state=0, **kw).fit(X, y, sample_weight=w)
    ref = cls(max_epochs=2, random_state=0, **kw).fit(
        X.to_numpy(), y.to_numpy(), sample_weight=w.to_numpy())
    np.testing.assert_array_equal(det.predict_proba(X), ref.predict_proba(X.to_numpy()))
