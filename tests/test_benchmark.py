"""The benchmark end to end on the digits set (small): files present, parseable, resumable."""

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_advdet import load_digits_detection
from sklearn_advdet.evaluation import detection_report
from sklearn_advdet.experiments import benchmark

DETECTORS = ["max_softmax", "kernel_density", "knn_score", "logit_mahalanobis_logistic"]
FAMILIES = ["fgsm", "pgd", "iterative_target_class"]


@pytest.fixture(scope="module")
def small():
    d = load_digits_detection()
    images = np.unique(d.groups)[:150]
    m = np.isin(d.groups, images) & ((d.y == 0) | np.isin(d.attack, FAMILIES))
    m &= d.attack != "gaussian_noise"  # keep the authentic rows of the clean images only
    m &= d.attack != "sign_noise"
    data = {k: d[k][m] for k in ("X", "y", "attack", "groups", "eps")}
    data.update(X_ref=d.X_ref, y_ref=d.y_ref, layout=d.layer_sizes, X_errors=d.X_errors)
    return data


def test_end_to_end(small, tmp_path):
    res = benchmark.run_benchmark_on_detection_set(small, tmp_path, detectors=DETECTORS,
                                                   n_bootstrap=50)
    md = (tmp_path / "results.md").read_text()
    doc = json.loads((tmp_path / "results.json").read_text())
    for section in ("## Known attacks", "## Unseen attacks", "## Leave one attack out",
                    "## Cross-epsilon", "## Attack transfer"):
        assert section in md
    for det in DETECTORS:
        assert f"| {det} |" in md
        assert (tmp_path / "figures" / f"roc_{det}.png").stat().st_size > 1000
        assert (tmp_path / "figures" / f"transfer_{det}.png").read_bytes()[:4] == b"\x89PNG"
    results = doc["results"]
    assert set(results) == {"known", "unseen", "leave_one_attack_out", "cross_epsilon",
                            "transfer", "natural_errors"}
    assert "## Summary: macro ROC AUC" in md and "## Natural errors" in md
    # unseen: trained on fgsm + pgd together, tested on the one other family
    assert list(results["unseen"]["knn_score"]["held_out"]) == ["iterative_target_class"]
    # the transfer matrix is the full families x families grid
    t = results["transfer"]["knn_score"]
    assert t["train"] == t["test"] and sorted(t["train"]) == sorted(FAMILIES)
    assert np.array(t["auc"]).shape == (3, 3)
    loao = results["leave_one_attack_out"]["logit_mahalanobis_logistic"]
    assert set(loao["held_out"]) == set(FAMILIES)
    assert loao["macro_auc"] == pytest.approx(
        np.mean([c["auc"]["value"] for c in loao["held_out"].values()]))
    assert loao["macro"]["low"] <= loao["macro_auc"] <= loao["macro"]["high"]
    # the known cell equals a detection report computed by hand on the same split
    from sklearn.model_selection import GroupShuffleSplit

    X, y, a, g = (np.asarray(small[k]) for k in ("X", "y", "attack", "groups"))
    train, test = next(GroupShuffleSplit(1, test_size=0.3, random_state=0).split(X, y, g))
    from sklearn_advdet.evaluation import MaxSoftmaxPeer

    s = MaxSoftmaxPeer(small["layout"]).fit(X).transform(X[test])[:, 0]
    rep = detection_report(y[test], s, a[test], g[test], n_bootstrap=0)
    known = results["known"]["max_softmax"]["rows"]
    for fam in FAMILIES:
        assert known[fam]["auc"]["value"] == pytest.approx(rep.value(fam), abs=1e-9)
    assert res["paths"][0].endswith("results.md")


