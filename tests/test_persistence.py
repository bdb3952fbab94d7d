"""sklearn_advdet.persistence: every shipped estimator round-trips with
identical outputs; crafted files (a pickle inside, an unknown class, a path
outside the archive, truncation) are refused without running anything."""

import importlib
import io
import json
import sys
import zipfile

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import sklearn_advdet
from sklearn_advdet import FeatureLayout, persistence
from sklearn_advdet.persistence import PersistenceError

LAYOUT = FeatureLayout([4, 3, 3], names=["a", "b", "logits"], has_logits=True)


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.normal(size=(n, 10)).astype(np.float32)
    X[:, :4] += y[:, None]
    X[:, 4:7] -= y[:, None]
    X[:, 7:] += 3 * np.eye(3, dtype=np.float32)[y]  # logits: the class wins
    return X, y


X_REF, Y_REF = _data()
X_DET, _ = _data(40, seed=1)
Y_DET = np.arange(40) % 2


def _pivots():
    return sklearn_advdet.PivotEmbedder(layer_sizes=LAYOUT).fit(X_REF, Y_REF)


def _knn():
    return sklearn_advdet.KNNClassScorer(layer_sizes=LAYOUT, n_neighbors=7).fit(X_REF, Y_REF)


def _lstm():
    Z = _pivots().transform(X_DET)
    return sklearn_advdet.SequenceLSTMDetector(n_steps=2, max_epochs=2,
                                               random_state=0).fit(Z, Y_DET), Z


def _mlp():
    Z = _pivots().transform(X_DET)
    return sklearn_advdet.MLPDetector(max_epochs=2, random_state=0).fit(Z, Y_DET), Z


def _threshold():
    S = _knn().transform(X_DET)
    return sklearn_advdet.ScoreThresholdDetector().fit(S, Y_DET), S


def _pipeline():
    knn = _knn()
    pipe = Pipeline([("features", FrozenEstimator(knn)),
                     ("scale", StandardScaler()), ("clf", LogisticRegression())])
    return pipe.fit(X_DET, Y_DET), X_DET


def _hgb():
    Z = _pivots().transform(X_DET)
    return HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(Z, Y_DET), Z


def _authentic(density):
    Z = _pivots().transform(X_DET)
    det = sklearn_advdet.AuthenticDensityDetector(density=density, target_fpr=0.25,
                                                  random_state=0)
    return det.fit(Z[Y_DET == 0]), Z


def _union():
    from sklearn_advdet.features import LayerSequenceUnion, LogitFeatures, MahalanobisScorer

    union = LayerSequenceUnion(
        [("piv", FrozenEstimator(_pivots())),
         ("maha", FrozenEstimator(MahalanobisScorer(LAYOUT).fit(X_REF, Y_REF))),
         ("logit", LogitFeatures(LAYOUT, features=["margin", "entropy"]))],
        static=["logit"])
    return union.fit(X_REF, Y_REF), X_DET


def _recipe():
    # the default (hybrid) mode; a loose target for the 20 authentic rows here
    pipe = sklearn_advdet.make_detector(LAYOUT, X_REF, Y_REF, random_state=0)
    pipe.set_params(detector__target_fpr=0.5)
    return pipe.fit(X_DET, Y_DET), X_DET


def _unfitted_hgb_param():
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression().fit(X_DET, Y_DET)
    est.unfitted_template = HistGradientBoostingClassifier(max_iter=3)  # held, never fitted
    return est, X_DET


def _fusion():
    from sklearn.linear_model import LogisticRegression

    det = sklearn_advdet.ConformalFusionDetector(LogisticRegression(), target_fpr=0.5,
                                                 random_state=0)
    return det.fit(X_DET, Y_DET), X_DET


