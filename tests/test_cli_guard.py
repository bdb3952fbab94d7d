"""`advdet guard export`: the written program read back by load_guarded gives
the in-memory guard's (logits, p_adv), the JSON holds the threshold of the
calibration rule and the layout, predict rejects above it; every user error
is one line, exit 2, and leaves no file."""

import errno
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_advdet import FeatureLayout, LogitFeatures, PivotEmbedder, persistence
from _cli import one_line_error as _one_line_error
from _cli import run_cli as _run
from sklearn_advdet.cli import UsageError, main
from sklearn_advdet.deep.extraction import extract_features
from sklearn_advdet.deep.models import cifar_resnet
from sklearn_advdet.experiments.guarded import REJECT, GuardedModel, load_guarded


def _save(pipe, path, layout):
    persistence.save(pipe, path, metadata={"layout": layout.to_dict(), "method": "test"})
    return path


def _logit_detector(layout, path, seed=0):
    """LogitFeatures + LogisticRegression fitted on random rows of ``layout``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, layout.n_features)).astype(np.float32)
    pipe = make_pipeline(LogitFeatures(layout), LogisticRegression())
    return _save(pipe.fit(X, np.arange(60) % 2), path, layout)


@pytest.fixture(scope="module")
def random_resnet(tmp_path_factory):
    """A randomly initialised ResNet-20's weights file, its layout and some images."""
    root = tmp_path_factory.mktemp("guard")
    torch.manual_seed(0)
    model = cifar_resnet(20)
    torch.save(model.state_dict(), root / "w.th")
    _, layout = extract_features(model, torch.rand(4, 3, 32, 32), layers="cifar_resnet")
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("airplane", "automobile"):
        (root / "img" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                root / "img" / c / f"{i}.png")
    return dict(root=root, weights=root / "w.th", layout=layout, images=root / "img")


