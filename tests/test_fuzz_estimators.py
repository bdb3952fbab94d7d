"""Fuzz suite of the scikit-learn side's estimators (issue 16, item 6).

Every public estimator is fitted and applied on random reference sets
spoilt in one way at a time -- shapes (0 or 1 row, a width that does not
match the layout, 1-D/3-D), dtypes (float16/32, int, bool, str, object,
complex), NaN/inf, degenerate values (constant, duplicated, huge), labels
out of range or of one class, layouts and ``layers`` that do not match
``X`` -- and must either give a valid result (right shape, finite for
finite inputs) or raise a ValueError/TypeError of its own
(:func:`_fuzz.call`).  The metrics, reports and splitters are fuzzed in
test_fuzz_evaluation.py, the torch side in test_fuzz_torch.py.
"""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _fuzz import FUZZ, call, check_rows, mutate_x, mutate_y, x_mutations, y_mutations
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KernelDensity

from sklearn_advdet import (
    AuthenticDensityDetector,
    ConformalFusionDetector,
    FeatureLayout,
    KNNClassScorer,
    LayerSequenceUnion,
    LIDScorer,
    LogitFeatures,
    MahalanobisScorer,
    MLPDetector,
    PivotEmbedder,
    ScoreThresholdDetector,
    SequenceLSTMDetector,
    make_detector,
)
from sklearn_advdet.evaluation import (
    DeepKNNPeer,
    DkNNCredibilityPeer,
    EnergyPeer,
    KernelDensityPeer,
    LIDPeer,
    MahalanobisPeer,
    MaxSoftmaxPeer,
)

# ------------------------------------------------------------------ the data
LAYOUT_MUTATIONS = ["tuple_hidden", "tuple_all", "wrong_sum", "no_logits", "single",
                    "logits", "None", "negative", "floats", "empty", "text", "dict"]
#: the one part of a case that is spoilt
PARTS = ["nothing", "nothing", "fit_X", "query_X", "y", "layout", "layers"]
#: values given to an estimator's ``layers`` (or ``layer``) parameter
LAYERS = ["all", -1, 0, 1, 7, -9, "layer0", "logits", "nope", [0, 0], [], [1, 0], 1.5,
          None, True, ("layer1",)]


@st.composite
def reference_sets(draw, max_rows=14):
    """A valid reference set (features | logits) with at most one part spoilt."""
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    n_classes = draw(st.integers(2, 4))
    n = draw(st.integers(2, max_rows))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    y = rng.permutation(np.arange(n) % n_classes)
    feats = rng.normal(size=(n, sum(sizes))) + y[:, None]
    logits = 3 * np.eye(n_classes)[y] + rng.normal(scale=0.5, size=(n, n_classes))
    X = np.hstack([feats, logits])
    part = draw(st.sampled_from(PARTS))
    x_how = draw(x_mutations) if part == "fit_X" else "none"
    q_how = draw(x_mutations) if part == "query_X" else "none"
    y_how = draw(y_mutations) if part == "y" else "none"
    X_fit, clean_fit = mutate_x(X, x_how, rng)
    q = rng.normal(size=(draw(st.integers(1, 5)), X.shape[1])) + 1
    X_query, clean_query = mutate_x(q, q_how, rng)
    return SimpleNamespace(
        sizes=sizes, n_classes=n_classes, X=X, y=y, rng=rng, hows=(x_how, q_how, y_how),
        X_fit=X_fit, X_query=X_query, y_fit=mutate_y(y, y_how, n_classes, rng),
        clean=clean_fit and clean_query and y_how == "none",
        layout_how=draw(st.sampled_from(LAYOUT_MUTATIONS)) if part == "layout" else "none",
        layers=draw(st.sampled_from(LAYERS)) if part == "layers" else None,
    )