# name -> builder returning a fitted estimator and the X to compare on
BUILDERS = {
    "PivotEmbedder": lambda: (_pivots(), X_DET),
    "KNNClassScorer": lambda: (_knn(), X_DET),
    "ScoreThresholdDetector": _threshold,
    "SequenceLSTMDetector": _lstm,
    "MLPDetector": _mlp,
    "LayerSequenceUnion": _union,
    "AuthenticDensityDetector": lambda: _authentic("gaussian"),
    "AuthenticDensityDetector(gmm)": lambda: _authentic("gmm"),
    "AuthenticDensityDetector(knn)": lambda: _authentic("knn"),
    "AuthenticDensityDetector(isolation_forest)": lambda: _authentic("isolation_forest"),
    "make_detector": _recipe,
    "ConformalFusionDetector": _fusion,
    "Pipeline+FrozenEstimator+StandardScaler+LogisticRegression": _pipeline,
    "HistGradientBoostingClassifier": _hgb,
    # an unfitted one as a parameter (make_detector's hybrid holds one)
    "HistGradientBoostingClassifier(unfitted)+LogisticRegression": _unfitted_hgb_param,
}
_METHODS = ("predict_proba", "decision_function", "score_samples", "transform", "predict")


def _public_estimators():
    """name -> class of every public estimator of the package (and subpackages)."""
    from sklearn.base import BaseEstimator

    found = {}
    for package in ("sklearn_advdet", "sklearn_advdet.features", "sklearn_advdet.evaluation"):
        module = importlib.import_module(package)
        for name in getattr(module, "_EXPORTS", {}):
            try:
                value = getattr(module, name)
            except (ImportError, AttributeError):  # a module not in this checkout yet
                continue
            if isinstance(value, type) and issubclass(value, BaseEstimator):
                found[name] = value
    return found


def _generic_builder(cls):
    """Default construction on the layout, fitted on the reference (class
    labels) or, for a detector, on the detection rows."""
    def build():
        est = cls(layer_sizes=LAYOUT)
        try:
            return est.fit(X_REF, Y_REF), X_DET
        except ValueError:
            return cls(layer_sizes=LAYOUT).fit(X_DET, Y_DET), X_DET
    return build


def _all_builders():
    builders = dict(BUILDERS)
    covered = {part.split("(")[0] for key in BUILDERS for part in key.split("+")}
    for name, cls in _public_estimators().items():
        if name not in covered:
            builders[name] = _generic_builder(cls)
    return builders


ALL_BUILDERS = _all_builders()


def _outputs(est, X):
    out = {m: getattr(est, m)(X) for m in _METHODS if hasattr(est, m)}
    assert out, type(est)
    return out


@pytest.mark.parametrize("name", sorted(ALL_BUILDERS))
def test_round_trip_gives_identical_outputs(name, tmp_path):
    try:
        est, X = ALL_BUILDERS[name]()
    except ModuleNotFoundError as exc:  # another module of the package still missing
        if "sklearn_advdet" not in str(exc):
            raise
        pytest.skip(f"{exc}: not in this checkout yet")
    path = persistence.save(est, tmp_path / "m.advdet", metadata={"k": [1, 2]})
    assert persistence.is_model_file(path)
    back, meta = persistence.load(path, return_metadata=True)
    assert meta == {"k": [1, 2]}
    assert type(back) is type(est) and back is not est
    assert back.get_params(deep=False).keys() == est.get_params(deep=False).keys()
    for method, expected in _outputs(est, X).items():
        np.testing.assert_array_equal(getattr(back, method)(X), expected, err_msg=method)
    # the same file again: saving the loaded estimator gives the same outputs
    again = persistence.load(persistence.save(back, tmp_path / "m2.advdet"))
    for method, expected in _outputs(est, X).items():
        np.testing.assert_array_equal(getattr(again, method)(X), expected, err_msg=method)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_every_public_estimator_is_covered():
    """Each public estimator is round-tripped above (explicitly or generically)."""
    assert set(_public_estimators()) <= {k.split("(")[0] for k in ALL_BUILDERS} | {
        part for key in BUILDERS for part in key.split("+")}
    assert {"PivotEmbedder", "KNNClassScorer", "SequenceLSTMDetector", "MLPDetector",
            "ScoreThresholdDetector", "LogitFeatures", "MahalanobisScorer"} <= set(
        _public_estimators())


