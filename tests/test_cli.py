"""The `advdet` command: every user mistake ends in one line on stderr and
exit 2 (no traceback; --debug shows it), nothing half-written is left behind,
outputs are not overwritten by accident, model files load without running
code; the chain extract -> attack -> fit -> evaluate works on real data; the
demo writes its report and plots and a clean log."""

import json
import pickle
import subprocess
import sys

import joblib
import numpy as np
import pytest
from sklearn.utils import Bunch

from sklearn_advdet import FeatureLayout
from _cli import one_line_error as _one_line_error
from _cli import run_cli as _run
from sklearn_advdet.cli import _parse_eps, main
from sklearn_advdet.datasets import save_detection_set

LAYOUT = FeatureLayout([4, 3, 3], names=["a", "b", "logits"], has_logits=True)


def _features(rng, cls):
    n = len(cls)
    X = rng.normal(size=(n, 10)).astype(np.float32)
    X[:, :4] += cls[:, None]
    X[:, 7:] += 3 * np.eye(3, dtype=np.float32)[cls]
    return X


@pytest.fixture
def detection_set(tmp_path):
    """A small synthetic detection set on disk (adversarials: shifted rows)."""
    rng = np.random.default_rng(0)
    y_ref = np.arange(90) % 3
    n = 40
    y = np.arange(n) % 2
    cls = np.arange(n) % 3
    X = _features(rng, cls)
    X[y == 1, :7] += rng.normal(scale=2.0, size=(int(y.sum()), 7)).astype(np.float32)
    data = Bunch(
        X_ref=_features(rng, y_ref), y_ref=y_ref, X=X, y=y, groups=np.arange(n) // 2,
        attack=np.where(y == 1, np.where(np.arange(n) % 4 == 1, "fgsm", "pgd"), "authentic"),
        eps=np.where(y == 1, 0.03, 0.0),
        true_class=cls, pred_class=cls, X_errors=_features(rng, np.array([0, 1])),
        errors_groups=np.array([100, 101]), errors_true_class=np.array([1, 2]),
        errors_pred_class=np.array([0, 1]), layer_sizes=LAYOUT,
    )
    save_detection_set(data, tmp_path / "det")
    return tmp_path / "det"


@pytest.fixture
def image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / "img" / c / f"{i}.png")
    return tmp_path / "img"


def test_parse_eps():
    assert _parse_eps("8/255") == pytest.approx(8 / 255)
    assert _parse_eps("0.03") == pytest.approx(0.03)
    for bad in ("8", "x/255", "1/0", "-0.1", "nan"):
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
        (["fit", "--train", ".", "--out", "m", "--n-neighbors", "-3"], "positive integer"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv, needle, capsys):
    rc, out, err = _run(argv, capsys)
    line = _one_line_error(rc, err, needle)
    assert "--help" in line  # says where to look


def test_bad_attack_options(tmp_path, capsys):
    weights = tmp_path / "w.th"
    weights.write_bytes(b"junk")
    base = ["attack", "--weights", str(weights), "--data", str(tmp_path),
            "--reference-data", str(tmp_path), "--out", str(tmp_path / "o")]
    rc, _, err = _run(base + ["--attack", "fgsm:2"], capsys)
    _one_line_error(rc, err, "outside [0, 1]")
    rc, _, err = _run(base + ["--attack", "fgsm:abc"], capsys)
    _one_line_error(rc, err, "invalid epsilon")
    rc, _, err = _run(base + ["--attack", "frobnicate:8/255"], capsys)
    line = _one_line_error(rc, err, "unknown attack 'frobnicate'")
    assert "fgsm" in line  # names the choices
    assert not (tmp_path / "o").exists()


def test_corrupt_weights_and_output_that_is_a_file(tmp_path, image_folder, capsys):
    weights = tmp_path / "w.th"
    weights.write_bytes(b"this is not a state dict")
    rc, _, err = _run(["extract", "--weights", str(weights), "--data", str(image_folder),
                       "--out", str(tmp_path / "store"), "--device", "cpu"], capsys)
    _one_line_error(rc, err, "cannot load --weights")
    assert not (tmp_path / "store").exists()
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    rc, _, err = _run(["extract", "--weights", str(weights), "--data", str(image_folder),
                       "--out", str(a_file)], capsys)
    _one_line_error(rc, err, "is a file: give a folder path")
    assert a_file.read_text() == "x"


