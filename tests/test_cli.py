"""The `advdet` command: user errors exit 2 with one line; the chain
extract -> attack -> fit -> evaluate works on real data; the demo writes its
report and plots."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sklearn_advdet.cli import _parse_eps, main


def _run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_parse_eps():
    assert _parse_eps("8/255") == pytest.approx(8 / 255)
    assert _parse_eps("0.03") == pytest.approx(0.03)
    for bad in ("8", "x/255", "1/0", "-0.1"):
        with pytest.raises(Exception, match="epsilon"):
            _parse_eps(bad)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["extract", "--weights", "/no/such.th", "--data", ".", "--out", "x"],
         "no such file or folder: /no/such.th"),
        (["frobnicate"], "invalid choice"),
        (["fit", "--train", "."], "required: --out"),
        (["demo", "--n-jobs", "0"], "--n-jobs must be"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv, needle, capsys):
    rc, out, err = _run(argv, capsys)
    assert rc == 2
    assert needle in err
    assert "Traceback" not in err


def test_user_errors_inside_commands_are_one_line(tmp_path, capsys):
    # not a detection set
    rc, _, err = _run(["fit", "--train", str(tmp_path), "--out", str(tmp_path / "m")], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "is not a detection set" in lines[0]
    # a file that is not a fitted detector
    bogus = tmp_path / "model.joblib"
    bogus.write_bytes(b"not a pickle")
    rc, _, err = _run(["evaluate", "--model", str(bogus), "--data", str(tmp_path),
                       "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "cannot read" in err and "Traceback" not in err
    # --debug gives the traceback instead
    with pytest.raises(Exception):
        main(["--debug", "fit", "--train", str(tmp_path), "--out", str(tmp_path / "m")])


def test_module_entry_point_and_help():
    res = subprocess.run([sys.executable, "-m", "sklearn_advdet", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for cmd in ("demo", "extract", "attack", "fit", "evaluate", "reproduce"):
        assert cmd in res.stdout
    res = subprocess.run([sys.executable, "-m", "sklearn_advdet", "attack"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "required" in res.stderr


def test_demo_writes_report_and_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--max-epochs", "5", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "macro AUC" in printed and "EER accuracy" in printed
    report = json.loads((out / "report.json").read_text())
    attacks = set(report["data"]["attacks"])
    for family in ("fgsm", "bim", "pgd", "mifgsm", "lbfgs", "iterative_target_class"):
        assert any(a.startswith(family) for a in attacks), (family, attacks)
    assert set(report["detectors"]) >= {"pivot+LSTM", "pivot+MLP"}
    for rows in report["detectors"].values():
        assert 0.0 <= rows["macro AUC"]["auc"] <= 1.0
        assert 0.0 <= rows["overall"]["eer_accuracy"] <= 1.0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert any(p.startswith("roc_") for p in pngs)
    assert any(p.startswith("density_") for p in pngs)
    # the kNN detectors separate attacks from authentic images on digits
    assert report["detectors"]["kNN last layer"]["overall"]["auc"] > 0.7


def test_chain_on_cifar(shared_data, tmp_path, capsys):
    weights = str(shared_data / "weights" / "resnet20-12fca82f.th")
    test_tar = str(shared_data / "cifar10-jpeg" / "test.tar")
    train_tar = str(shared_data / "cifar10-jpeg" / "train.tar")
    det = tmp_path / "det"
    rc, out, err = _run(
        ["attack", "--weights", weights, "--data", test_tar, "--limit", "60",
         "--reference-data", train_tar, "--reference-limit", "300",
         "--attack", "fgsm:8/255", "--out", str(det), "--quiet", "--device", "cpu"],
        capsys)
    assert rc == 0, err
    with np.load(det / "detection_set.npz") as npz:
        y, attack = npz["y"], npz["attack"]
        n_ref = len(npz["y_ref"])
    assert n_ref == 300 and set(attack[y == 1]) == {"fgsm"} and (y == 0).sum() > 20
    rc, out, err = _run(["extract", "--weights", weights, "--data", test_tar,
                         "--limit", "50", "--out", str(tmp_path / "ref"), "--quiet"],
                        capsys)
    assert rc == 0, err
    assert "top-1 accuracy" in out
    model = tmp_path / "knn.joblib"
    rc, out, err = _run(["fit", "--train", str(det), "--method", "knn",
                         "--n-neighbors", "50", "--out", str(model), "--quiet"], capsys)
    assert rc == 0, err
    rc, out, err = _run(["evaluate", "--model", str(model), "--data", str(det),
                         "--out", str(tmp_path / "ev")], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["fgsm"]["n_adv"] == int((y == 1).sum())
    assert (tmp_path / "ev" / "roc.png").stat().st_size > 1000
    # a reference store from another layout is refused with one line
    rc, out, err = _run(["fit", "--train", str(det), "--reference", str(tmp_path / "ref"),
                         "--method", "mlp", "--max-epochs", "2",
                         "--out", str(tmp_path / "m2"), "--quiet"], capsys)
    assert rc == 0, err  # same model and layers: accepted


def test_detection_set_round_trip(tmp_path):
    from sklearn.utils import Bunch

    from sklearn_advdet import FeatureLayout
    from sklearn_advdet.datasets import load_detection_set, save_detection_set

    rng = np.random.default_rng(0)
    layout = FeatureLayout([3, 2, 4], names=["a", "b", "logits"], has_logits=True)
    n = 7
    data = Bunch(
        X_ref=rng.random((5, 9), dtype=np.float32), y_ref=np.arange(5) % 4,
        X=rng.random((n, 9), dtype=np.float32), y=np.array([0, 0, 1, 1, 1, 0, 1]),
        groups=np.arange(n), attack=np.array(["authentic"] * 2 + ["fgsm"] * 3 + ["authentic", "pgd"]),
        eps=rng.random(n), true_class=np.zeros(n, int), pred_class=np.ones(n, int),
        X_errors=rng.random((2, 9), dtype=np.float32), errors_groups=np.array([9, 10]),
        errors_true_class=np.array([1, 2]), errors_pred_class=np.array([2, 1]),
        layer_sizes=layout,
    )
    file = save_detection_set(data, tmp_path / "d")
    assert file.name == "detection_set.npz"
    assert not list((tmp_path / "d").glob("*.tmp*"))
    back = load_detection_set(tmp_path / "d")
    assert back.layer_sizes == layout
    for key in ("X", "X_ref", "y", "attack", "eps", "errors_groups"):
        np.testing.assert_array_equal(back[key], data[key])
    with pytest.raises(ValueError, match="lacks"):
        save_detection_set(Bunch(X=data.X), tmp_path / "e")
    with pytest.raises(FileNotFoundError, match="not a detection set"):
        load_detection_set(tmp_path / "e")
