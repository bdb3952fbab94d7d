"""Tests of sklearn_advdet.deep.attacks on a tiny CNN trained on the 8x8 digits.

The CNN is trained here (a few seconds, seeded) rather than taken from
``sklearn_advdet.deep.digits`` so that these tests pin the attacks alone.
The cross-checks against torchattacks (marker ``crosscheck``) run where it
is installed (the crosscheck extra) and skip with the reason elsewhere.
"""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sklearn_advdet.deep import attacks as A
from sklearn_advdet.deep.attacks import ATTACKS, AttackResult, eps_from_255, run_attack

EPS = 0.1
# keyword arguments that keep each attack quick on the tiny model
FAST = {
    "fgsm": {},
    "bim": {},
    "pgd": {},
    "mifgsm": {},
    "lbfgs": {"binary_search_steps": 3, "max_iter": 30},
    "gaussian_noise": {},
    "sign_noise": {},
    "iterative_target_class": {},
    "apgd": {"n_iter": 10},
}
RANDOM = ["pgd", "lbfgs", "gaussian_noise", "sign_noise", "iterative_target_class", "apgd"]
# the minimal-perturbation attacks take no eps: their contract is tested in
# test_attacks_boundary.py
NO_BUDGET = ["cw_l2", "deepfool"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny models: one thread is faster, and much faster on a shared machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _DigitsCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        # normalisation inside the model: it takes images in [0, 1]
        self.register_buffer("mean", torch.tensor(0.3))
        self.register_buffer("std", torch.tensor(0.4))
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(16 * 16, 10),
        )

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