def test_cuda_asked_on_a_machine_without_it(tmp_path, image_folder, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    weights = tmp_path / "w.th"
    weights.write_bytes(b"junk")
    rc, _, err = _run(["extract", "--weights", str(weights), "--data", str(image_folder),
                       "--out", str(tmp_path / "s"), "--device", "cuda"], capsys)
    _one_line_error(rc, err, "no CUDA device is available")
    rc, _, err = _run(["extract", "--weights", str(weights), "--data", str(image_folder),
                       "--out", str(tmp_path / "s"), "--device", "tpu:x"], capsys)
    _one_line_error(rc, err, "--device tpu:x")


def test_truncated_and_missing_detection_sets(tmp_path, detection_set, capsys):
    rc, _, err = _run(["fit", "--train", str(tmp_path), "--out", str(tmp_path / "m")],
                      capsys)
    _one_line_error(rc, err, "is not a detection set")
    file = detection_set / "detection_set.npz"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    out = tmp_path / "m.advdet"
    rc, _, err = _run(["fit", "--train", str(detection_set), "--method", "knn",
                       "--out", str(out)], capsys)
    _one_line_error(rc, err, "advdet attack")
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))
    with pytest.raises(Exception):  # --debug gives the traceback instead
        main(["--debug", "fit", "--train", str(detection_set), "--out", str(out)])