def test_knn_index_is_rebuilt_not_stored(tmp_path):
    knn = _knn()
    path = persistence.save(knn, tmp_path / "k.advdet")
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    n_floats = sum(int(np.prod(a["shape"])) for a in manifest["arrays"].values()
                   if a["dtype"].endswith(("f4", "f8")))
    # the two scored layers' references once each (plus the per-layer pivots-free
    # fitted state), not the screening copies and norms of the index as well
    n_ref_values = X_REF.shape[0] * (4 + 3)
    assert n_floats < 2 * n_ref_values
    back = persistence.load(path)
    dist, idx = back.kneighbors(X_DET)
    ref_dist, ref_idx = knn.kneighbors(X_DET)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(dist, ref_dist)


def test_loaded_net_is_a_working_skorch_net(tmp_path):
    det, Z = _lstm()
    back = persistence.load(persistence.save(det, tmp_path / "d.advdet"))
    assert back.net_.initialized_
    assert len(back.net_.history) == len(det.net_.history) == back.n_epochs_
    for a, b in zip(back.net_.module_.parameters(), det.net_.module_.parameters()):
        assert a.dtype == b.dtype and bool((a == b).all())


def test_loading_consumes_no_global_randomness(tmp_path):
    import torch

    det, _ = _mlp()
    path = persistence.save(det, tmp_path / "d.advdet")
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    persistence.load(path)
    np.testing.assert_array_equal(torch.rand(3), expected)


def test_a_model_saved_on_cuda_loads_on_the_cpu(tmp_path):
    """A file written on a GPU machine (devices 'cuda') loads here on the CPU
    with one DeviceWarning and the same probabilities."""
    import torch
    from skorch.exceptions import DeviceWarning

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    det, Z = _mlp()
    good = persistence.save(det, tmp_path / "d.advdet")
    with zipfile.ZipFile(good) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    text = members[0][1].decode()
    assert text.count('"device": "cpu"') == 1  # the net's
    text = text.replace('"device": "cpu"', '"device": "cuda"')
    text = text.replace('"device_": "cpu"', '"device_": "cuda"')  # the detector's
    text = text.replace('"v": "cpu"', '"v": "cuda:0"')  # (as a torch.device)
    gpu = _write_zip(tmp_path / "gpu.advdet", [("manifest.json", text)] + members[1:])
    with pytest.warns(DeviceWarning) as record:
        back = persistence.load(gpu)
    assert len(record) == 1
    assert str(back.device_) == "cpu" and back.net_.device == "cpu"
    np.testing.assert_array_equal(back.predict_proba(Z), det.predict_proba(Z))


def test_saving_an_unsupported_object_names_it(tmp_path):
    pipe = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression())
    with pytest.raises(PersistenceError, match="FunctionTransformer is not supported"):
        persistence.save(pipe, tmp_path / "x.advdet")
    est = LogisticRegression()
    est.callback_ = lambda: None
    with pytest.raises(PersistenceError, match=r"estimator\.callback_: type builtins\.function"):
        persistence.save(est, tmp_path / "x.advdet")
    with pytest.raises(PersistenceError, match="JSON"):
        persistence.save(LogisticRegression(), tmp_path / "y.advdet",
                         metadata={"x": object()})
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file


# ------------------------------------------------------------ crafted files
def _write_zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _manifest(root, arrays=None):
    return json.dumps({"format": persistence.FORMAT, "format_version": 1,
                       "versions": {}, "metadata": {}, "root": root,
                       "arrays": arrays or {}})


