"""The CIFAR-10 reproduction driver (``size="tiny"`` on the real data)."""

import json
import math

import numpy as np
import pytest

from sklearn_advdet.experiments.reproduce import (
    EPS_255,
    FAMILY_EPS_255,
    SIZES,
    locate_cifar_tars,
    locate_weights,
    reproduce,
)

FAMILIES = ["L-BFGS", "FGSM", "BIM", "PGD", "MI-FGSM", "CW-L2", "DeepFool", "APGD-CE"]
# attacked on every correctly classified image: adversarial rows on the test side
ON_ALL = ["FGSM", "BIM", "PGD", "MI-FGSM", "DeepFool", "APGD-CE"]
# attacked on a random subset of 3 images at size tiny: maybe none on the test side
SUBSET = ["L-BFGS", "CW-L2"]


@pytest.fixture(scope="module")
def tiny(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce_tiny")
    res = reproduce(shared_data, 20, None, out, size="tiny", device="cpu",
                    random_state=0, progress=False, log=None)
    return res, out


def _test_families(res):
    """Families with adversarial rows on the test side of the split."""
    counts = res["data"]["split"]["n_adversarial_test_rows"]
    assert list(counts) == FAMILIES
    return [fam for fam, n in counts.items() if n > 0]


def _finite_unit(v):
    return math.isfinite(v) and 0.0 <= v <= 1.0


def test_tiny_tables_complete(tiny):
    res, _ = tiny
    p1 = res["paper1"]
    configs = {(r["detector"], r["pivots"], r["metric"]) for r in p1["rows"]}
    assert configs == {(d, p, m) for d in ("LSTM", "MLP")
                       for p in ("medoid", "centroid") for m in ("cosine", "euclidean")}
    assert p1["columns"] == FAMILIES + ["macro"]
    test_families = set(_test_families(res))
    assert set(ON_ALL) <= test_families
    for r in p1["rows"]:
        assert list(r["auc"]) == FAMILIES
        # a family has an AUC exactly where it has adversarial test rows
        for fam in FAMILIES:
            if fam in test_families:
                assert _finite_unit(r["auc"][fam]), (r["config"], fam, r["auc"][fam])
            else:
                assert fam in SUBSET and math.isnan(r["auc"][fam]), (r["config"], fam)
        present = [v for v in r["auc"].values() if math.isfinite(v)]
        assert r["macro_auc"] == pytest.approx(np.mean(present))
        assert _finite_unit(r["overall_auc"]) and _finite_unit(r["eer_accuracy"])
        for fam, budgets in FAMILY_EPS_255.items():
            per_eps = [r["auc_per_eps"][f"{fam}-{e}"] for e in budgets]
            assert all(_finite_unit(v) for v in per_eps)
            # same authentic rows: the pooled AUC is the mean of the per-eps AUCs
            # weighted by their numbers of adversarial rows
            assert min(per_eps) - 1e-12 <= r["auc"][fam] <= max(per_eps) + 1e-12
        # families without a budget: one per-eps column, the family's own AUC
        for fam in set(FAMILIES) - set(FAMILY_EPS_255):
            if fam in test_families:
                assert r["auc_per_eps"][fam] == r["auc"][fam]
            else:
                assert fam not in r["auc_per_eps"]
        assert 1 <= r["best_epoch"] <= r["n_epochs"] <= SIZES["tiny"]["max_epochs"]
    gradient = [f"{f}-{e}" for f in ("FGSM", "BIM", "PGD", "MI-FGSM") for e in EPS_255]
    assert p1["eps_columns"] == ["L-BFGS"] + gradient + ["CW-L2", "DeepFool", "APGD-CE-8"]

    p2 = res["paper2"]
    layer_names = res["data"]["layer_names"]
    assert p2["layers"] == layer_names[-3:]
    keys = {(r["layer"], r["weights"], r["preprocessing"]) for r in p2["rows"]}
    assert keys == {(lay, w, p) for lay in layer_names[-3:]
                    for w in ("kNN", "W-kNN", "DW-kNN")
                    for p in ("none", "L2", "PCA-whitening")}
    assert p2["k"] == min(SIZES["tiny"]["n_neighbors"], res["data"]["n_ref"])
    # paper 2 scores every detection row (no split): a family has an EER
    # accuracy exactly where it has adversarial rows
    with_rows = {a["attack"] for a in res["data"]["attacks"] if a["n_adversarial"]}
    assert set(ON_ALL) <= with_rows
    for r in p2["rows"]:
        assert list(r["eer_accuracy"]) == FAMILIES
        for fam in FAMILIES:
            v = r["eer_accuracy"][fam]
            assert _finite_unit(v) if fam in with_rows else math.isnan(v), (fam, v)
        assert _finite_unit(r["aggregated"])
        assert 0.0 <= r["natural_errors_flagged"] <= 1.0 or (
            res["data"]["n_natural_errors"] == 0
        )


def test_tiny_split_by_source_image(tiny):
    res, _ = tiny
    split = {k: set(v) for k, v in res["split"].items()}
    n = res["data"]["n_test_images"]
    assert n == 10 * SIZES["tiny"]["test_per_class"]
    assert not (split["train"] & split["val"])
    assert not (split["train"] & split["test"])
    assert not (split["val"] & split["test"])
    assert split["train"] | split["val"] | split["test"] == set(range(n))
    assert len(split["test"]) == round(0.2 * n)
    assert len(split["val"]) >= 1 and len(split["train"]) > len(split["val"])
    s = res["data"]["split"]
    assert s["n_train_rows"] + s["n_val_rows"] + s["n_test_rows"] == (
        res["data"]["n_authentic"] + res["data"]["n_adversarial"]
    )
    assert s["n_authentic_test_rows"] + sum(s["n_adversarial_test_rows"].values()) == (
        s["n_test_rows"])


def test_tiny_results_are_sane(tiny):
    res, _ = tiny
    d = res["data"]
    # the JPEG test set: ResNet-20 gets about 81 % right
    assert 0.5 <= d["test_accuracy"] <= 1.0
    assert d["n_authentic"] + d["n_natural_errors"] == d["n_test_images"]
    by_family = {}
    for a in d["attacks"]:
        by_family.setdefault(a["attack"], []).append(a)
    assert list(by_family) == ["FGSM", "BIM", "PGD", "MI-FGSM", "L-BFGS", "CW-L2",
                               "DeepFool", "APGD-CE"]  # the build order
    for fam in ("L-BFGS", "CW-L2", "DeepFool"):
        (a,) = by_family[fam]
        assert a["eps"] is None and a["eps255"] is None
    (cw,), (lb,) = by_family["CW-L2"], by_family["L-BFGS"]
    assert cw["n_attacked"] == min(SIZES["tiny"]["cw_images"], d["n_authentic"])
    assert lb["n_attacked"] == min(SIZES["tiny"]["lbfgs_images"], d["n_authentic"])
    assert [a["eps255"] for a in by_family["APGD-CE"]] == list(FAMILY_EPS_255["APGD-CE"])
    for fam in ("DeepFool", "APGD-CE"):
        (a,) = by_family[fam]
        assert a["n_attacked"] == d["n_authentic"] and a["n_adversarial"] > 0
    # a fresh run: each family's stage timing covers its configurations' own seconds
    for fam, configs in by_family.items():
        (stage,) = [k for k in res["timings"] if k.endswith(f"attack {fam}")]
        assert all(a["seconds"] > 0 for a in configs)
        assert sum(a["seconds"] for a in configs) <= res["timings"][stage]
    fgsm16 = [a for a in d["attacks"] if a["attack"] == "FGSM" and a["eps255"] == 16]
    assert len(fgsm16) == 1 and fgsm16[0]["n_attacked"] == d["n_authentic"]
    assert fgsm16[0]["n_adversarial"] > 0.5 * fgsm16[0]["n_attacked"]
    # FGSM at 16/255 is easy to detect: a pipeline that scrambles rows, labels
    # or splits would sit near 0.5 on average over the four MLPs, which learn
    # it within an epoch.  Not the LSTMs: at this size their early stopping
    # on 4 validation images over 8 families may keep the first epoch, whose
    # direction on FGSM is arbitrary (it was inverted when CW-L2, DeepFool
    # and APGD-CE joined the families)
    aucs = [r["auc_per_eps"]["FGSM-16"] for r in res["paper1"]["rows"]
            if r["detector"] == "MLP"]
    assert len(aucs) == 4 and np.mean(aucs) > 0.6, aucs
    best = max(res["paper1"]["rows"], key=lambda r: r["macro_auc"])
    assert best["config"] == res["paper1"]["best_macro"]
    assert set(res["paper1"]["best_per_attack"]) <= set(FAMILIES)


def test_tiny_files_written(tiny):
    res, out = tiny
    md = (out / "results.md").read_text()
    assert md == res["markdown"]
    assert ("| detector | pivots | distance | L-BFGS | FGSM | BIM | PGD | MI-FGSM | CW-L2 "
            "| DeepFool | APGD-CE | macro AUC | epochs |") in md
    assert ("| layer | scoring | preprocessing | L-BFGS | FGSM | BIM | PGD | MI-FGSM | CW-L2 "
            "| DeepFool | APGD-CE | aggregated |") in md
    # the report says what the added attacks ran with and where they come from
    assert f"random subset of at most {SIZES['tiny']['cw_images']} images" in md
    assert "APGD-CE at eps 8/255" in md and "not in either paper" in md
    assert "Deviations from the papers" in md and "Timings" in md
    assert "| attack | eps | attacked | adversarial rows | success rate | seconds |" in md
    cw = next(a for a in res["data"]["attacks"] if a["attack"] == "CW-L2")
    assert f"| CW-L2 | - | {cw['n_attacked']} | {cw['n_adversarial']} | " in md
    assert f" | {cw['seconds']:.1f} |" in md
    assert str(res["machine"]["cpu_count"]) in md
    loaded = json.loads((out / "results.json").read_text())
    assert loaded["paper1"]["best_macro"] == res["paper1"]["best_macro"]
    assert len(loaded["paper2"]["rows"]) == 27
    png = out / res["figures"]["roc"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["timings"]["total"] > 0


def test_locate_both_layouts(shared_data):
    train, test = locate_cifar_tars(shared_data)
    assert train.name == "train.tar" and test.name == "test.tar"
    assert locate_cifar_tars(shared_data / "cifar10-jpeg") == (train, test)
    w = locate_weights(shared_data, 20)
    assert w.name.startswith("resnet20-")
    assert locate_weights(shared_data / "cifar10-jpeg", 56).name.startswith("resnet56-")


def test_bad_inputs(shared_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reproduce(tmp_path / "nowhere", 20, None, tmp_path / "out", log=None)
    with pytest.raises(FileNotFoundError, match="train.tar"):
        reproduce(tmp_path, 20, None, tmp_path / "out", log=None)
    (tmp_path / "train.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="found only"):
        locate_cifar_tars(tmp_path)
    with pytest.raises(FileNotFoundError, match="weights file"):
        reproduce(shared_data, 20, tmp_path / "missing.th", tmp_path / "out", log=None)
    with pytest.raises(FileNotFoundError, match="resnet20"):
        locate_weights(tmp_path, 20)
    with pytest.raises(ValueError, match="size must be one of"):
        reproduce(shared_data, 20, None, tmp_path / "out", size="huge", log=None)
    with pytest.raises(ValueError, match="depth must be one of"):
        reproduce(shared_data, 18, None, tmp_path / "out", log=None)
    with pytest.raises(ValueError, match="random_state"):
        reproduce(shared_data, 20, None, tmp_path / "out", random_state=None, log=None)
    assert not (tmp_path / "out").exists()


def test_paper2_whitens_a_layer_with_a_dead_channel():
    """A channel constant over the references (a dead ReLU, as in ResNet-20's
    layer3.0) has no variance to whiten: the kNN table keeps the live ones."""
    from sklearn.utils import Bunch

    from sklearn_advdet import FeatureLayout
    from sklearn_advdet.experiments._reproduce_papers import _live_channels, _paper2

    rng = np.random.default_rng(0)
    layout = FeatureLayout([6, 3], names=["block", "logits"], has_logits=True)

    def rows(n, classes):
        feats = rng.normal(size=(n, 6)) + classes[:, None]
        feats[:, 2] = 0.5  # the dead channel
        logits = np.eye(3)[classes] * 5 + rng.normal(scale=0.1, size=(n, 3))
        return np.hstack([feats, logits]).astype(np.float32)

    y_ref = np.arange(90) % 3
    X_ref = rows(90, y_ref)
    assert _live_channels(X_ref[:, :6]) == 5
    y = np.r_[np.zeros(30, int), np.ones(20, int)]
    classes = rng.integers(0, 3, size=50)
    X = rows(50, classes)
    X[30:, :6] += rng.normal(scale=3.0, size=(20, 6)) * (np.arange(6) != 2)
    family = np.where(y == 1, "FGSM", "authentic")
    data = Bunch(X=X, y=y, family=family, X_ref=X_ref, y_ref=y_ref, layout=layout,
                 X_errors=rows(4, np.array([0, 1, 2, 0])))
    out, k, _ = _paper2(data, {"knn_layers": 1, "n_neighbors": 10}, None, 0, lambda *a: None)
    assert k == 10 and len(out) == 9
    pca = [r for r in out if r["preprocessing"] == "PCA-whitening"]
    assert len(pca) == 3
    for r in pca:
        assert _finite_unit(r["eer_accuracy"]["FGSM"]) and _finite_unit(r["aggregated"])
        assert np.isfinite(r["threshold"])