def make_layout(case):
    """The layout of ``case`` spoilt as ``case.layout_how`` says."""
    sizes, c = list(case.sizes), case.n_classes
    return {
        "none": lambda: FeatureLayout(sizes + [c], has_logits=True),
        "tuple_hidden": lambda: tuple(sizes),
        "tuple_all": lambda: tuple(sizes + [c]),
        "wrong_sum": lambda: FeatureLayout(sizes + [c + 1], has_logits=True),
        "no_logits": lambda: FeatureLayout(sizes),
        "single": lambda: "single",
        "logits": lambda: "logits",
        "None": lambda: None,
        "negative": lambda: tuple(sizes[:-1] + [-1, c]),
        "floats": lambda: tuple(float(s) for s in sizes + [c]),
        "empty": lambda: (),
        "text": lambda: "layer0",
        "dict": lambda: {"sizes": sizes},
    }[case.layout_how]()


# ------------------------------------------------------- the transformers
# name -> (factory(layout), whether fit takes the class labels)
TRANSFORMERS = {
    "PivotEmbedder": (lambda L: PivotEmbedder(L), True),
    "PivotEmbedder-medoid-cosine": (
        lambda L: PivotEmbedder(L, pivots="medoid", metric="cosine"), True),
    "KNNClassScorer": (lambda L: KNNClassScorer(L, layers="all", n_neighbors=3), True),
    "KNNClassScorer-pca-distance": (lambda L: KNNClassScorer(
        L, n_neighbors=4, preprocessing="pca", n_components=2, weights="distance"), True),
    "KNNClassScorer-l2-rank": (lambda L: KNNClassScorer(
        L, n_neighbors=2, preprocessing="l2", weights="rank"), True),
    "LogitFeatures": (lambda L: LogitFeatures(L, temperature=0.5), False),
    "MahalanobisScorer": (lambda L: MahalanobisScorer(L, log=True), True),
    "MahalanobisScorer-closest-empirical": (lambda L: MahalanobisScorer(
        L, class_mean="closest", covariance="empirical"), True),
    "LIDScorer": (lambda L: LIDScorer(L, n_neighbors=3), False),
    "MaxSoftmaxPeer": (lambda L: MaxSoftmaxPeer(L), False),
    "EnergyPeer": (lambda L: EnergyPeer(L), False),
    "DeepKNNPeer": (lambda L: DeepKNNPeer(L, n_neighbors=2), False),
    "KernelDensityPeer": (lambda L: KernelDensityPeer(L, bandwidth=0.5), True),
    "KernelDensityPeer-max": (lambda L: KernelDensityPeer(L, classes="max"), True),
    "DkNNCredibilityPeer": (lambda L: DkNNCredibilityPeer(
        L, n_neighbors=3, calibration_size=0.3, random_state=0), True),
    "MahalanobisPeer": (lambda L: MahalanobisPeer(L), True),
    "LIDPeer": (lambda L: LIDPeer(L, n_neighbors=3), True),
}


def _fit_apply(est, case, with_y):
    """fit, then transform the query rows; checks of a valid result."""
    y = case.y_fit if with_y else None
    fitted, _ = call(est.fit, case.X_fit, y)
    if fitted is None:
        return None
    names, _ = call(est.get_feature_names_out)
    n_out = None if names is None else len(names)
    out, _ = call(est.transform, case.X_query)
    if out is not None:
        check_rows(out, len(case.X_query), n_cols=n_out, finite=case.clean,
                   what=f"{type(est).__name__}.transform")
    for method in ("kneighbors", "score_samples", "p_values", "log_density"):
        if hasattr(est, method):  # the other public methods that take rows
            extra, _ = call(getattr(est, method), case.X_query)
            if extra is not None:
                for a in extra if isinstance(extra, tuple) else (extra,):
                    check_rows(a, len(case.X_query), finite=case.clean,
                               what=f"{type(est).__name__}.{method}")
    return out


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
@FUZZ(80)
@given(case=reference_sets())
def test_transformers_fit_and_transform(name, case):
    factory, with_y = TRANSFORMERS[name]
    est = call(factory, make_layout(case))[0]
    if est is None:
        return
    if case.layers is not None:
        key = "layers" if "layers" in est.get_params() else "layer"
        if key not in est.get_params():
            return
        est.set_params(**{key: case.layers})
    _fit_apply(est, case, with_y)