def test_natural_errors_and_the_authentic_detectors_threshold(small, tmp_path):
    """Natural errors flagged and the FPR the authentic-only default reaches,
    against the same detectors fitted and applied by hand on the known split."""
    from sklearn.model_selection import GroupShuffleSplit

    from sklearn_advdet import make_detector
    from sklearn_advdet.evaluation import MaxSoftmaxPeer

    res = benchmark.run_benchmark_on_detection_set(
        small, tmp_path, detectors=["max_softmax", "default_authentic"], protocols=["known"],
        n_bootstrap=0)
    nat = res["results"]["natural_errors"]
    X, y, g = (np.asarray(small[k]) for k in ("X", "y", "groups"))
    E = small["X_errors"]
    train, test = next(GroupShuffleSplit(1, test_size=0.3, random_state=0).split(X, y, g))
    auth = test[y[test] == 0]
    peer = MaxSoftmaxPeer(small["layout"]).fit(X)
    thr = np.quantile(peer.transform(X[auth])[:, 0], 0.95, method="higher")
    assert nat["max_softmax"]["n_errors"] == len(E) > 0
    assert nat["max_softmax"]["errors_flagged_at_5pct_fpr"] == pytest.approx(
        np.mean(peer.transform(E)[:, 0] > thr))
    assert "realised_fpr" not in nat["max_softmax"]
    det = make_detector(small["layout"], small["X_ref"], small["y_ref"], mode="authentic",
                        random_state=0)
    det.fit(X[train][y[train] == 0])
    own = nat["default_authentic"]
    assert own["target_fpr"] == 0.05 and own["n_authentic_test"] == len(auth)
    assert own["realised_fpr"] == pytest.approx(np.mean(det.predict(X[auth])))
    assert own["errors_flagged_at_own_threshold"] == pytest.approx(np.mean(det.predict(E)))
    md = (tmp_path / "results.md").read_text()
    assert f"{own['realised_fpr']:.3f} of {len(auth)} (0.05)" in md


def test_resume_and_cache_guard(small, tmp_path):
    first = benchmark.run_benchmark_on_detection_set(
        small, tmp_path, detectors=["max_softmax", "logit_mahalanobis_logistic"],
        protocols=["known", "transfer"], n_bootstrap=20)
    cells = sorted(p.relative_to(tmp_path) for p in (tmp_path / "cache").rglob("*.npz"))
    features = [p for p in cells if p.parts[1] == "features"]
    # the frozen reference steps ran once per detector, the cells once per split
    assert sorted(p.name for p in features) == ["logit_mahalanobis_logistic.npz",
                                                "max_softmax.npz"]
    assert len(cells) - len(features) == 2 * (1 + 9)
    stamp = {p: (tmp_path / p).stat().st_mtime_ns for p in cells}
    # resumed with another n_jobs (it changes no score): the cells are reused, and
    # the reports, now on two joblib workers, are the same
    again = benchmark.run_benchmark_on_detection_set(
        small, tmp_path, detectors=["max_softmax", "logit_mahalanobis_logistic"],
        protocols=["known", "transfer"], n_bootstrap=20, n_jobs=2)
    assert {p: (tmp_path / p).stat().st_mtime_ns for p in cells} == stamp  # nothing refitted
    assert again["results"] == first["results"]
    # one more detector later: the finished detectors' cells are reused as they are
    more = benchmark.run_benchmark_on_detection_set(
        small, tmp_path, detectors=["max_softmax", "logit_mahalanobis_logistic", "energy"],
        protocols=["known", "transfer"], n_bootstrap=20)
    assert {p: (tmp_path / p).stat().st_mtime_ns for p in cells} == stamp
    assert more["results"]["known"]["max_softmax"] == first["results"]["known"]["max_softmax"]
    assert (tmp_path / "cache" / "known" / "energy").is_dir()
    other = dict(small, y=small["y"].copy())
    other["X"] = small["X"] + 1.0
    with pytest.raises(ValueError, match="another data set or other settings"):
        benchmark.run_benchmark_on_detection_set(
            other, tmp_path, detectors=["max_softmax", "logit_mahalanobis_logistic"],
            protocols=["known", "transfer"], n_bootstrap=20)


def test_bad_arguments(small, tmp_path):
    with pytest.raises(ValueError, match="unknown detector"):
        benchmark.run_benchmark_on_detection_set(small, tmp_path, detectors=["nope"])
    with pytest.raises(ValueError, match="unknown protocol"):
        benchmark.run_benchmark_on_detection_set(small, tmp_path, detectors=["energy"],
                                                 protocols=["unknown-protocol"])
    with pytest.raises(ValueError, match="lacks"):
        benchmark.run_benchmark_on_detection_set({"X": small["X"]}, tmp_path)
    with pytest.raises(ValueError, match="depth="):
        benchmark.run_benchmark(out_dir=tmp_path)