class _MakesFile:
    """Unpickling this creates the file ``target``."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_inside_is_refused_and_not_run(tmp_path):
    target = tmp_path / "pwned"
    buf = io.BytesIO()
    np.save(buf, np.array([_MakesFile(target)], dtype=object), allow_pickle=True)
    assert not target.exists()
    path = _write_zip(tmp_path / "evil.advdet", [
        ("manifest.json", _manifest({"$": "ndarray", "ref": "arrays/0.npy"},
                                    {"arrays/0.npy": {"dtype": "|O", "shape": [1]}})),
        ("arrays/0.npy", buf.getvalue())])
    with pytest.raises(PersistenceError, match="not a plain numpy array"):
        persistence.load(path)
    assert not target.exists()
    # a plain pickle file given as a model
    import pickle

    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_MakesFile(target)))
    assert not persistence.is_model_file(raw)
    with pytest.raises(PersistenceError, match="damaged or truncated|not a sklearn_advdet"):
        persistence.load(raw)
    assert not target.exists()


def test_unknown_class_is_refused_before_import(tmp_path, monkeypatch):
    target = tmp_path / "imported"
    (tmp_path / "advdet_evil_mod.py").write_text(
        f"open({str(target)!r}, 'w').close()\nclass Evil:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for cls in ("advdet_evil_mod.Evil", "os.system", "builtins.eval",
                "sklearn_advdet.deep.models.CifarResNet", "sklearn_advdet.cli.main",
                "sklearn.preprocessing._function_transformer.FunctionTransformer",
                "sklearn_advdet.knn.np", "sklearn_advdet.__builtins__",
                "sklearn_advdet.evaluation.report.DetectionReport",  # not an estimator
                "sklearn_advdet.evaluation.splitters.LeaveOneAttackOut"):
        path = _write_zip(tmp_path / "c.advdet", [("manifest.json", _manifest(
            {"$": "object", "class": cls, "id": 0, "state": {}}))])
        with pytest.raises(PersistenceError):
            persistence.load(path)
    assert not target.exists() and "advdet_evil_mod" not in sys.modules


@pytest.mark.parametrize("state, needle", [
    ({"__class__": None}, "attribute name"),
    ({"a b": 1}, "attribute name"),
    ({"C": {"$": "pickle", "v": "gASV"}}, "unknown value tag"),
    ({"C": {"$": "type", "name": "os.system"}}, "not allowed"),
    ({"C": {"$": "ndarray", "ref": "arrays/7.npy"}}, "missing array"),
])
def test_malformed_state_is_refused(state, needle, tmp_path):
    root = {"$": "object", "class": "sklearn.linear_model._logistic.LogisticRegression",
            "id": 0, "state": state}
    path = _write_zip(tmp_path / "s.advdet", [("manifest.json", _manifest(root))])
    with pytest.raises(PersistenceError, match=needle):
        persistence.load(path)


def test_deeply_nested_manifest_is_refused(tmp_path):
    path = _write_zip(tmp_path / "d.advdet", [("manifest.json", '{"format": ' + "[" * 100000
                                               + "]" * 100000 + "}")])
    with pytest.raises(PersistenceError):
        persistence.load(path)


@pytest.mark.parametrize("member", ["../outside.npy", "/abs/path.npy", "arrays/../../x.npy",
                                    "arrays\\0.npy", "other.bin"])
def test_members_outside_the_layout_are_refused(member, tmp_path):
    path = _write_zip(tmp_path / "t.advdet", [("manifest.json", _manifest(None)),
                                               (member, b"x")])
    with pytest.raises(PersistenceError, match="unexpected member"):
        persistence.load(path)
    assert not (tmp_path.parent / "outside.npy").exists()


def test_compressed_or_edited_files_are_refused(tmp_path):
    good = persistence.save(LogisticRegression().fit(X_DET, Y_DET), tmp_path / "g.advdet")
    with zipfile.ZipFile(good) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    path = _write_zip(tmp_path / "z.advdet", members, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(PersistenceError, match="compressed"):
        persistence.load(path)
    path = _write_zip(tmp_path / "e.advdet", members[:-1])  # an array missing
    with pytest.raises(PersistenceError, match="differ from the manifest"):
        persistence.load(path)
    manifest = json.loads(members[0][1])
    manifest["format_version"] = 99
    path = _write_zip(tmp_path / "v.advdet", [("manifest.json", json.dumps(manifest))]
                      + members[1:])
    with pytest.raises(PersistenceError, match="format version 99"):
        persistence.load(path)


def test_truncated_file_gives_a_clear_error(tmp_path):
    good = persistence.save(_knn(), tmp_path / "g.advdet")
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 60):
        bad = tmp_path / f"cut{cut}.advdet"
        bad.write_bytes(data[:cut])
        assert persistence.is_model_file(bad)
        with pytest.raises(PersistenceError, match="damaged or truncated"):
            persistence.load(bad)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # inside an array: the CRC check fails
    bad = tmp_path / "flip.advdet"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(PersistenceError):
        persistence.load(bad)


def test_tree_links_out_of_range_are_refused(tmp_path):
    """A crafted tree whose node links point outside it never reaches sklearn's
    Cython code (which would read out of bounds)."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=2, random_state=0).fit(X_DET)
    good = persistence.save(forest, tmp_path / "f.advdet")
    with zipfile.ZipFile(good) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    edited = []
    for name, data in members:
        if name.endswith(".npy"):
            array = np.load(io.BytesIO(data), allow_pickle=False)
            if array.dtype.names and "left_child" in array.dtype.names:
                array = array.copy()
                array["left_child"][0] = 10**6
                buf = io.BytesIO()
                np.save(buf, array, allow_pickle=False)
                data = buf.getvalue()
        edited.append((name, data))
    bad = _write_zip(tmp_path / "bad.advdet", edited)
    with pytest.raises(PersistenceError, match="links out of range"):
        persistence.load(bad)


