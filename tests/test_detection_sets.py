"""build_detection_set: invariants, independent checks, feature stores, resume."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import sklearn_advdet.deep.attack_sets as detection
from sklearn_advdet.deep.attack_sets import AttackSpec, build_detection_set, parse_attacks
from sklearn_advdet.deep.digits import torch_threads, train_digits_cnn

ATTACKS = [
    ("fgsm", [0.1, 0.2]),
    ("sign_noise", 0.3),
    ("iterative_target_class", 0.2, {"alpha": 0.02, "n_iter": 20}),
    ("lbfgs", None, {"max_images": 20, "binary_search_steps": 3, "max_iter": 20}),
]
KEYS = ("X", "y", "groups", "attack", "eps", "true_class", "pred_class", "target",
        "X_ref", "y_ref", "X_errors", "errors_groups", "errors_true_class",
        "errors_pred_class")


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny model: extra threads only add synchronisation cost (a lot of it on
    # a busy CI machine)
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def setup():
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target
    X_tr, X_te, y_tr, y_te = train_test_split(
        images, labels, test_size=0.5, stratify=labels, random_state=1)
    X_te, y_te = X_te[:300], y_te[:300]
    # a briefly trained model, so that it makes a few natural errors too
    with torch_threads(1):
        model = train_digits_cnn(X_tr, y_tr, epochs=4, random_state=1)
        data = build_detection_set(model, X_tr, y_tr, X_te, y_te, attacks=ATTACKS,
                                   device="cpu", batch_size=128, random_state=0)
    return model, X_tr, y_tr, X_te, y_te, data


def _forward(model, x):
    """Pooled block outputs and logits by hand (no hooks)."""
    x = torch.as_tensor(x)
    with torch.no_grad():
        h1 = model.conv1(x)
        h2 = model.conv2(h1)
        h3 = model.conv3(model.pool(h2))
        h4 = model.fc1(h3)
        logits = model.fc2(h4)
    return torch.cat([h1.mean((2, 3)), h2.mean((2, 3)), h3.mean((2, 3)), h4, logits],
                     1).numpy()


def _assert_same(a, b):
    for k in KEYS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_reference_set_is_the_training_features(setup):
    model, X_tr, y_tr, *_, data = setup
    np.testing.assert_array_equal(data.y_ref, y_tr)
    np.testing.assert_allclose(data.X_ref, _forward(model, X_tr), rtol=1e-5, atol=1e-5)
    assert data.layout.has_logits and data.layout.n_features == data.X.shape[1]
    assert data.layer_names == ["conv1", "conv2", "conv3", "fc1"]


def test_authentic_rows_and_natural_errors(setup):
    model, *_, X_te, y_te, data = setup
    feats = _forward(model, X_te)
    pred = feats[:, -10:].argmax(1)
    correct = np.flatnonzero(pred == y_te)
    wrong = np.flatnonzero(pred != y_te)
    assert wrong.size > 0, "the fixture model should make a few natural errors"
    auth = data.attack == "authentic"
    np.testing.assert_array_equal(data.groups[auth], correct)
    assert np.all(data.y[auth] == 0) and np.all(np.isnan(data.eps[auth]))
    np.testing.assert_array_equal(data.pred_class[auth], data.true_class[auth])
    np.testing.assert_array_equal(data.true_class[auth], y_te[correct])
    np.testing.assert_allclose(data.X[auth], feats[correct], rtol=1e-5, atol=1e-5)
    # natural errors: exactly the misclassified test images, kept apart
    np.testing.assert_array_equal(data.errors_groups, wrong)
    np.testing.assert_array_equal(data.errors_true_class, y_te[wrong])
    np.testing.assert_array_equal(data.errors_pred_class, pred[wrong])
    np.testing.assert_allclose(data.X_errors, feats[wrong], rtol=1e-5, atol=1e-5)
    assert not set(data.groups.tolist()) & set(wrong.tolist())
    assert data.test_accuracy == pytest.approx(correct.size / y_te.size)


def test_row_invariants(setup):
    *_, y_te, data = setup
    # the predicted class is the argmax of each row's logits block
    np.testing.assert_array_equal(data.pred_class,
                                  data.X[:, data.layout.logits_slice].argmax(1))
    np.testing.assert_array_equal(data.true_class, y_te[data.groups])
    auth_groups = set(data.groups[data.attack == "authentic"].tolist())
    # adversarials come from correctly classified images and fool the model
    assert set(data.groups.tolist()) <= auth_groups
    adv = data.y == 1
    assert np.all(data.pred_class[adv] != data.true_class[adv])
    assert np.all(data.pred_class[~adv] == data.true_class[~adv])
    # targeted attacks reach their target; untargeted ones have none
    targeted = np.isin(data.attack, ["iterative_target_class", "lbfgs"])
    assert np.all(data.pred_class[targeted] == data.target[targeted])
    assert np.all(data.target[~targeted] == -1)
    # only noise images may be non-adversarial outside the authentic rows
    assert set(data.attack[~adv].tolist()) <= {"authentic", "sign_noise"}
    # no attack configuration uses a source image twice
    for a in set(data.attack.tolist()):
        for e in set(data.eps[data.attack == a].tolist()):
            sel = (data.attack == a) & ((data.eps == e) | np.isnan(data.eps))
            assert len(set(data.groups[sel].tolist())) == sel.sum()
    np.testing.assert_array_equal(np.unique(data.eps[data.attack == "fgsm"]), [0.1, 0.2])


def test_noise_images_that_stay_correct_are_authentic(setup):
    model, *_, X_te, y_te, data = setup
    noise = data.attack == "sign_noise"
    summary = {(s["attack"], s["eps"]): s for s in data.attack_summary}
    s = summary[("sign_noise", 0.3)]
    # every noisy image is kept, labelled by whether it still fools the model
    assert noise.sum() == s["n_attacked"] == (data.attack == "authentic").sum()
    assert s["n_authentic"] == (data.y[noise] == 0).sum() > 0
    assert s["n_adversarial"] == (data.y[noise] == 1).sum()
    np.testing.assert_array_equal(data.y[noise],
                                  data.pred_class[noise] != data.true_class[noise])
    assert np.all(data.eps[noise] == 0.3)


def test_fgsm_rows_match_an_independent_fgsm(setup):
    model, *_, X_te, y_te, data = setup
    auth = data.groups[data.attack == "authentic"]
    x = torch.as_tensor(X_te[auth]).requires_grad_(True)
    loss = F.cross_entropy(model(x), torch.as_tensor(y_te[auth]), reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    for eps in (0.1, 0.2):
        adv = (x.detach() + eps * grad.sign()).clamp(0, 1)
        feats = _forward(model, adv.numpy())
        fooled = feats[:, -10:].argmax(1) != y_te[auth]
        rows = (data.attack == "fgsm") & (data.eps == eps)
        np.testing.assert_array_equal(data.groups[rows], auth[fooled])
        np.testing.assert_allclose(data.X[rows], feats[fooled], rtol=1e-4, atol=1e-4)
        summary = [s for s in data.attack_summary if s["attack"] == "fgsm" and s["eps"] == eps]
        assert summary[0]["n_adversarial"] == fooled.sum() == rows.sum()


def test_transfer_attack_from_a_source_model(setup, tmp_path):
    """Crafted on another network, applied to the model: the rows are the images
    both classify correctly, fooled by FGSM on the source, still fooling the model."""
    model, X_tr, y_tr, X_te, y_te, data = setup
    source = train_digits_cnn(X_tr, y_tr, epochs=4, random_state=7)
    kwargs = dict(attacks=[("fgsm", 0.2)], device="cpu", batch_size=128, random_state=0)
    t = build_detection_set(model, X_tr, y_tr, X_te, y_te, source_model=source, **kwargs)
    np.testing.assert_array_equal(t.X[t.y == 0], data.X[data.attack == "authentic"])
    with torch.no_grad():
        both = ((model(torch.as_tensor(X_te)).argmax(1).numpy() == y_te)
                & (source(torch.as_tensor(X_te)).argmax(1).numpy() == y_te))
    idx = np.flatnonzero(both)
    x = torch.as_tensor(X_te[idx]).requires_grad_(True)
    loss = F.cross_entropy(source(x), torch.as_tensor(y_te[idx]), reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    adv = (x.detach() + 0.2 * grad.sign()).clamp(0, 1)
    with torch.no_grad():
        fools_source = (source(adv).argmax(1).numpy() != y_te[idx])
    feats = _forward(model, adv.numpy())
    fools_model = feats[:, -10:].argmax(1) != y_te[idx]
    rows = t.attack == "fgsm"
    np.testing.assert_array_equal(t.groups[rows], idx[fools_source & fools_model])
    np.testing.assert_allclose(t.X[rows], feats[fools_source & fools_model], rtol=1e-4,
                               atol=1e-4)
    s, = t.attack_summary
    assert s["n_attacked"] == both.sum() and s["n_success"] == fools_source.sum()
    assert s["n_inconsistent"] == (fools_source & ~fools_model).sum() > 0  # not all transfer
    # a stored build remembers its source model
    build_detection_set(model, X_tr, y_tr, X_te, y_te, source_model=source,
                        out_dir=tmp_path, **kwargs)
    with pytest.raises(ValueError, match="source_model"):
        build_detection_set(model, X_tr, y_tr, X_te, y_te, out_dir=tmp_path, **kwargs)


def test_max_images_subset(setup):
    *_, data = setup
    s = [s for s in data.attack_summary if s["attack"] == "lbfgs"][0]
    assert s["n_attacked"] == 20
    assert 0 < (data.attack == "lbfgs").sum() <= 20
    assert np.all(np.isnan(data.eps[data.attack == "lbfgs"]))


def test_in_memory_equals_feature_stores_and_resume(setup, tmp_path, monkeypatch):
    model, X_tr, y_tr, X_te, y_te, data = setup
    calls = []
    real = detection.run_attack

    def counting(name, *args, **kwargs):
        calls.append(name)
        if fail_on and name == fail_on:
            raise RuntimeError("injected failure")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(detection, "run_attack", counting)
    kwargs = dict(attacks=ATTACKS, device="cpu", batch_size=128, random_state=0,
                  out_dir=tmp_path)
    # an interrupted build: the third attack fails
    fail_on = "iterative_target_class"
    with pytest.raises(RuntimeError, match="injected"):
        build_detection_set(model, X_tr, y_tr, X_te, y_te, **kwargs)
    assert calls == ["fgsm", "fgsm", "sign_noise", "iterative_target_class"]
    # started again: only the unfinished attacks run, the result is the same
    calls.clear()
    fail_on = None
    resumed = build_detection_set(model, X_tr, y_tr, X_te, y_te, **kwargs)
    assert calls == ["iterative_target_class", "lbfgs"]
    _assert_same(resumed, data)
    # finished: nothing runs again
    calls.clear()
    again = build_detection_set(model, X_tr, y_tr, X_te, y_te, **kwargs)
    assert calls == []
    _assert_same(again, data)

    def counts(summary):
        return [{k: v for k, v in c.items() if k != "seconds"} for c in summary]

    assert counts(again.attack_summary) == counts(data.attack_summary)
    # every configuration's cost is recorded when it runs and kept by the cache: the
    # finished build reports the seconds of the runs that computed each attack
    assert all(c["seconds"] > 0 for c in data.attack_summary)
    assert again.attack_summary == resumed.attack_summary
    done = json.loads(next((tmp_path / "attacks").glob("lbfgs-*/attack.json")).read_text())
    assert done["summary"]["seconds"] == again.attack_summary[-1]["seconds"]
    assert (tmp_path / "reference" / "manifest.json").exists()
    # the same out_dir with other inputs is refused
    with pytest.raises(ValueError, match="other inputs"):
        build_detection_set(model, X_tr, y_tr, X_te[:100], y_te[:100], **kwargs)


def test_groups_keep_images_and_their_adversarials_together(setup):
    from sklearn.model_selection import GroupKFold

    *_, data = setup
    for train, test in GroupKFold(n_splits=4).split(data.X, data.y, data.groups):
        assert not set(data.groups[train].tolist()) & set(data.groups[test].tolist())


def test_parse_attacks():
    specs = parse_attacks({"fgsm": [0.1, 0.2], "lbfgs": None})
    assert [(s.name, s.eps) for s in specs] == [("fgsm", 0.1), ("fgsm", 0.2),
                                                ("lbfgs", None)]
    specs = parse_attacks([{"name": "pgd", "eps": 0.1, "label": "pgd-t",
                            "params": {"targeted": True}}, ("pgd", 0.1)])
    assert [s.attack for s in specs] == ["pgd-t", "pgd"]
    assert specs[0].params == {"targeted": True} and specs[0].key != specs[1].key
    assert parse_attacks([AttackSpec("fgsm", 0.1)])[0].describe() == "fgsm(eps=0.1)"


@pytest.mark.parametrize(
    "attacks, error, match",
    [
        (["nope"], ValueError, "unknown attack"),
        ([("fgsm", 0.1), ("fgsm", 0.1)], ValueError, "distinct 'label'"),
        ([("fgsm", 0.1, {"eps": 0.2})], ValueError, "second entry"),
        ([("fgsm", 0.1, {"max_images": 0})], ValueError, "max_images"),
        ([], ValueError, "at least one attack"),
        ([3], TypeError, "each attack"),
        ([{"eps": 0.1}], ValueError, "key 'name'"),
    ],
)
def test_parse_attacks_errors(attacks, error, match):
    with pytest.raises(error, match=match):
        parse_attacks(attacks)


def test_input_validation(setup):
    model, X_tr, y_tr, X_te, y_te, _ = setup
    with pytest.raises(ValueError, match="one class label per image"):
        build_detection_set(model, X_tr, y_tr[:-1], X_te, y_te, attacks=["fgsm"])
    with pytest.raises(TypeError, match="divide uint8"):
        build_detection_set(model, (X_tr * 255).astype(np.uint8), y_tr, X_te, y_te,
                            attacks=[("fgsm", 0.1)])
    with pytest.raises(ValueError, match="shape"):
        build_detection_set(model, X_tr, y_tr, X_te[:, :, :4], y_te,
                            attacks=[("fgsm", 0.1)])


# ------------------------------------------------------- fuzz-suite regressions
def test_bad_images_are_refused_before_out_dir_is_written(setup, tmp_path):
    model, X_tr, y_tr, X_te, y_te, _ = setup
    bad = X_te[:20].copy()
    bad[3, 0, 2, 2] = np.nan
    with pytest.raises(ValueError, match="test_images contain 1 NaN"):
        build_detection_set(model, X_tr, y_tr, bad, y_te[:20], attacks=[("fgsm", 0.1)],
                            device="cpu", out_dir=tmp_path / "set")
    with pytest.raises(TypeError, match="ref_labels must hold integer class indices"):
        build_detection_set(model, X_tr, y_tr + 0.5, X_te[:20], y_te[:20],
                            attacks=[("fgsm", 0.1)], device="cpu", out_dir=tmp_path / "set")
    assert not (tmp_path / "set").exists()


def test_an_attack_that_keeps_no_row_is_recorded_in_out_dir(setup, tmp_path):
    # was: FileNotFoundError writing attack.json into a folder never created
    # (no row kept: no store made)
    model, X_tr, y_tr, X_te, y_te, _ = setup
    kwargs = dict(attacks=[("fgsm", 0.0)], device="cpu", random_state=0,
                  out_dir=tmp_path / "set")
    data = build_detection_set(model, X_tr[:50], y_tr[:50], X_te[:20], y_te[:20], **kwargs)
    assert data.attack_summary[0]["n_adversarial"] == 0 and (data.y == 0).all()
    again = build_detection_set(model, X_tr[:50], y_tr[:50], X_te[:20], y_te[:20], **kwargs)
    _assert_same(again, data)