def test_run_benchmark_with_a_torch_model(tmp_path):
    """The torch path: attack a tiny CNN, build the set once (resumable stores), benchmark."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    rng = np.random.RandomState(0)

    def images(n):
        y = rng.randint(3, size=n)
        x = rng.rand(n, 1, 8, 8).astype(np.float32) * 0.3
        for c in range(3):
            x[y == c, 0, 2 * c : 2 * c + 2, :] += 0.6
        return np.clip(x, 0, 1), y

    X_ref, y_ref = images(120)
    X_test, y_test = images(60)
    def trained(net, steps):
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(torch.from_numpy(X_ref)),
                                              torch.from_numpy(y_ref)).backward()
            opt.step()
        return net.eval()

    model = trained(torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(256, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)), 100)
    kwargs = dict(out_dir=tmp_path, attacks=[("fgsm", [0.3, 0.5]), ("pgd", [0.3])],
                  layers=["1", "4"], detectors=["max_softmax", "logit_mahalanobis_logistic"],
                  protocols=["known", "leave_one_attack_out"], n_bootstrap=20, device="cpu")
    res = benchmark.run_benchmark(model, X_ref, y_ref, X_test, y_test, **kwargs)
    assert (tmp_path / "detection_set" / "reference").is_dir()
    held = res["results"]["leave_one_attack_out"]["max_softmax"]["held_out"]
    assert set(held) == {"fgsm", "pgd"}
    again = benchmark.run_benchmark(model, X_ref, y_ref, X_test, y_test, **kwargs)
    assert again["results"] == res["results"]
    # transfer attacks: PGD crafted on a second network, its rows a family of their own
    source = trained(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), 200)
    t_out = tmp_path / "transfer"
    res = benchmark.run_benchmark(model, X_ref, y_ref, X_test, y_test,
                                  **dict(kwargs, out_dir=t_out), source_model=source,
                                  source_name="linear", transfer_attacks=[("pgd", [0.5])])
    held = res["results"]["leave_one_attack_out"]["max_softmax"]["held_out"]
    assert set(held) == {"fgsm", "pgd", "pgd from linear"}
    assert (t_out / "detection_set_from_linear" / "attacks").is_dir()
    # its rows: the source's PGD images that fool the model, features extracted by it
    from sklearn_advdet.deep.attack_sets import build_detection_set

    direct = build_detection_set(model, X_ref, y_ref, X_test, y_test, attacks=[("pgd", [0.5])],
                                 layers=["1", "4"], device="cpu", random_state=0,
                                 source_model=source)
    assert held["pgd from linear"]["n_adv"] <= int(direct.y.sum())
    assert int(direct.y.sum()) > 0


@pytest.mark.parametrize("mode", ["supervised", "authentic"])
def test_default_detectors_features_are_applied_once(small, mode):
    """make_detector's whole feature union is frozen: the benchmark transforms all
    rows once and refits only the last step per split (the kNN/LID features of
    50,000 references were recomputed in every split before)."""
    from sklearn_advdet import make_detector
    from sklearn_advdet.experiments._benchmark_protocols import split_frozen

    det = make_detector(small["layout"], small["X_ref"], small["y_ref"], mode=mode,
                        features=["logit", "mahalanobis"])
    prefix, rest = split_frozen(det)
    assert prefix is not None and len(prefix.steps) == 1
    assert type(rest).__name__ in ("HistGradientBoostingClassifier",
                                   "AuthenticDensityDetector")
    X = small["X"][:50]
    np.testing.assert_array_equal(prefix.transform(X), det[:-1].transform(X))


_FITS = []


class _CountingLogistic(LogisticRegression):
    def fit(self, X, y, sample_weight=None):
        _FITS.append(len(y))
        return super().fit(X, y, sample_weight=sample_weight)


def _counting():
    return make_pipeline(StandardScaler(), _CountingLogistic(max_iter=2000))


def test_cells_that_train_on_the_same_rows_share_one_fit(small, tmp_path):
    """The transfer matrix fits a detector once per training family (3), not once
    per cell (9), and every cell's scores equal those of its own fresh fit."""
    from sklearn.utils import Bunch

    from sklearn_advdet.experiments._benchmark_protocols import protocol_splits, run_cells

    data = Bunch(**small)
    splits = protocol_splits("transfer", data, test_size=0.3, random_state=0)
    assert len(splits) == 9
    _FITS.clear()
    cells, _ = run_cells("transfer", splits, {"lr": _counting()}, data, tmp_path)
    assert len(_FITS) == 3
    for (tr_name, te_name, train, test), (a, b, test_idx, scores) in zip(splits, cells["lr"]):
        assert (tr_name, te_name) == (a, b)
        np.testing.assert_array_equal(test, test_idx)
        fresh = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        fresh.fit(data.X[train], data.y[train])
        np.testing.assert_allclose(scores, fresh.decision_function(data.X[test]), rtol=1e-10)
    # resumed with one cell lost: one refit of that cell's training side only
    lost = tmp_path / "transfer" / "lr" / f"{splits[4][0]}__{splits[4][1]}.npz"
    lost.unlink()
    _FITS.clear()
    again, _ = run_cells("transfer", splits, {"lr": _counting()}, data, tmp_path)
    assert len(_FITS) == 1
    np.testing.assert_array_equal(again["lr"][4][3], cells["lr"][4][3])


