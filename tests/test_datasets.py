"""The embedded digits detection set, its cache, and the feature-store loader."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import GroupKFold

from sklearn_advdet import FeatureLayout, datasets, load_digits_detection
from sklearn_advdet.datasets import clear_data_home, get_data_home, load_feature_store
from sklearn_advdet.deep import digits_detection as ddmod

ARRAYS = datasets._ARRAYS
FAMILIES = {"fgsm", "bim", "pgd", "mifgsm", "lbfgs", "cw_l2", "deepfool", "apgd",
            "gaussian_noise", "sign_noise", "iterative_target_class"}


@pytest.fixture(scope="session")
def digits_detection():
    # the cold build, once per session: it lands in the session's data home
    # (tests/conftest.py), where any later load finds it warm
    return load_digits_detection()


# ------------------------------------------------------------ data home
def test_get_data_home(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b"
    assert get_data_home(target) == str(target) and target.is_dir()
    monkeypatch.setenv("SKLEARN_ADVDET_DATA_HOME", str(tmp_path / "env"))
    assert get_data_home() == str(tmp_path / "env") and (tmp_path / "env").is_dir()
    monkeypatch.delenv("SKLEARN_ADVDET_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert get_data_home() == str(tmp_path / "home" / "sklearn_advdet_data")
    assert get_data_home("~/x") == str(tmp_path / "home" / "x")


def test_clear_data_home(tmp_path):
    home = Path(get_data_home(tmp_path / "h"))
    (home / "f.txt").write_text("x")
    clear_data_home(home)
    assert not home.exists()


@pytest.mark.parametrize("rs", [None, 1.5, True, np.random.RandomState(0)])
def test_random_state_must_be_int(rs, tmp_path):
    with pytest.raises(ValueError, match="cache key"):
        load_digits_detection(data_home=tmp_path, random_state=rs)


# ------------------------------------------------------------ contents
def test_contents(digits_detection):
    d = digits_detection
    layout = d.layer_sizes
    assert isinstance(layout, FeatureLayout) and layout.has_logits
    assert d.layer_names == ["conv1", "conv2", "conv3", "fc1"]
    n = d.X.shape[0]
    for k in ("y", "groups", "attack", "eps", "true_class", "pred_class", "target"):
        assert d[k].shape == (n,), k
    for k in ("X_ref", "X", "X_errors"):
        assert d[k].dtype == np.float32 and d[k].shape[1] == layout.n_features
    assert d.X_ref.shape[0] == d.y_ref.shape[0] == d.train_index.size
    assert d.cnn_accuracy >= 0.95
    assert set(d.attack.tolist()) == FAMILIES | {"authentic"}
    configs = {name: params for name, _, params in ddmod.DIGITS_DETECTION_CONFIG["attacks"]}
    assert "L-BFGS" in d.DESCR and f"subsets of {configs['lbfgs']['max_images']}" in d.DESCR
    assert f"and {configs['cw_l2']['max_images']} of them (CW-L2" in d.DESCR
    assert "APGD-CE runs at eps 0.1, 0.2" in d.DESCR
    summary = {(s["attack"], s["eps"]): s for s in d.attack_summary}
    for (attack, eps), s in summary.items():
        rows = (d.attack == attack) & ((d.eps == eps) if eps is not None else True)
        assert s["n_adversarial"] == (d.y[rows] == 1).sum() > 0, (attack, eps)
    # the budgets are such that attacks succeed often but not always
    for family in ("fgsm", "bim", "pgd", "mifgsm", "apgd", "iterative_target_class"):
        rates = [s["n_success"] / s["n_attacked"]
                 for (a, _), s in summary.items() if a == family]
        assert min(rates) < 0.9 and max(rates) > 0.5, (family, rates)
    # the split covers load_digits() exactly once
    both = np.concatenate([d.train_index, d.test_index])
    np.testing.assert_array_equal(np.sort(both), np.arange(1797))


def test_boundary_attacks_and_apgd(digits_detection):
    """CW-L2, DeepFool and APGD-CE are in the set, with their successes recorded."""
    d = digits_detection
    summary = {(s["attack"], s["eps"]): s for s in d.attack_summary}
    configs = {(name, eps): params
               for name, eps, params in ddmod.DIGITS_DETECTION_CONFIG["attacks"]}
    n_correct = int(np.sum(d.attack == "authentic"))
    for name in ("cw_l2", "deepfool"):
        s = summary[(name, None)]
        rows = d.attack == name
        # kept rows: reported successes the extractor confirms (boundary
        # points may round back to the true class and be dropped)
        assert rows.sum() == s["n_adversarial"] == s["n_success"] - s["n_inconsistent"]
        assert np.all(d.y[rows] == 1) and np.all(np.isnan(d.eps[rows]))
        assert np.all(d.pred_class[rows] != d.true_class[rows])
        assert set(d.groups[rows].tolist()) <= set(d.groups[d.attack == "authentic"].tolist())
        # no budget: a minimal-perturbation attack fools (almost) every image
        assert s["n_success"] >= 0.9 * s["n_attacked"], (name, s)
    assert summary[("cw_l2", None)]["n_attacked"] == configs[("cw_l2", None)]["max_images"]
    assert summary[("deepfool", None)]["n_attacked"] == n_correct
    for eps in (0.1, 0.2):
        s, pgd = summary[("apgd", eps)], summary[("pgd", eps)]
        rows = (d.attack == "apgd") & (d.eps == eps)
        assert s["n_attacked"] == n_correct and rows.sum() == s["n_adversarial"] > 0
        # APGD is at least as strong as 10-step PGD at the same budget
        assert s["n_success"] >= pgd["n_success"] - 0.02 * n_correct, (eps, s, pgd)
    assert summary[("apgd", 0.1)]["n_success"] < summary[("apgd", 0.2)]["n_success"]


def test_invariants(digits_detection):
    d = digits_detection
    from sklearn.datasets import load_digits

    target = load_digits().target
    np.testing.assert_array_equal(d.y_ref, target[d.train_index])
    np.testing.assert_array_equal(d.true_class, target[d.groups])
    np.testing.assert_array_equal(d.pred_class, d.X[:, d.layer_sizes.logits_slice].argmax(1))
    auth = d.attack == "authentic"
    assert np.all(d.pred_class[auth] == d.true_class[auth]) and np.all(d.y[auth] == 0)
    assert np.all(np.isnan(d.eps[auth]))
    adv = d.y == 1
    assert np.all(d.pred_class[adv] != d.true_class[adv])
    # rows labelled authentic: clean images and noise that did not fool the CNN
    assert set(d.attack[~adv].tolist()) == {"authentic", "gaussian_noise", "sign_noise"}
    assert np.all(d.pred_class[~adv] == d.true_class[~adv])
    # adversarials come from the correctly classified test images
    assert set(d.groups[~auth].tolist()) <= set(d.groups[auth].tolist())
    # natural errors and authentic images partition the test part
    assert not set(d.errors_groups.tolist()) & set(d.groups[auth].tolist())
    np.testing.assert_array_equal(
        np.sort(np.concatenate([d.errors_groups, d.groups[auth]])), d.test_index)
    assert np.all(d.errors_pred_class != d.errors_true_class)
    np.testing.assert_array_equal(
        d.errors_pred_class, d.X_errors[:, d.layer_sizes.logits_slice].argmax(1))


def test_features_match_a_recomputation(digits_detection):
    """Retrain (deterministic) and extract again: same reference set and errors."""
    from sklearn.datasets import load_digits

    from sklearn_advdet.deep.digits import torch_threads, train_digits_cnn
    from sklearn_advdet.deep.extraction import FeatureExtractor

    d = digits_detection
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    cfg = ddmod.DIGITS_DETECTION_CONFIG
    with torch_threads(1):
        model = train_digits_cnn(images[d.train_index], digits.target[d.train_index],
                                 epochs=cfg["cnn_epochs"], random_state=0)
        fx = FeatureExtractor(model, layers=cfg["layers"], device="cpu", progress=False)
        ref = fx.extract(images[d.train_index])
        test = fx.extract(images[d.test_index])
    assert ref.layout == d.layer_sizes
    np.testing.assert_allclose(d.X_ref, ref.X, rtol=1e-5, atol=1e-6)
    wrong = test.predictions != digits.target[d.test_index]
    np.testing.assert_array_equal(d.errors_groups, d.test_index[wrong])
    np.testing.assert_allclose(d.X_errors, test.X[wrong], rtol=1e-5, atol=1e-6)
    auth = d.attack == "authentic"
    np.testing.assert_allclose(d.X[auth], test.X[~wrong], rtol=1e-5, atol=1e-6)
    assert d.cnn_accuracy == pytest.approx(1 - wrong.mean())


def test_group_kfold_keeps_adversarials_with_their_source(digits_detection):
    d = digits_detection
    for train, test in GroupKFold(n_splits=5).split(d.X, d.y, d.groups):
        assert not set(d.groups[train].tolist()) & set(d.groups[test].tolist())
        # every fold holds authentic and adversarial rows
        assert 0 < d.y[test].mean() < 1


# ------------------------------------------------------------ the cache
def test_warm_load_is_identical_and_does_not_rebuild(digits_detection, monkeypatch):
    import sklearn_advdet.deep.digits as digits_module

    def forbidden(*args, **kwargs):
        raise AssertionError("the warm path must not train or build")

    monkeypatch.setattr(digits_module, "train_digits_cnn", forbidden)
    monkeypatch.setattr(ddmod, "_build", forbidden)
    warm = load_digits_detection()
    for k in ARRAYS:
        np.testing.assert_array_equal(warm[k], digits_detection[k], err_msg=k)
    assert warm.layer_sizes == digits_detection.layer_sizes
    assert warm.DESCR == digits_detection.DESCR
    assert warm.attack_summary == digits_detection.attack_summary


def test_warm_load_does_not_import_torch(digits_detection):
    code = (
        "import sys, numpy as np\n"
        "from sklearn_advdet import load_digits_detection\n"
        "d = load_digits_detection(build_if_missing=False)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(d.X.shape[0], float(np.float64(d.X.sum(dtype=np.float64))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ), timeout=300)
    assert out.returncode == 0, out.stderr
    n, total = out.stdout.split()
    assert int(n) == digits_detection.X.shape[0]
    assert float(total) == float(digits_detection.X.sum(dtype=np.float64))


def _fake_build(random_state, progress):
    """A tiny stand-in for the real build (same keys, no torch)."""
    rng = np.random.default_rng(random_state)
    layout = FeatureLayout([3, 2], names=["a", "logits"], has_logits=True)
    arrays = {
        "X_ref": rng.random((6, 5), dtype=np.float32), "y_ref": np.arange(6) % 2,
        "X": rng.random((4, 5), dtype=np.float32), "y": np.array([0, 0, 1, 1]),
        "groups": np.array([0, 1, 0, 1]),
        "attack": np.array(["authentic", "authentic", "fgsm", "fgsm"]),
        "eps": np.array([np.nan, np.nan, 0.1, 0.1]),
        "true_class": np.array([0, 1, 0, 1]), "pred_class": np.array([0, 1, 1, 0]),
        "target": np.full(4, -1), "X_errors": rng.random((1, 5), dtype=np.float32),
        "errors_groups": np.array([2]), "errors_true_class": np.array([1]),
        "errors_pred_class": np.array([0]), "train_index": np.arange(6),
        "test_index": np.arange(3),
    }
    meta = {"version": 1, "random_state": random_state, "config": {},
            "layout": layout.to_dict(), "cnn_accuracy": 0.5, "attack_summary": [],
            "DESCR": "fake"}
    return arrays, meta


def _cache_dirs(home):
    root = Path(home) / "digits_detection"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_interrupted_build_leaves_no_complete_cache(tmp_path, monkeypatch):
    home = tmp_path / "home"
    real_save = datasets._save_array
    saved = []

    def failing_save(path, array):
        if len(saved) == 3:
            raise RuntimeError("injected failure while writing")
        saved.append(path)
        real_save(path, array)

    monkeypatch.setattr(ddmod, "_build", _fake_build)
    monkeypatch.setattr(datasets, "_save_array", failing_save)
    with pytest.raises(RuntimeError, match="injected"):
        load_digits_detection(data_home=home)
    assert len(saved) == 3 and all(Path(p).parent.name.startswith(".tmp-") for p in saved)
    # the half-written folder is gone, nothing looks complete
    assert _cache_dirs(home) == []
    with pytest.raises(OSError, match="not cached"):
        load_digits_detection(data_home=home, build_if_missing=False)

    # a process killed hard (no clean-up) leaves only a temporary folder,
    # which is never taken for a cache
    monkeypatch.setattr(ddmod.shutil, "rmtree", lambda *a, **k: None)
    saved.clear()
    with pytest.raises(RuntimeError, match="injected"):
        load_digits_detection(data_home=home)
    monkeypatch.undo()
    leftovers = _cache_dirs(home)
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-")
    with pytest.raises(OSError, match="not cached"):
        load_digits_detection(data_home=home, build_if_missing=False)

    # the next (successful) build is complete and loads what it wrote
    monkeypatch.setattr(ddmod, "_build", _fake_build)
    data = load_digits_detection(data_home=home)
    expected, _ = _fake_build(0, False)
    for k in ARRAYS:
        np.testing.assert_array_equal(data[k], expected[k], err_msg=k)
    complete = [n for n in _cache_dirs(home) if not n.startswith(".tmp-")]
    assert len(complete) == 1 and complete[0].startswith(f"v{ddmod._CACHE_VERSION}-rs0-")
    meta = json.loads((Path(home) / "digits_detection" / complete[0] / "meta.json").read_text())
    assert meta["complete"] is True


def test_exception_during_build_writes_nothing(tmp_path, monkeypatch):
    def failing_build(random_state, progress):
        raise RuntimeError("injected failure while building")

    monkeypatch.setattr(ddmod, "_build", failing_build)
    with pytest.raises(RuntimeError, match="injected"):
        load_digits_detection(data_home=tmp_path)
    assert _cache_dirs(tmp_path) == []


def test_refresh_and_cache_key(tmp_path, monkeypatch):
    calls = []

    def counting_build(random_state, progress):
        calls.append(random_state)
        return _fake_build(random_state, progress)

    monkeypatch.setattr(ddmod, "_build", counting_build)
    first = load_digits_detection(data_home=tmp_path)
    load_digits_detection(data_home=tmp_path)
    assert calls == [0]
    load_digits_detection(data_home=tmp_path, refresh=True)
    assert calls == [0, 0]
    other = load_digits_detection(data_home=tmp_path, random_state=1)
    assert calls == [0, 0, 1]
    assert not np.array_equal(first.X, other.X)
    assert len(_cache_dirs(tmp_path)) == 2
    # a damaged cache is rebuilt rather than half read
    key = ddmod._cache_key(1)
    (tmp_path / "digits_detection" / key / "X.npy").write_bytes(b"garbage")
    load_digits_detection(data_home=tmp_path, random_state=1)
    assert calls == [0, 0, 1, 1]


# ------------------------------------------------------------ feature stores
def test_load_feature_store(tmp_path):
    from sklearn_advdet.deep.store import FeatureStoreWriter, StoreError

    rng = np.random.default_rng(0)
    a, b, logits = rng.random((5, 2)), rng.random((5, 3)), rng.random((5, 4))
    w = FeatureStoreWriter.create(tmp_path / "s", count=5, layer_names=["a", "b"],
                                  layer_sizes=[2, 3], n_classes=4, chunk_size=5,
                                  has_labels=True, metadata={"image_id": np.arange(5)})
    w.write_chunk(0, layers=[a, b], logits=logits, labels=np.array([0, 1, 2, 3, 0]))
    w.close()
    w.finalize()
    data = load_feature_store(tmp_path / "s")
    np.testing.assert_allclose(data.X, np.hstack([a, b, logits]).astype(np.float32))
    assert data.layer_sizes == FeatureLayout([2, 3, 4], names=["a", "b", "logits"],
                                             has_logits=True)
    assert data.layer_names == ["a", "b"]
    np.testing.assert_array_equal(data.predictions, logits.argmax(1))
    np.testing.assert_array_equal(data.labels, [0, 1, 2, 3, 0])
    np.testing.assert_array_equal(data.metadata["image_id"], np.arange(5))
    with pytest.raises(StoreError):
        load_feature_store(tmp_path / "missing")