@pytest.fixture(scope="module")
def digits():
    """(model, X_test, y_test, test accuracy) with a seeded CNN."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    gen = torch.Generator().manual_seed(0)
    model = _DigitsCNN()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                bound = (3.0 / p[0].numel()) ** 0.5
                p.uniform_(-bound, bound, generator=gen)
            else:
                p.zero_()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(X_tr), torch.from_numpy(y_tr)
    for _ in range(10):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(X_te)).argmax(1).numpy()
    return model, X_te, y_te, float((pred == y_te).mean())


@pytest.fixture(scope="module")
def batch(digits):
    """The first 120 correctly classified test images, as tensors."""
    model, X, y, _ = digits
    with torch.no_grad():
        ok = model(torch.from_numpy(X)).argmax(1).numpy() == y
    idx = np.flatnonzero(ok)[:120]
    return torch.from_numpy(X[idx]), torch.from_numpy(y[idx])


def _linf(a, b):
    return (a - b).abs().flatten(1).max(1).values


def test_digits_model_is_accurate(digits):
    assert digits[3] > 0.9


def test_eps_from_255():
    assert eps_from_255(8) == 8 / 255
    assert eps_from_255(0) == 0.0
    with pytest.raises(ValueError, match="0, 255"):
        eps_from_255(-1)
    with pytest.raises(ValueError, match="finite"):
        eps_from_255(float("nan"))


# --------------------------------------------------------------------------
# contract of every attack


def test_registry_names():
    assert set(ATTACKS) == {
        "fgsm", "bim", "pgd", "mifgsm", "lbfgs", "gaussian_noise", "sign_noise",
        "iterative_target_class", "cw_l2", "deepfool", "apgd",
    }
    assert set(ATTACKS) == set(FAST) | set(NO_BUDGET)


@pytest.mark.parametrize("name", sorted(FAST))
def test_stays_in_ball_and_box_and_leaves_input_alone(name, digits, batch):
    model = digits[0]
    x, y = batch
    x, y = x[:40], y[:40]
    x_before = x.clone()
    res = ATTACKS[name](model, x, y, EPS, random_state=0, **FAST[name])
    assert isinstance(res, AttackResult)
    assert torch.equal(x, x_before)
    assert res.images.shape == x.shape
    assert res.images.dtype == x.dtype and res.images.device == x.device
    assert _linf(res.images, x).max() <= EPS + 1e-6
    assert res.images.min() >= 0 and res.images.max() <= 1
    # something moved, and the report matches the images
    assert _linf(res.images, x).max() > EPS / 2
    with torch.no_grad():
        pred = model(res.images).argmax(1)
    assert torch.equal(res.predictions, pred)
    expected = pred == res.target if res.target is not None else pred != y
    assert res.success.dtype == torch.bool
    assert torch.equal(res.success, expected)


def test_lbfgs_without_eps_stays_in_box(digits, batch):
    x, y = batch[0][:10], batch[1][:10]
    res = A.lbfgs(digits[0], x, y, random_state=0, binary_search_steps=2, max_iter=20)
    assert res.images.min() >= 0 and res.images.max() <= 1


@pytest.mark.parametrize("name", sorted(FAST))
def test_deterministic_under_a_seed(name, digits, batch):
    model = digits[0]
    x, y = batch[0][:30], batch[1][:30]
    kwargs = dict(FAST[name], random_state=3)
    r1 = ATTACKS[name](model, x, y, EPS, **kwargs)
    r2 = ATTACKS[name](model, x, y, EPS, **kwargs)
    assert torch.equal(r1.images, r2.images)
    assert torch.equal(r1.success, r2.success)
    if name in RANDOM:
        r3 = ATTACKS[name](model, x, y, EPS, **dict(kwargs, random_state=4))
        assert not torch.equal(r1.images, r3.images)


def test_random_targets_are_seeded_and_never_the_label(digits, batch):
    model = digits[0]
    x, y = batch
    t1 = A.fgsm(model, x, y, EPS, targeted=True, random_state=0).target
    t2 = A.fgsm(model, x, y, EPS, targeted=True, random_state=0).target
    t3 = A.fgsm(model, x, y, EPS, targeted=True, random_state=1).target
    assert torch.equal(t1, t2) and not torch.equal(t1, t3)
    assert not (t1 == y).any()
    assert len(torch.unique(t1)) == 10


def test_model_mode_and_requires_grad_restored(digits, batch):
    model = digits[0]
    x, y = batch[0][:8], batch[1][:8]
    model.train()
    model.net[0].eval()  # a mixed state must come back as it was
    model.net[6].weight.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    before_modes = [m.training for m in model.modules()]
    before_grads = [p.requires_grad for p in model.parameters()]
    try:
        A.pgd(model, x, y, EPS, random_state=0)
        assert [m.training for m in model.modules()] == before_modes
        assert [p.requires_grad for p in model.parameters()] == before_grads
        assert all(p.grad is None for p in model.parameters())
        # and after a failure inside the attack (a label the model does not have)
        with pytest.raises(ValueError, match=r"class indices in \[0, 10\)"):
            A.bim(model, x, torch.full_like(y, 12), EPS)
        assert [m.training for m in model.modules()] == before_modes
        assert [p.requires_grad for p in model.parameters()] == before_grads
    finally:
        model.net[6].weight.requires_grad_(True)
        model.eval()


def test_attacks_run_in_eval_mode(digits, batch):
    # with dropout in train mode FGSM would not be deterministic
    model = torch.nn.Sequential(digits[0], torch.nn.Dropout(0.5))
    model.train()
    x, y = batch[0][:20], batch[1][:20]
    r1 = A.fgsm(model, x, y, EPS)
    r2 = A.fgsm(model, x, y, EPS)
    assert torch.equal(r1.images, r2.images)
    assert torch.equal(r1.images, A.fgsm(digits[0], x, y, EPS).images)
    assert model.training and model[1].training


# --------------------------------------------------------------------------
# the attacks work


def test_fooling_rates(digits, batch):
    model = digits[0]
    x, y = batch
    eps = 0.15
    rates = {
        name: ATTACKS[name](model, x, y, eps, random_state=0).success_rate
        for name in ("fgsm", "bim", "pgd", "mifgsm")
    }
    assert rates["fgsm"] > 0.5
    for name in ("bim", "pgd", "mifgsm"):
        assert rates[name] >= rates["fgsm"] - 0.02, rates
    assert rates["pgd"] >= rates["fgsm"] and rates["pgd"] > 0.75, rates
    # a smaller budget fools fewer
    assert A.fgsm(model, x, y, 0.05).success_rate < rates["fgsm"]
    # noise of the same budget fools far fewer than the gradient attacks
    assert A.sign_noise(model, x, y, eps, random_state=0).success_rate < rates["fgsm"] / 2


def test_targeted_attacks_reach_their_targets(digits, batch):
    model = digits[0]
    x, y = batch[0][:60], batch[1][:60]
    res = A.iterative_target_class(model, x, y, 0.3, random_state=0)
    assert res.target is not None and not (res.target == y).any()
    assert res.success_rate > 0.8
    assert torch.equal(res.success, res.predictions == res.target)
    # an explicit target array
    target = (y + 1) % 10
    res = A.pgd(model, x, y, 0.3, targeted=True, target=target, n_iter=20, random_state=0)
    assert torch.equal(res.target, target)
    assert res.success_rate > 0.8


def test_iterative_target_class_default_steps_reach_the_ball(digits, batch):
    # 20 steps of 1/255 reach only 20/255: larger budgets need more steps
    x, y = batch[0][:10], batch[1][:10]
    res = A.iterative_target_class(digits[0], x, y, 0.3, random_state=0)
    assert _linf(res.images, x).max() > 0.29


def test_lbfgs_succeeds_with_smaller_l2_than_targeted_fgsm(digits, batch):
    """L-BFGS minimises the L2 norm: compare it with FGSM aimed at the same
    target, per image, at the smallest FGSM eps (1/255 grid) that reaches it."""
    model = digits[0]
    x, y = batch[0][:24], batch[1][:24]
    res = A.lbfgs(model, x, y, random_state=0, binary_search_steps=5, max_iter=50)
    assert res.success_rate >= 0.8
    l2 = (res.images - x).flatten(1).norm(dim=1).numpy()
    linf = _linf(res.images, x).numpy()
    fgsm_l2 = np.full(len(x), np.inf)
    fgsm_eps = np.full(len(x), np.inf)
    for k in range(255, 0, -1):
        f = A.fgsm(model, x, y, k / 255, targeted=True, target=res.target)
        ok = f.success.numpy()
        fgsm_eps[ok] = k / 255
        fgsm_l2[ok] = (f.images - x).flatten(1).norm(dim=1).numpy()[ok]
    both = res.success.numpy() & np.isfinite(fgsm_l2)
    assert both.sum() >= 15
    assert np.mean(l2[both] < fgsm_l2[both]) >= 0.9
    assert np.median(l2[both]) < 0.8 * np.median(fgsm_l2[both])
    # the L2-minimal perturbation piles up on a few pixels of the 8x8 images:
    # its L-inf norm is NOT smaller than FGSM's here (see the module report)
    assert np.all(linf[both] > 0)


# --------------------------------------------------------------------------
# noise statistics


def test_sign_noise_is_plus_minus_eps(digits):
    x = torch.full((200, 1, 8, 8), 0.5)
    y = torch.zeros(200, dtype=torch.long)
    res = A.sign_noise(digits[0], x, y, 0.25, random_state=0)
    delta = res.images - x
    assert torch.equal(delta.abs(), torch.full_like(delta, 0.25))
    assert abs(float((delta > 0).float().mean()) - 0.5) < 0.02
    # clipping at the box
    res = A.sign_noise(digits[0], torch.zeros_like(x), y, 0.25, random_state=0)
    assert set(torch.unique(res.images).tolist()) == {0.0, 0.25}


def test_gaussian_noise_statistics(digits):
    x = torch.full((200, 1, 8, 8), 0.5)
    y = torch.zeros(200, dtype=torch.long)
    delta = (A.gaussian_noise(digits[0], x, y, std=0.05, random_state=0).images - x).numpy()
    assert abs(delta.mean()) < 0.002
    assert abs(delta.std() - 0.05) < 0.05 * 0.03
    # with eps: std = eps / 2 and the noise clipped at +/-eps (2 std: 4.55 %)
    delta = (A.gaussian_noise(digits[0], x, y, 0.1, random_state=0).images - x).numpy()
    assert np.abs(delta).max() <= 0.1 + 1e-6
    clipped = np.mean(np.abs(delta) >= 0.1 - 1e-6)
    assert abs(clipped - 0.0455) < 0.01
    inner = delta[np.abs(delta) < 0.05]  # within one std
    assert abs(inner.size / delta.size - 0.6827) < 0.02


# --------------------------------------------------------------------------
# quantisation


@pytest.mark.parametrize("name", sorted(FAST))
def test_quantize_gives_8bit_levels_inside_the_ball(name, digits, batch):
    model = digits[0]
    x = torch.round(batch[0][:20] * 255) / 255  # 8-bit images
    y = batch[1][:20]
    eps = eps_from_255(20)
    res = ATTACKS[name](model, x, y, eps, quantize=True, random_state=0, **FAST[name])
    levels = res.images * 255
    assert torch.allclose(levels, torch.round(levels), atol=1e-3)
    assert _linf(res.images, x).max() <= eps + 1e-6
    with torch.no_grad():
        assert torch.equal(res.predictions, model(res.images).argmax(1))


def test_quantize_is_off_by_default(digits, batch):
    x, y = batch[0][:20], batch[1][:20]
    res = A.mifgsm(digits[0], x, y, EPS)  # steps of eps/10 from images in 1/16 units
    levels = res.images * 255
    assert not torch.allclose(levels, torch.round(levels), atol=1e-3)


# --------------------------------------------------------------------------
# driver


def test_run_attack_batches_numpy_and_matches_direct_call(digits, batch):
    model = digits[0]
    x, y = batch[0][:50], batch[1][:50]
    direct = A.bim(model, x, y, EPS, n_iter=5)
    res = run_attack(
        "bim", model, x.numpy(), y.numpy(), eps=EPS, batch_size=16, device="cpu", n_iter=5
    )
    assert res.images.device.type == "cpu"
    assert torch.equal(res.images, direct.images)
    assert torch.equal(res.success, direct.success)
    # float64 in, float64 out
    res64 = run_attack("fgsm", model, x.double().numpy(), y.numpy(), eps=EPS, batch_size=7)
    assert res64.images.dtype == torch.float64
    assert torch.allclose(res64.images.float(), A.fgsm(model, x, y, EPS).images, atol=1e-6)


def test_run_attack_is_seeded_and_passes_targets(digits, batch):
    model = digits[0]
    x, y = batch[0][:40], batch[1][:40]
    kw = dict(eps=EPS, batch_size=16, random_state=0)
    r1 = run_attack("pgd", model, x, y, **kw)
    r2 = run_attack("pgd", model, x, y, **kw)
    assert torch.equal(r1.images, r2.images)
    r3 = run_attack("pgd", model, x, y, **dict(kw, random_state=1))
    assert not torch.equal(r1.images, r3.images)
    target = ((y + 2) % 10).numpy()
    res = run_attack("iterative_target_class", model, x, y, eps=0.3, batch_size=16,
                     target=target)
    assert torch.equal(res.target, torch.from_numpy(target))
    keep = y != 3
    res = run_attack("fgsm", model, x[keep], y[keep], eps=EPS, targeted=True, target=3)
    assert torch.equal(res.target, torch.full((int(keep.sum()),), 3))
    with pytest.raises(ValueError, match="equals the true label for"):
        run_attack("fgsm", model, x, y, eps=EPS, targeted=True, target=3)
    # random targets drawn batch after batch are not repeated per batch
    res = run_attack("iterative_target_class", model, x, y, eps=EPS, batch_size=8,
                     random_state=0)
    assert not torch.equal(res.target[:8] - y[:8], res.target[8:16] - y[8:16])


def test_run_attack_progress_bar(digits, batch, capsys, monkeypatch):
    # one bar per attack over its batches (the package shows bars on a
    # terminal only: pretend stderr is one), nothing when progress=False
    from sklearn_advdet import _progress

    monkeypatch.setattr(_progress, "_is_terminal", lambda stream: True)
    x, y = batch[0][:20], batch[1][:20]
    res = run_attack("fgsm", digits[0], x, y, eps=EPS, batch_size=8, progress=True)
    assert len(res) == 20
    err = capsys.readouterr().err
    assert "fgsm" in err and "3/3" in err
    run_attack("fgsm", digits[0], x, y, eps=EPS, batch_size=8, progress=False)
    assert capsys.readouterr().err == ""


def test_run_attack_empty_input(digits):
    res = run_attack("pgd", digits[0], np.zeros((0, 1, 8, 8), np.float32),
                     np.zeros(0, int), eps=EPS)
    assert res.images.shape == (0, 1, 8, 8) and res.success.shape == (0,)


# --------------------------------------------------------------------------
# errors


def test_bad_inputs_give_clear_errors(digits, batch):
    model = digits[0]
    x, y = batch[0][:4], batch[1][:4]
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        run_attack("cw", model, x, y, eps=EPS)
    with pytest.raises(ValueError, match=r"eps_from_255\(8\)"):
        run_attack("fgsm", model, x, y, eps=8)
    with pytest.raises(ValueError, match=r"eps_from_255\(8\)"):
        A.pgd(model, x, y, 8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run_attack("fgsm", model, x, y, eps=-0.1)
    with pytest.raises(ValueError, match="fgsm needs eps"):
        run_attack("fgsm", model, x, y)
    with pytest.raises(ValueError, match="std"):
        A.gaussian_noise(model, x, y)
    with pytest.raises(TypeError, match="divide uint8 images by 255"):
        A.fgsm(model, (x * 255).to(torch.uint8), y, EPS)
    with pytest.raises(ValueError, match=r"in \[0, 1\].*divide by 255"):
        A.fgsm(model, x * 255, y, EPS)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        A.fgsm(model, x, y[:3], EPS)
    with pytest.raises(TypeError, match="integer class indices"):
        A.fgsm(model, x, y.float(), EPS)
    with pytest.raises(ValueError, match="targeted=False"):
        A.fgsm(model, x, y, EPS, target=(y + 1) % 10)
    with pytest.raises(ValueError, match="equals the true label"):
        A.bim(model, x, y, EPS, targeted=True, target=y)
    with pytest.raises(ValueError, match="batch_size"):
        run_attack("fgsm", model, x, y, eps=EPS, batch_size=0)
    with pytest.raises(ValueError, match="n_iter"):
        A.pgd(model, x, y, EPS, n_iter=0)
    with pytest.raises(ValueError, match=r"alpha=2 .*eps_from_255\(2\)"):
        A.bim(model, x, y, EPS, alpha=2)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        A.fgsm(model, "images", y, EPS)
    with pytest.raises(ValueError, match=r"NHWC.*x\.permute\(0, 3, 1, 2\)"):
        A.fgsm(model, torch.rand(4, 8, 8, 1), y, EPS)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        run_attack("pgd", model, bad, y, eps=EPS)


@pytest.mark.parametrize("name", sorted(FAST))
def test_an_impossible_label_is_a_value_error_for_every_attack(digits, batch, name):
    """A label == n_classes: a ValueError naming the range, never torch's
    IndexError and never a "success" against a class the model lacks."""
    model = digits[0]
    x, y = batch[0][:4], batch[1][:4].clone()
    y[1] = 10
    kw = dict(FAST[name], eps=EPS)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 10\)"):
        ATTACKS[name](model, x, y, random_state=0, **kw)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 10\)"):
        run_attack(name, model, x, y, device="cpu", random_state=0, **kw)


def test_an_impossible_target_is_a_value_error(digits, batch):
    model = digits[0]
    x, y = batch[0][:4], batch[1][:4]
    with pytest.raises(ValueError, match=r"target must be class indices in \[0, 10\)"):
        A.fgsm(model, x, y, EPS, targeted=True, target=10)
    with pytest.raises(ValueError, match="target=10 is not a class"):
        run_attack("bim", model, x, y, eps=EPS, targeted=True, target=10, device="cpu")


def test_a_model_with_tuple_output_gets_a_clear_error(batch):
    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            z = self.fc(x.flatten(1))
            return z, x

    with pytest.raises(ValueError, match="not one logits tensor"):
        A.pgd(Pair(), batch[0][:4], batch[1][:4], EPS, random_state=0)


# --------------------------------------------------------------------------
# cross-checks against torchattacks (the crosscheck extra; skipped without it)


@pytest.fixture(scope="module")
def torchattacks():
    return pytest.importorskip(
        "torchattacks",
        reason="the torchattacks cross-checks need the crosscheck extra: "
        "pip install -e '.[crosscheck]' (torchvision pulls a large torch build)",
    )


@pytest.mark.crosscheck
def test_same_images_as_torchattacks(torchattacks, digits, batch):
    model = digits[0]
    x, y = batch
    ta = torchattacks
    pairs = [
        (A.fgsm(model, x, y, EPS), ta.FGSM(model, eps=EPS)),
        (A.bim(model, x, y, EPS, alpha=0.01, n_iter=15), ta.BIM(model, eps=EPS, alpha=0.01, steps=15)),
        # default steps: Kurakin et al.'s rule on both sides
        (A.bim(model, x, y, EPS), ta.BIM(model, eps=EPS, alpha=1 / 255, steps=0)),
        (
            A.mifgsm(model, x, y, EPS, alpha=0.01, n_iter=15, decay=1.0),
            ta.MIFGSM(model, eps=EPS, alpha=0.01, steps=15, decay=1.0),
        ),
        (
            A.mifgsm(model, x, y, EPS, decay=0.5),
            ta.MIFGSM(model, eps=EPS, alpha=EPS / 10, steps=10, decay=0.5),
        ),
        (
            A.pgd(model, x, y, EPS, alpha=0.01, n_iter=15, random_start=False),
            ta.PGD(model, eps=EPS, alpha=0.01, steps=15, random_start=False),
        ),
    ]
    for ours, theirs in pairs:
        assert torch.allclose(ours.images, theirs(x, y), atol=1e-6, rtol=0), theirs


@pytest.mark.crosscheck
def test_same_images_as_torchattacks_on_a_resnet(torchattacks, monkeypatch):
    # 3-channel convolutions, where the layout matters: with the contiguous
    # layout the images are torchattacks' to float tolerance
    from sklearn_advdet.deep.models import cifar_resnet

    monkeypatch.setattr(A, "CPU_CHANNELS_LAST", False)
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(8, 3, 32, 32, generator=gen)
    y = torch.randint(10, (8,), generator=gen)
    eps = 8 / 255
    for ours, theirs in [
        (A.fgsm(model, x, y, eps), torchattacks.FGSM(model, eps=eps)),
        (
            A.bim(model, x, y, eps, alpha=2 / 255, n_iter=5),
            torchattacks.BIM(model, eps=eps, alpha=2 / 255, steps=5),
        ),
        (
            A.mifgsm(model, x, y, eps, alpha=2 / 255, n_iter=5),
            torchattacks.MIFGSM(model, eps=eps, alpha=2 / 255, steps=5),
        ),
    ]:
        assert torch.allclose(ours.images, theirs(x, y), atol=1e-6, rtol=0), theirs


@pytest.mark.crosscheck
def test_same_targeted_images_as_torchattacks(torchattacks, digits, batch):
    model = digits[0]
    x, y = batch
    target = (y + 3) % 10
    for ours, theirs in [
        (A.fgsm(model, x, y, EPS, targeted=True, target=target), torchattacks.FGSM(model, eps=EPS)),
        (
            A.bim(model, x, y, EPS, alpha=0.01, n_iter=15, targeted=True, target=target),
            torchattacks.BIM(model, eps=EPS, alpha=0.01, steps=15),
        ),
        (
            A.mifgsm(model, x, y, EPS, targeted=True, target=target),
            torchattacks.MIFGSM(model, eps=EPS, alpha=EPS / 10, steps=10),
        ),
    ]:
        theirs.set_mode_targeted_by_function(lambda images, labels: (labels + 3) % 10, quiet=True)
        assert torch.allclose(ours.images, theirs(x, y), atol=1e-6, rtol=0), theirs


@pytest.mark.crosscheck
def test_pgd_success_at_least_torchattacks(torchattacks, digits, batch):
    """Same algorithm, different random starts: compare the success rate
    summed over several starts, with a margin for the sampling noise."""
    model = digits[0]
    x, y = batch
    eps, alpha, steps = 0.1, 0.01, 10
    ours = theirs = 0.0
    rng = torch.get_rng_state()
    try:
        torch.manual_seed(0)  # torchattacks draws its start from the global RNG
        for seed in range(4):
            ours += A.pgd(model, x, y, eps, alpha=alpha, n_iter=steps, random_state=seed).success_rate
            adv = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps)(x, y)
            with torch.no_grad():
                theirs += float((model(adv).argmax(1) != y).float().mean())
    finally:
        torch.set_rng_state(rng)
    assert ours / 4 >= theirs / 4 - 0.02, (ours / 4, theirs / 4)


@pytest.fixture(scope="module")
def cifar_resnet20(shared_data):
    """The published ResNet-20 and its first 128 CIFAR-10 test JPEGs (13 per class)."""
    from sklearn_advdet.deep.data import load_image_folder
    from sklearn_advdet.deep.models import cifar_resnet

    model = cifar_resnet(20, weights=str(shared_data / "weights" / "resnet20-12fca82f.th"))
    images, labels, _ = load_image_folder(str(shared_data / "cifar10-jpeg" / "test.tar"),
                                          per_class=13)
    x = torch.from_numpy(images[:128].astype(np.float32) / 255.0)
    return model.eval(), x, torch.from_numpy(labels[:128]).long()


@pytest.mark.crosscheck
@pytest.mark.shared_data
def test_default_layout_is_within_the_documented_tolerance_of_torchattacks(
    torchattacks, cifar_resnet20
):
    """channels_last (the CPU default) against torchattacks on ResNet-20:
    the tolerance documented at CPU_CHANNELS_LAST, asserted as documented."""
    from sklearn_advdet.deep.attacks._base import CHANNELS_LAST_TOLERANCE as TOL

    model, x, y = cifar_resnet20
    eps, alpha, steps = 8 / 255, 2 / 255, 10
    figures = []
    for ours, theirs in [
        (A.bim(model, x, y, eps, alpha=alpha, n_iter=steps),
         torchattacks.BIM(model, eps=eps, alpha=alpha, steps=steps)),
        (A.pgd(model, x, y, eps, alpha=alpha, n_iter=steps, random_start=False),
         torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)),
        (A.mifgsm(model, x, y, eps, alpha=alpha, n_iter=steps),
         torchattacks.MIFGSM(model, eps=eps, alpha=alpha, steps=steps)),
    ]:
        adv = theirs(x, y)
        apart = (ours.images * 255).round() != (adv * 255).round()  # >= 1 level apart
        pixels = float(apart.float().mean())
        images = float(apart.flatten(1).any(1).float().mean())
        assert float((ours.images - x).abs().max()) <= eps + 1e-6
        with torch.no_grad():
            theirs_success = model(adv).argmax(1) != y
        agree = float((ours.success == theirs_success).float().mean())
        figures.append((type(theirs).__name__, pixels, images, agree))
    # all three measured before any bound is asserted, so a failure shows them all
    print("attack, pixels apart, images apart, success agreement:", figures)
    for name, pixels, images, agree in figures:
        assert pixels <= TOL["pixels"] and images <= TOL["images"], (name, pixels, images)
        assert agree >= TOL["success_agreement"], (name, agree)


@pytest.mark.crosscheck
def test_cw_l2_at_least_as_strong_as_torchattacks(torchattacks, digits, batch):
    model = digits[0]
    x, y = batch
    theirs = torchattacks.CW(model, c=1, kappa=0, steps=50, lr=0.01)(x, y)
    ours = A.cw_l2(model, x, y)
    _at_least_as_strong(model, x, y, ours, theirs)


@pytest.mark.crosscheck
def test_deepfool_at_least_as_strong_as_torchattacks(torchattacks, digits, batch):
    model = digits[0]
    x, y = batch[0][:60], batch[1][:60]
    theirs = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    ours = A.deepfool(model, x, y)
    _at_least_as_strong(model, x, y, ours, theirs)


def _at_least_as_strong(model, x, y, ours, theirs):
    """Success rate >= the peer's; median L2 <= 1.1x the peer's over the
    images both attacks fool (the same images on both sides)."""
    with torch.no_grad():
        t_success = model(theirs).argmax(1) != y
    both = ours.success & t_success
    o_l2 = (ours.images - x).flatten(1).norm(dim=1)[both]
    t_l2 = (theirs - x).flatten(1).norm(dim=1)[both]
    figures = (ours.success_rate, float(t_success.float().mean()), int(both.sum()),
               float(o_l2.median()), float(t_l2.median()))
    print("ours success, theirs success, both, ours median L2, theirs:", figures)
    assert ours.success_rate >= float(t_success.float().mean()), figures
    assert int(both.sum()) >= 10, figures
    assert float(o_l2.median()) <= 1.1 * float(t_l2.median()), figures


@pytest.mark.crosscheck
def test_apgd_robust_accuracy_at_most_torchattacks_plus_one_point(torchattacks, digits, batch):
    model = digits[0]
    x, y = batch
    eps = 0.05  # robust accuracy well inside (0, 1) on the digits CNN
    rng = torch.get_rng_state()
    try:
        theirs = torchattacks.APGD(model, eps=eps, steps=50, n_restarts=1, loss="ce", seed=0)(x, y)
    finally:
        torch.set_rng_state(rng)
    with torch.no_grad():
        t_robust = float((model(theirs).argmax(1) == y).float().mean())
    ours = A.apgd(model, x, y, eps, n_iter=50, random_state=0)
    o_robust = 1.0 - ours.success_rate
    print("APGD-CE robust accuracy ours, theirs:", o_robust, t_robust)
    assert 0.0 < t_robust < 1.0, t_robust
    assert o_robust <= t_robust + 0.01, (o_robust, t_robust)
    for loss in ["dlr"]:
        rng = torch.get_rng_state()
        try:
            theirs = torchattacks.APGD(model, eps=eps, steps=50, loss=loss, seed=0)(x, y)
        finally:
            torch.set_rng_state(rng)
        with torch.no_grad():
            t_robust = float((model(theirs).argmax(1) == y).float().mean())
        o_robust = 1.0 - A.apgd(model, x, y, eps, loss=loss, n_iter=50, random_state=0).success_rate
        print(f"APGD-{loss} robust accuracy ours, theirs:", o_robust, t_robust)
        assert o_robust <= t_robust + 0.01, (loss, o_robust, t_robust)


# ------------------------------------------------------- memory format
class _ViewNet(torch.nn.Module):
    """A conv net that flattens its un-pooled feature map with ``.view``:
    that needs contiguous memory, so a channels_last input makes it raise."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