def test_detectors_with_equal_frozen_steps_share_their_features(tmp_path, caplog):
    """make_detector's hybrid and supervised modes have the same feature union: the
    benchmark transforms the rows once for both; the authentic mode's differ."""
    caplog.set_level("INFO", logger="sklearn_advdet.benchmark")
    d = load_digits_detection()  # the hybrid's calibration needs more images than `small`
    m = np.isin(d.groups, np.unique(d.groups)[:500]) & ((d.y == 0) | np.isin(d.attack, FAMILIES))
    m &= ~np.isin(d.attack, ["gaussian_noise", "sign_noise"])
    data = {k: d[k][m] for k in ("X", "y", "attack", "groups", "eps")}
    data.update(X_ref=d.X_ref, y_ref=d.y_ref, layout=d.layer_sizes)
    names = ["default_hybrid", "default_supervised", "default_authentic"]
    benchmark.run_benchmark_on_detection_set(data, tmp_path, detectors=names,
                                             protocols=["known"], n_bootstrap=10)
    shared = [r.getMessage() for r in caplog.records if "features shared" in r.getMessage()]
    assert shared == ["default_supervised: features shared with an equal detector's "
                      "frozen steps"]
    files = {n: np.load(tmp_path / "cache" / "features" / f"{n}.npz") for n in names}
    assert str(files["default_hybrid"]["key"]) == str(files["default_supervised"]["key"])
    assert str(files["default_authentic"]["key"]) != str(files["default_hybrid"]["key"])
    np.testing.assert_array_equal(files["default_hybrid"]["Z"], files["default_supervised"]["Z"])


def test_a_cache_fingerprinted_with_n_jobs_is_still_accepted(small, tmp_path):
    """A cache written while n_jobs was in the fingerprint resumes and is migrated
    (then any n_jobs resumes it); other data is still refused."""
    from sklearn.utils import Bunch

    from sklearn_advdet.experiments.benchmark import _fingerprint

    legacy = _fingerprint(Bunch(**small), {"test_size": 0.3, "random_state": 0,
                                           "max_epochs": 30, "n_jobs": None})
    manifest = tmp_path / "cache" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"fingerprint": legacy}))
    kw = dict(detectors=["max_softmax"], protocols=["known"], n_bootstrap=10)
    benchmark.run_benchmark_on_detection_set(small, tmp_path, **kw)
    migrated = json.loads(manifest.read_text())
    assert migrated["fingerprint"] != legacy
    # the reference set, not recorded by such a cache, is added on the way
    assert migrated["reference"] == benchmark._reference_digest(small)
    benchmark.run_benchmark_on_detection_set(small, tmp_path, n_jobs=1, **kw)
    other = dict(small, X=small["X"] + 1.0)
    with pytest.raises(ValueError, match="another data set or other settings"):
        benchmark.run_benchmark_on_detection_set(other, tmp_path, **kw)


def test_a_cache_of_another_reference_set_is_refused(small, tmp_path):
    """The cells' scores depend on the reference set (kNN, LID, Mahalanobis fitted on
    it): the same detection rows with another reference set must not reuse them."""
    kw = dict(detectors=["knn_score"], protocols=["known"], n_bootstrap=10)
    first = benchmark.run_benchmark_on_detection_set(small, tmp_path, **kw)
    keep = np.arange(len(small["y_ref"])) % 2 == 0  # half the references, same rows
    fewer = dict(small, X_ref=small["X_ref"][keep], y_ref=small["y_ref"][keep])
    manifest_before = (tmp_path / "cache" / "manifest.json").read_text()
    with pytest.raises(ValueError, match="another reference set"):
        benchmark.run_benchmark_on_detection_set(fewer, tmp_path, **kw)
    assert (tmp_path / "cache" / "manifest.json").read_text() == manifest_before
    # in a folder of its own the scores differ: reusing the cells would have been wrong
    second = benchmark.run_benchmark_on_detection_set(fewer, tmp_path / "fewer", **kw)
    assert second["results"]["known"]["knn_score"] != first["results"]["known"]["knn_score"]