@FUZZ(50)
@given(case=reference_sets(), as_store=st.booleans())
def test_pivot_embedder_with_a_reference(case, as_store, tmp_path_factory):
    """``reference=`` arrays (spoilt as the case says) or a feature store."""
    reference = (case.X_fit, case.y_fit)
    if as_store:
        from sklearn_advdet.store import FeatureStoreWriter

        X = np.asarray(case.X, dtype=np.float32)
        path = tmp_path_factory.mktemp("fuzz_ref") / "store"
        w = FeatureStoreWriter.create(path, count=len(X), layer_names=["a"],
                                      layer_sizes=[sum(case.sizes)],
                                      n_classes=case.n_classes, chunk_size=len(X),
                                      has_labels=True)
        w.write_chunk(0, layers=[X[:, :sum(case.sizes)]], logits=X[:, sum(case.sizes):],
                      labels=case.y)
        w.finalize()
        reference = str(path)
    est = PivotEmbedder(None if as_store else make_layout(case), reference=reference)
    fitted, _ = call(est.fit, case.X, case.y % 2)
    if fitted is not None:
        out, _ = call(est.transform, case.X_query)
        if out is not None:
            check_rows(out, len(case.X_query), n_cols=len(est.get_feature_names_out()),
                       finite=case.clean)


@FUZZ(50)
@given(case=reference_sets(), static_as=st.sampled_from(["step", "broadcast"]))
def test_layer_sequence_union(case, static_as):
    layout = make_layout(case)
    union = LayerSequenceUnion(
        [("maha", MahalanobisScorer(layout, class_mean="closest")),
         ("piv", PivotEmbedder(layout)),
         ("logit", LogitFeatures(layout, features=["margin"]))],
        static=["logit"], static_as=static_as)
    out = _fit_apply(union, case, True)
    if out is not None:
        assert out.shape[1] == union.n_steps_ * union.n_channels_


# ------------------------------------------------------------ the detectors
def _binary(case):
    """Detection labels 0/1 of the case, spoilt as its y mutation says."""
    y01 = case.y % 2
    return mutate_y(y01, case.hows[2], 2, case.rng)


def _check_classifier(det, X, clean):
    for method in ("predict", "decision_function", "predict_proba"):
        if hasattr(det, method):
            out, _ = call(getattr(det, method), X)
            if out is not None:
                out = check_rows(out, len(X), finite=clean,
                                 what=f"{type(det).__name__}.{method}")
                if method == "predict":
                    assert np.isin(out, det.classes_).all()


DETECTORS = {
    "ScoreThresholdDetector": lambda c: ScoreThresholdDetector(column=c.sizes[0] - 1),
    "ScoreThresholdDetector-fpr": lambda c: ScoreThresholdDetector(
        direction="high", method="fpr", target_fpr=0.2),
    "MLPDetector": lambda c: MLPDetector(hidden_size=3, max_epochs=1, batch_size=8,
                                         random_state=0, device="cpu"),
    "SequenceLSTMDetector": lambda c: SequenceLSTMDetector(
        n_steps=len(c.sizes), hidden_size=2, max_epochs=1, random_state=0, device="cpu"),
    "MLPDetector-validation": lambda c: MLPDetector(
        hidden_size=2, max_epochs=2, validation_fraction=0.3, random_state=0,
        device="cpu"),
}