def test_channels_last_fallback_for_a_model_that_needs_contiguous_input():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 8, 8, generator=gen)  # 3 channels: channels_last differs
    y = torch.randint(10, (16,), generator=gen)
    net = _ViewNet().eval()
    with pytest.raises(RuntimeError):
        net(x.contiguous(memory_format=torch.channels_last))
    res = A.bim(net, x, y, EPS, alpha=0.02, n_iter=5)
    assert net in A._CHANNELS_LAST_FAILED
    # a failed channels_last call, then contiguous ones only: the check of
    # the labels against the classes (the one that fails and its retry), 5
    # steps and the success check, + the one that raised above
    assert net.calls == 1 + 2 + 5 + 1
    # the same images as a plain contiguous loop
    adv, lo, hi = x.clone(), (x - EPS).clamp(min=0), (x + EPS).clamp(max=1)
    for _ in range(5):
        adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(net(adv), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, adv)
        adv = torch.clamp(adv.detach() + 0.02 * g.sign(), min=lo, max=hi)
    assert torch.equal(res.images, adv)
    assert torch.equal(res.success, net(adv).argmax(1) != y)


def test_channels_last_gives_the_images_of_contiguous_input(monkeypatch):
    from sklearn_advdet.deep.models import cifar_resnet

    torch.manual_seed(0)
    model = cifar_resnet(20).eval()  # 3-channel convolutions: the layouts differ
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(12, 3, 32, 32, generator=gen)
    y = torch.randint(10, (12,), generator=gen)
    # the same images up to the sign of numerically-zero gradient components
    # (a few pixels at most); with CPU_CHANNELS_LAST off, the plain
    # contiguous loop bit for bit
    for attack, kw in [(A.fgsm, {}), (A.bim, dict(alpha=0.01, n_iter=5))]:
        fast = attack(model, x, y, EPS, **kw)
        assert model not in A._CHANNELS_LAST_FAILED and fast.images.is_contiguous()
        with monkeypatch.context() as m:
            m.setattr(A, "CPU_CHANNELS_LAST", False)
            seen = []
            forward = model.forward
            m.setattr(model, "forward", lambda inp: seen.append(inp.is_contiguous()) or forward(inp))
            slow = attack(model, x, y, EPS, **kw)
        assert seen and all(seen)
        adv, lo, hi = x.clone(), (x - EPS).clamp(min=0), (x + EPS).clamp(max=1)
        alpha, n_iter = kw.get("alpha", EPS), kw.get("n_iter", 1)
        for _ in range(n_iter):
            adv.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(adv), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, adv)
            adv = torch.clamp(adv.detach() + alpha * g.sign(), min=lo, max=hi)
        assert torch.equal(slow.images, adv)
        differ = (fast.images - slow.images).abs() > 1e-6
        assert int(differ.sum()) <= 0.001 * differ.numel()
        # a flipped step moves a pixel by 2 alpha at most (less at a bound)
        assert float((fast.images - slow.images).abs().max()) <= 2 * alpha * n_iter + 1e-6


