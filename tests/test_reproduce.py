"""The CIFAR-10 reproduction driver (``size="tiny"`` on the real data)."""

import json
import math

import numpy as np
import pytest

from sklearn_advdet.experiments.reproduce import (
    EPS_255,
    SIZES,
    locate_cifar_tars,
    locate_weights,
    reproduce,
)

FAMILIES = ["L-BFGS", "FGSM", "BIM", "PGD", "MI-FGSM"]


@pytest.fixture(scope="module")
def tiny(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce_tiny")
    res = reproduce(shared_data, 20, None, out, size="tiny", device="cpu",
                    random_state=0, progress=False, log=None)
    return res, out


def _finite_unit(v):
    return math.isfinite(v) and 0.0 <= v <= 1.0


def test_tiny_tables_complete(tiny):
    res, _ = tiny
    p1 = res["paper1"]
    configs = {(r["detector"], r["pivots"], r["metric"]) for r in p1["rows"]}
    assert configs == {(d, p, m) for d in ("LSTM", "MLP")
                       for p in ("medoid", "centroid") for m in ("cosine", "euclidean")}
    assert p1["columns"] == FAMILIES + ["macro"]
    for r in p1["rows"]:
        assert list(r["auc"]) == FAMILIES
        # every gradient attack has test rows; L-BFGS (3 images) may have none there
        for fam in FAMILIES[1:]:
            assert _finite_unit(r["auc"][fam]), (r["config"], fam, r["auc"][fam])
        lb = r["auc"]["L-BFGS"]
        assert math.isnan(lb) or _finite_unit(lb)
        present = [v for v in r["auc"].values() if math.isfinite(v)]
        assert r["macro_auc"] == pytest.approx(np.mean(present))
        assert _finite_unit(r["overall_auc"]) and _finite_unit(r["eer_accuracy"])
        for fam in FAMILIES[1:]:
            per_eps = [r["auc_per_eps"][f"{fam}-{e}"] for e in EPS_255]
            assert all(_finite_unit(v) for v in per_eps)
            # same authentic rows: the pooled AUC is the mean of the per-eps AUCs
            # weighted by their numbers of adversarial rows
            assert min(per_eps) - 1e-12 <= r["auc"][fam] <= max(per_eps) + 1e-12
        assert 1 <= r["best_epoch"] <= r["n_epochs"] <= SIZES["tiny"]["max_epochs"]

    p2 = res["paper2"]
    layer_names = res["data"]["layer_names"]
    assert p2["layers"] == layer_names[-3:]
    keys = {(r["layer"], r["weights"], r["preprocessing"]) for r in p2["rows"]}
    assert keys == {(lay, w, p) for lay in layer_names[-3:]
                    for w in ("kNN", "W-kNN", "DW-kNN")
                    for p in ("none", "L2", "PCA-whitening")}
    assert p2["k"] == min(SIZES["tiny"]["n_neighbors"], res["data"]["n_ref"])
    for r in p2["rows"]:
        for fam in FAMILIES:
            assert _finite_unit(r["eer_accuracy"][fam])
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


def test_tiny_results_are_sane(tiny):
    res, _ = tiny
    d = res["data"]
    # the JPEG test set: ResNet-20 gets about 81 % right
    assert 0.5 <= d["test_accuracy"] <= 1.0
    assert d["n_authentic"] + d["n_natural_errors"] == d["n_test_images"]
    fgsm16 = [a for a in d["attacks"] if a["attack"] == "FGSM" and a["eps255"] == 16]
    assert len(fgsm16) == 1 and fgsm16[0]["n_attacked"] == d["n_authentic"]
    assert fgsm16[0]["n_adversarial"] > 0.5 * fgsm16[0]["n_attacked"]
    # FGSM at 16/255 is easy to detect: a pipeline that scrambles rows, labels
    # or splits would sit near 0.5 on average over the eight detectors
    aucs = [r["auc_per_eps"]["FGSM-16"] for r in res["paper1"]["rows"]]
    assert np.mean(aucs) > 0.6, aucs
    best = max(res["paper1"]["rows"], key=lambda r: r["macro_auc"])
    assert best["config"] == res["paper1"]["best_macro"]
    assert set(res["paper1"]["best_per_attack"]) <= set(FAMILIES)


def test_tiny_files_written(tiny):
    res, out = tiny
    md = (out / "results.md").read_text()
    assert md == res["markdown"]
    assert "| detector | pivots | distance | L-BFGS | FGSM | BIM | PGD | MI-FGSM |" in md
    assert "| layer | scoring | preprocessing |" in md
    assert "Deviations from the papers" in md and "Timings" in md
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