def test_guard_help_lists_export_and_imports_no_torch():
    code = ("import sys\nfrom sklearn_advdet.cli import main\n"
            "for argv in (['guard', '--help'], ['guard', 'export', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "export" in res.stdout and "--calibration-data" in res.stdout
    assert "--trust-pickle" in res.stdout and "can run arbitrary code" in res.stdout
    assert res.stdout.strip().endswith("NO-TORCH")


def test_guard_export_user_errors(random_resnet, tmp_path, capsys):
    r = random_resnet
    out = tmp_path / "out"
    out.mkdir()
    good = _logit_detector(r["layout"], tmp_path / "good.advdet")

    def argv(model=good, weights=r["weights"], *extra):
        return ["guard", "export", "--model", str(model), "--weights", str(weights),
                "--calibration-data", str(r["images"]), "--device", "cpu",
                "--out", str(out / "guard"), *extra]

    def nothing_written():
        assert sorted(p.name for p in out.iterdir()) == []

    # no sub-command, a bad rate, a missing weights file: the parser's one line
    rc, _, err = _run(["guard"], capsys)
    _one_line_error(rc, err, "advdet guard: error", "GUARD_COMMAND", "--help")
    rc, _, err = _run(argv() + ["--target-fpr", "5"], capsys)
    _one_line_error(rc, err, "false-positive rate in [0, 1)", "--help")
    rc, _, err = _run(argv(good, tmp_path / "no-such.th"), capsys)
    _one_line_error(rc, err, "no such file or folder", "no-such.th")
    junk = tmp_path / "junk.th"
    junk.write_bytes(b"not a state dict")
    rc, _, err = _run(argv(good, junk), capsys)
    _one_line_error(rc, err, "advdet guard export: error: cannot load --weights",
                    "give the state-dict file")
    nothing_written()

    # a detector file that is not a model file
    not_model = tmp_path / "notes.advdet"
    not_model.write_text("hello")
    rc, _, err = _run(argv(not_model), capsys)
    _one_line_error(rc, err, "is not a sklearn_advdet model file", "--trust-pickle")
    # a step without a torch conversion: GuardedModel's TypeError, named
    X = np.random.default_rng(0).normal(size=(40, r["layout"].n_features))
    pca = make_pipeline(PCA(3), LogisticRegression()).fit(X, np.arange(40) % 2)
    rc, _, err = _run(argv(_save(pca, tmp_path / "pca.advdet", r["layout"])), capsys)
    _one_line_error(rc, err, "cannot convert the step PCA", "replace it")
    # a detector fitted on a ResNet-56's blocks, guarding a ResNet-20
    names = [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(9)]
    lay56 = FeatureLayout([16] * 9 + [32] * 9 + [64] * 9 + [10], names=names + ["logits"],
                          has_logits=True)
    deep = _logit_detector(lay56, tmp_path / "r56.advdet")
    rc, _, err = _run(argv(deep), capsys)
    line = _one_line_error(rc, err, "cannot guard a CIFAR ResNet-20",
                           "fitted on 27 hooked layers")
    assert "check --depth" in line  # says what to do
    nothing_written()
    with pytest.raises(UsageError, match="27 hooked layers"):  # --debug: the traceback
        main(["--debug"] + argv(deep))

    # existing outputs are kept without --overwrite; an --out folder is refused
    (out / "guard.json").write_text("{}")
    rc, _, err = _run(argv(), capsys)
    _one_line_error(rc, err, "guard.json exists: pass --overwrite")
    assert (out / "guard.json").read_text() == "{}"
    (out / "guard.json").unlink()
    (out / "guard").mkdir()
    rc, _, err = _run(argv(), capsys)
    _one_line_error(rc, err, "is a folder: give a path prefix")
    (out / "guard").rmdir()
    rc, _, err = _run(argv(good, r["weights"], "--calibration-limit", "1"), capsys)
    _one_line_error(rc, err, "--calibration-limit 1 is smaller than the 2 classes")
    # the random network calls every noise image a deer: no authentic image to calibrate on
    rc, _, err = _run(argv(), capsys)
    _one_line_error(rc, err, "none of the 6 --calibration-data images right",
                    "--depth and --weights")
    nothing_written()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _calibration_rule(p, target_fpr):
    """Independent threshold: the smallest p with at most target_fpr above it."""
    p = np.sort(p)
    return p[math.ceil((1 - target_fpr) * len(p) - 1e-9) - 1]


@pytest.fixture(scope="module")
def cifar_detector(shared_data, tmp_path_factory):
    """Pivots + logistic fitted on ResNet-20 features of 200 test images
    (label 1: the images with Gaussian noise), saved as `advdet fit` does, and
    60 other test images as a PNG folder for the calibration."""
    from PIL import Image

    from sklearn_advdet.deep.data import load_image_folder

    root = tmp_path_factory.mktemp("cifar")
    weights = shared_data / "weights" / "resnet20-12fca82f.th"
    model = cifar_resnet(20, weights=weights)
    u8, y, classes = load_image_folder(shared_data / "cifar10-jpeg" / "test.tar",
                                       per_class=26)
    fit = np.arange(len(y)) % 26 < 20
    for i in np.flatnonzero(~fit):
        (root / "cal" / classes[y[i]]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(u8[i].transpose(1, 2, 0)).save(root / "cal" / classes[y[i]]
                                                       / f"{i}.png")
    x = torch.from_numpy(u8[fit].astype(np.float32) / 255)
    X, layout = extract_features(model, x, layers="cifar_resnet")
    ref = np.arange(len(x)) % 2 == 0
    noisy = (x[~ref] + 0.1 * torch.randn(x[~ref].shape, generator=torch.Generator()
                                         .manual_seed(0))).clamp(0, 1)
    X_noisy, _ = extract_features(model, noisy, layers="cifar_resnet")
    pipe = make_pipeline(FrozenEstimator(PivotEmbedder(layout).fit(X[ref], y[fit][ref])),
                         StandardScaler(), LogisticRegression(max_iter=500))
    pipe.fit(np.vstack([X[~ref], X_noisy]), np.repeat([0, 1], len(X_noisy)))
    return dict(model=_save(pipe, root / "pivots.advdet", layout), weights=weights,
                layout=layout, data=root / "cal")


def test_guard_export_on_cifar(cifar_detector, tmp_path, capsys, monkeypatch):
    from sklearn_advdet.cli._inputs import load_images
    from sklearn_advdet.experiments import guarded as guarded_mod

    c = cifar_detector
    out = tmp_path / "served" / "guard.pt2"  # the suffix is optional
    argv = ["guard", "export", "--model", str(c["model"]), "--depth", "20",
            "--weights", str(c["weights"]), "--calibration-data", str(c["data"]),
            "--calibration-limit", "50", "--target-fpr", "0.05", "--device", "cpu",
            "--out", str(out)]
    rc, printed, err = _run(argv, capsys)
    assert rc == 0, err
    written = sorted(p.name for p in out.parent.iterdir())
    assert written == ["guard.json", "guard.pt2"]  # and no staging folder left
    for stage in ("9 hooked layers", "PivotEmbedder", "threshold", "exported",
                  "load_guarded"):
        assert stage in err, err
    info = json.loads((tmp_path / "served" / "guard.json").read_text())
    assert FeatureLayout.from_dict(info["layout"]) == c["layout"]
    assert info["layers"] == c["layout"].layer_names
    assert info["target_fpr"] == 0.05 and info["reject_label"] == REJECT
    t = info["threshold"]

    # the same calibration images; the program read back equals the in-memory guard
    images, labels, _ = load_images(c["data"], 50, "--calibration-data", 0)
    x = torch.from_numpy(images.astype(np.float32) / 255)
    served = load_guarded(out)
    guard = GuardedModel(cifar_resnet(20, weights=c["weights"]),
                         persistence.load(c["model"]), layers="cifar_resnet", threshold=t)
    with torch.no_grad():
        (lg_s, p_s), (lg_m, p_m) = served(x), guard(x)
    torch.testing.assert_close(lg_s, lg_m, rtol=0, atol=1e-5)
    torch.testing.assert_close(p_s, p_m, rtol=0, atol=1e-5)
    # the threshold is the calibration rule on the correctly classified images
    correct = (lg_m.argmax(1).numpy() == labels)
    assert t == pytest.approx(_calibration_rule(p_m.numpy()[correct], 0.05), abs=1e-6)
    rejected = p_s.numpy() > np.float32(t)
    n_rej = int(rejected[correct].sum())
    # at most the target share above it (an image at the threshold may move by
    # float rounding between the calibration batch and the served one)
    assert 0 < int((p_s.numpy()[correct] > t + 1e-6).sum()) <= 0.05 * correct.sum()
    assert f"{n_rej} of {int(correct.sum())} correctly classified" in printed
    assert f"{int(rejected[~correct].sum())} of {int((~correct).sum())} misclassified" \
        in printed
    assert str(out) in printed and "guard.json" in printed
    # predict rejects strictly above the threshold, the class below it
    pred = served.predict(x).numpy()
    np.testing.assert_array_equal(pred, np.where(rejected, REJECT, lg_s.argmax(1).numpy()))
    np.testing.assert_array_equal(pred, guard.predict(x).numpy())
    order = np.argsort(p_s.numpy())
    served.threshold.fill_(float(p_s[order[-3]]))  # p_adv equal to it is accepted
    assert (served.predict(x).numpy()[order] == REJECT).tolist() == [False] * 48 + [True] * 2

    # an existing export is not replaced without --overwrite, nor by a failed export
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    rc, _, err = _run(argv, capsys)
    _one_line_error(rc, err, "guard.pt2 exists: pass --overwrite")

    def full_disk(guard, path, example):  # dies half-way through its files
        Path(f"{path}.pt2").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(guarded_mod, "export_guarded", full_disk)
    rc, _, err = _run(argv + ["--overwrite"], capsys)
    assert rc == 2 and "Traceback" not in err  # after the stages done, one error line
    assert err.strip().splitlines()[-1] == ("advdet guard export: error: No space left on "
                                            "device (free disk space or choose another --out)")
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before