# --------------------------------------------------------------------------
# fuzz-suite regressions


def test_an_unknown_attack_parameter_names_the_accepted_ones(digits, batch):
    # was: Python's "lbfgs() got an unexpected keyword argument 'n_iter'"
    x, y = batch
    with pytest.raises(TypeError, match=r"lbfgs takes no parameter 'n_iter': its "
                                        r"parameters are \[.*'max_iter'"):
        run_attack("lbfgs", digits[0], x[:2], y[:2], n_iter=3, device="cpu")
    with pytest.raises(TypeError, match="deepfool takes no parameter 'target'"):
        run_attack("deepfool", digits[0], x[:2], y[:2], target=1, device="cpu")


def test_lbfgs_with_a_zero_budget_returns_the_images(digits, batch):
    # was: scipy's read-only result went into torch.as_tensor (a UserWarning)
    x, y = batch
    res = A.lbfgs(digits[0], x[:3], y[:3], 0.0, binary_search_steps=1, max_iter=2)
    assert torch.equal(res.images, x[:3]) and not res.success.any()


def test_images_the_model_cannot_take_are_a_value_error(digits, batch):
    # was: torch's RuntimeError from inside the convolution, and the model
    # marked as failing on channels_last input for good
    model = digits[0]
    x3 = batch[0][:2].repeat(1, 3, 1, 1)  # 3 channels for a 1-channel model
    for call in (lambda: run_attack("fgsm", model, x3, batch[1][:2], eps=EPS, device="cpu"),
                 lambda: A.pgd(model, x3, batch[1][:2], EPS, n_iter=1)):
        with pytest.raises(ValueError, match=r"cannot take images of shape \(3, 8, 8\)"):
            call()
    assert model not in A._CHANNELS_LAST_FAILED