@pytest.mark.parametrize("name", sorted(DETECTORS))
@FUZZ(50)
@given(case=reference_sets())
def test_detectors_fit_and_predict(name, case):
    det = DETECTORS[name](case)
    X = case.X_fit
    if name == "SequenceLSTMDetector" and np.ndim(X) == 2:
        X = np.asarray(X)[:, : (np.shape(X)[1] // len(case.sizes)) * len(case.sizes)]
    fitted, _ = call(det.fit, X, _binary(case))
    if fitted is not None:
        query = case.X_query
        if name == "SequenceLSTMDetector" and np.ndim(query) == 2:
            query = np.asarray(query)[:, : np.shape(X)[1]]
        _check_classifier(det, query, case.clean)


SAMPLE_WEIGHTS = ["none", "ok", "zeros", "negative", "nan", "short", "2d", "scalar",
                  "one_class", "str"]
GROUPS = ["none", "ok", "short", "one_group", "2d", "nan"]


@FUZZ(50)
@given(case=reference_sets(max_rows=20), sw_how=st.sampled_from(SAMPLE_WEIGHTS),
       groups_how=st.sampled_from(GROUPS))
def test_detector_sample_weight_and_groups(case, sw_how, groups_how):
    n, y01 = len(case.y), case.y % 2
    sw = {"none": None, "ok": np.arange(n) % 3 + 0.5, "zeros": np.zeros(n),
          "negative": -np.ones(n), "nan": np.full(n, np.nan), "short": np.ones(n - 1),
          "2d": np.ones((n, 2)), "scalar": 2.0, "one_class": (y01 == 0) * 1.0,
          "str": np.array(["a"] * n)}[sw_how]
    groups = {"none": None, "ok": np.arange(n) // 2, "short": np.arange(n - 1),
              "one_group": np.zeros(n), "2d": np.zeros((n, 2)),
              "nan": np.full(n, np.nan)}[groups_how]
    det = MLPDetector(hidden_size=2, max_epochs=1, random_state=0, device="cpu",
                      validation_fraction=None if groups is None else 0.3)
    fitted, _ = call(det.fit, case.X, y01, sample_weight=sw, groups=groups)
    if fitted is not None:
        _check_classifier(det, case.X, True)


@FUZZ(80)
@given(case=reference_sets(max_rows=30),
       density=st.sampled_from(["gaussian", "gmm", "knn", "isolation_forest"]),
       calibration=st.sampled_from(["holdout", "cross"]),
       drop=st.booleans())
def test_authentic_density_detector(case, density, calibration, drop):
    det = AuthenticDensityDetector(density, n_components=2, n_neighbors=3, cv=2,
                                   calibration=calibration, calibration_size=0.5,
                                   target_fpr=0.4, drop_adversarial=drop, random_state=0)
    y = _binary(case) if case.hows[2] != "none" else (case.y % 2 if drop else None)
    fitted, _ = call(det.fit, case.X_fit, y)
    if fitted is not None:
        _check_classifier(det, case.X_query, case.clean)
        call(det.score, case.X_query)
        call(det.score_samples, case.X_query)


@FUZZ(40)
@given(case=reference_sets(max_rows=30), target=st.sampled_from([0.05, 0.5, 0.9]))
def test_conformal_fusion_detector(case, target):
    det = ConformalFusionDetector(LogisticRegression(), KernelDensity(), target_fpr=target,
                                  calibration_size=0.5, random_state=0)
    fitted, _ = call(det.fit, case.X_fit, _binary(case))
    if fitted is not None:
        _check_classifier(det, case.X_query, case.clean)
        call(det.p_values, case.X_query)


@FUZZ(30)
@given(case=reference_sets(max_rows=20),
       mode=st.sampled_from(["supervised", "hybrid", "authentic"]),
       features=st.sampled_from([None, ("logit",), ("mahalanobis", "knn"), ("lid",),
                                 ("pivots", "logit"), ("nope",), ()]))
def test_make_detector(case, mode, features):
    det, _ = call(make_detector, make_layout(case), case.X_fit, case.y_fit, mode=mode,
                  features=features, classifier="logistic", random_state=0)
    if det is None:
        return
    y01 = case.y % 2 if mode != "authentic" else np.zeros(len(case.y), dtype=int)
    fitted, _ = call(det.fit, case.X, y01)
    if fitted is not None:
        _check_classifier(det, case.X_query, case.clean)