def test_every_kind_of_value_round_trips(tmp_path):
    import torch

    shared = np.arange(6.0).reshape(2, 3)
    rs = np.random.RandomState(3)
    gen = np.random.default_rng(4)
    inner = StandardScaler().fit(X_DET)
    value = {
        "floats": [float("nan"), float("inf"), -float("inf"), 0.1, -0.0],
        "ints": [0, -(2**70), True, None], "complex": 1 - 2j, "tuple": (1, ("a",)),
        "set": {3, 1}, "frozenset": frozenset({"x"}), "slice": slice(1, None, 2),
        (1, 2): "tuple key", 7: "int key",
        "dtype": np.dtype([("a", "<i4"), ("b", "<f8", (2,))]), "dtypes": [np.dtype("f4")],
        "types": [np.float32, np.int64, float, str],
        "scalars": [np.float32(1.5), np.int64(-3), np.bool_(True), np.str_("s")],
        "structured": np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
        "strings": np.array(["a", "bc"], dtype=object), "unicode": np.array(["é", "x"]),
        "objects": np.array([inner, None], dtype=object),
        "same1": shared, "same2": shared, "est1": inner, "est2": inner,
        "rs": rs, "gen": gen, "tensor": torch.arange(4, dtype=torch.float32),
        "device": torch.device("cpu"), "torch_dtype": torch.float16,
    }
    est = LogisticRegression()
    est.extra_ = value
    back = persistence.load(persistence.save(est, tmp_path / "v.advdet")).extra_
    assert set(back) == set(value)
    assert np.isnan(back["floats"][0]) and back["floats"][1:] == value["floats"][1:]
    assert str(back["floats"][-1]) == "-0.0"
    for key in ("ints", "complex", "tuple", "set", "frozenset", "slice", (1, 2), 7, "dtype",
                "dtypes", "types", "device", "torch_dtype"):
        assert back[key] == value[key] and type(back[key]) is type(value[key]), key
    assert [type(v) for v in back["scalars"]] == [type(v) for v in value["scalars"]]
    assert back["scalars"] == value["scalars"]
    for key in ("structured", "unicode", "strings"):
        np.testing.assert_array_equal(back[key], value[key])
        assert back[key].dtype == value[key].dtype, key
    assert back["same1"] is back["same2"] and back["est1"] is back["est2"]
    assert back["objects"][0] is back["est1"] and back["objects"][1] is None
    np.testing.assert_array_equal(back["est1"].transform(X_DET), inner.transform(X_DET))
    assert back["rs"].randint(1000) == rs.randint(1000)
    assert back["gen"].integers(1000) == gen.integers(1000)
    assert torch.equal(back["tensor"], value["tensor"])