def test_fit_evaluate_round_trip_and_existing_outputs(tmp_path, detection_set, capsys):
    model = tmp_path / "knn.advdet"
    rc, out, err = _run(["fit", "--train", str(detection_set), "--method", "knn",
                         "--n-neighbors", "9", "--out", str(model)], capsys)
    assert rc == 0, err
    assert "fitted knn detector" in err and out == ""  # messages: the log on stderr
    from sklearn_advdet import persistence

    assert persistence.is_model_file(model)
    # an existing model file is not replaced by accident
    rc, _, err = _run(["fit", "--train", str(detection_set), "--method", "knn",
                       "--out", str(model)], capsys)
    _one_line_error(rc, err, "exists: pass --overwrite")
    rc, _, err = _run(["fit", "--train", str(detection_set), "--method", "mlp",
                       "--max-epochs", "2", "--out", str(model), "--overwrite", "-q"], capsys)
    assert rc == 0 and err == "", err
    rc, _, err = _run(["fit", "--train", str(detection_set), "--out", str(tmp_path)], capsys)
    _one_line_error(rc, err, "is a folder")
    ev = tmp_path / "ev"
    rc, out, err = _run(["evaluate", "--model", str(model), "--data", str(detection_set),
                         "--out", str(ev)], capsys)
    assert rc == 0, err
    assert "fgsm" in out  # the report table on stdout
    report = json.loads((ev / "report.json").read_text())
    assert report["fgsm"]["n_adv"] == report["pgd"]["n_adv"] == 10
    assert (ev / "roc.png").stat().st_size > 1000
    rc, _, err = _run(["evaluate", "--model", str(model), "--data", str(detection_set),
                       "--out", str(ev)], capsys)
    _one_line_error(rc, err, "exists and is not empty: pass --overwrite")
    rc, _, err = _run(["evaluate", "--model", str(model), "--data", str(detection_set),
                       "--out", str(ev), "--overwrite"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_pickled_models_need_trust_pickle(tmp_path, detection_set, capsys):
    target = tmp_path / "pwned"

    class_code = (f"import pickle\nclass E:\n    def __reduce__(self):\n"
                  f"        return (open, ({str(target)!r}, 'w'))\n")
    namespace = {}
    exec(class_code, namespace)  # a class whose unpickling creates a file
    evil = tmp_path / "evil.joblib"
    evil.write_bytes(pickle.dumps(namespace["E"]()))
    argv = ["evaluate", "--model", str(evil), "--data", str(detection_set),
            "--out", str(tmp_path / "ev")]
    rc, _, err = _run(argv, capsys)
    _one_line_error(rc, err, "--trust-pickle")
    assert not target.exists() and not (tmp_path / "ev").exists()
    # a crafted .advdet naming a foreign class is refused too
    import zipfile

    crafted = tmp_path / "crafted.advdet"
    with zipfile.ZipFile(crafted, "w") as zf:
        zf.writestr("manifest.json", json.dumps({
            "format": "sklearn_advdet.model", "format_version": 1, "metadata": {},
            "arrays": {}, "root": {"$": "object", "class": "os.system", "id": 0,
                                   "state": {}}}))
    rc, _, err = _run(["evaluate", "--model", str(crafted), "--data", str(detection_set),
                       "--out", str(tmp_path / "ev")], capsys)
    _one_line_error(rc, err, "allow-list")
    # an old-style joblib file written by `advdet fit` loads with --trust-pickle
    good = tmp_path / "m.advdet"
    assert _run(["fit", "--train", str(detection_set), "--method", "knn",
                 "--n-neighbors", "9", "--out", str(good)], capsys)[0] == 0
    from sklearn_advdet import persistence

    pipe, meta = persistence.load(good, return_metadata=True)
    old = tmp_path / "old.joblib"
    joblib.dump({"pipeline": pipe, **meta}, old)
    rc, out, err = _run(["evaluate", "--model", str(old), "--data", str(detection_set),
                         "--out", str(tmp_path / "ev2"), "--trust-pickle"], capsys)
    assert rc == 0, err
    assert "can run code" in err
    ref = json.loads((tmp_path / "ev2" / "report.json").read_text())
    rc, _, err = _run(["evaluate", "--model", str(good), "--data", str(detection_set),
                       "--out", str(tmp_path / "ev3")], capsys)
    assert json.loads((tmp_path / "ev3" / "report.json").read_text()) == ref


def test_benchmark_on_a_detection_set(tmp_path, detection_set, capsys):
    pytest.importorskip("sklearn_advdet.experiments.benchmark")
    out = tmp_path / "bench"
    argv = ["benchmark", "--detection-set", str(detection_set), "--detector", "knn_score",
            "--protocol", "known", "--protocol", "leave_one_attack_out",
            "--n-bootstrap", "20", "--out", str(out)]
    rc, printed, err = _run(argv, capsys)
    assert rc == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert "knn_score" in json.dumps(doc["results"]) and "knn_score" in printed
    assert "leave" in (out / "results.md").read_text().lower()
    rc, _, err = _run(argv, capsys)  # an existing run is not replaced by accident
    _one_line_error(rc, err, "--resume")
    rc, _, err = _run(argv[:4] + ["frobnicate"] + argv[5:-1] + [str(tmp_path / "b2")], capsys)
    _one_line_error(rc, err, "frobnicate")
    assert not (tmp_path / "b2").exists()
    rc, _, err = _run(["benchmark", "--digits", "--attack", "fgsm", "--out",
                       str(tmp_path / "b3")], capsys)
    _one_line_error(rc, err, "go with --data")


def test_help_warns_about_pickle_and_imports_no_torch():
    code = ("import sys\nfrom sklearn_advdet.cli import main\n"
            "try:\n    main(['evaluate', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--trust-pickle" in res.stdout and "can run arbitrary code" in res.stdout
    assert res.stdout.strip().endswith("NO-TORCH")


def test_module_entry_point_and_help(tmp_path):
    res = subprocess.run([sys.executable, "-m", "sklearn_advdet", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for cmd in ("demo", "extract", "attack", "fit", "evaluate", "reproduce"):
        assert cmd in res.stdout
    res = subprocess.run([sys.executable, "-m", "sklearn_advdet", "attack"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "required" in res.stderr
    bogus = tmp_path / "model.advdet"
    bogus.write_bytes(b"PK\x03\x04" + b"\0" * 26 + b"manifest.json" + b"\0" * 10)
    res = subprocess.run([sys.executable, "-m", "sklearn_advdet", "evaluate", "--model",
                          str(bogus), "--data", str(tmp_path), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "truncated" in res.stderr


def test_demo_writes_report_plots_and_a_clean_log(tmp_path):
    out = tmp_path / "demo"
    log = tmp_path / "log"
    with open(log, "w") as fh:  # `advdet demo > log 2>&1`
        res = subprocess.run([sys.executable, "-m", "sklearn_advdet", "demo", "--out",
                              str(out), "--max-epochs", "5"], stdout=fh,
                             stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert res.returncode == 0, text
    assert "\r" not in text and "it/s" not in text  # no progress bars in a file
    assert "macro AUC" in text and "EER accuracy" in text
    assert "report and plots written to" in text
    report = json.loads((out / "report.json").read_text())
    attacks = set(report["data"]["attacks"])
    for family in ("fgsm", "bim", "pgd", "mifgsm", "lbfgs", "cw_l2", "deepfool", "apgd",
                   "iterative_target_class"):
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
    res = subprocess.run([sys.executable, "-m", "sklearn_advdet", "demo", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--overwrite" in res.stderr  # not replaced by accident


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
                         "--limit", "50", "--out", str(tmp_path / "ref")], capsys)
    assert rc == 0, err
    assert "top-1 accuracy" in err
    model = tmp_path / "knn.advdet"
    rc, out, err = _run(["fit", "--train", str(det), "--method", "knn",
                         "--n-neighbors", "50", "--out", str(model), "--quiet"], capsys)
    assert rc == 0, err
    rc, out, err = _run(["evaluate", "--model", str(model), "--data", str(det),
                         "--out", str(tmp_path / "ev")], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["fgsm"]["n_adv"] == int((y == 1).sum())
    assert (tmp_path / "ev" / "roc.png").stat().st_size > 1000
    # a reference store of the same model and layers is accepted
    rc, out, err = _run(["fit", "--train", str(det), "--reference", str(tmp_path / "ref"),
                         "--method", "mlp", "--max-epochs", "2",
                         "--out", str(tmp_path / "m2.advdet"), "--quiet"], capsys)
    assert rc == 0, err
    # an existing store is refused, continued with --resume
    rc, out, err = _run(["extract", "--weights", weights, "--data", test_tar,
                         "--limit", "50", "--out", str(tmp_path / "ref")], capsys)
    _one_line_error(rc, err, "--resume")
    rc, out, err = _run(["extract", "--weights", weights, "--data", test_tar, "--limit",
                         "50", "--out", str(tmp_path / "ref"), "--resume", "-q"], capsys)
    assert rc == 0, err


def test_detection_set_round_trip(tmp_path):
    from sklearn_advdet.datasets import load_detection_set

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
