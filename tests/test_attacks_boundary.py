"""CW-L2, DeepFool and APGD against the closed form of an affine classifier.

For logits ``z = W x + b`` the smallest perturbation that makes class ``j``
beat the label ``y`` has L2 norm ``(z_y - z_j) / ||w_y - w_j||_2`` and L-inf
norm ``(z_y - z_j) / ||w_y - w_j||_1``; the distance to the nearest boundary
is the minimum over ``j`` (computed here in float64, independently of the
attacks).  The images sit in [0.35, 0.65] and the distances are small, so
the [0, 1] box never binds.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sklearn_advdet.deep import attacks as A  # noqa: E402
from sklearn_advdet.deep.attacks import ATTACKS, run_attack  # noqa: E402

N_CLASSES, DIM = 10, 64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def affine():
    """(model, x, y, L2 distance, L-inf distance) of 64 images."""
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(DIM, N_CLASSES)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N_CLASSES, DIM, generator=gen) * 0.5)
        lin.bias.copy_(torch.randn(N_CLASSES, generator=gen) * 0.1)
    model = torch.nn.Sequential(torch.nn.Flatten(), lin).eval()
    x = 0.35 + 0.3 * torch.rand(64, 1, 8, 8, generator=gen)
    W = lin.weight.detach().double().numpy()
    b = lin.bias.detach().double().numpy()
    z = x.flatten(1).double().numpy() @ W.T + b
    y = z.argmax(1)
    gap = z[np.arange(len(y)), y][:, None] - z  # (n, K) >= 0
    dW = W[y][:, None, :] - W[None, :, :]  # (n, K, D)
    with np.errstate(divide="ignore", invalid="ignore"):
        l2 = gap / np.linalg.norm(dW, axis=2)
        linf = gap / np.abs(dW).sum(axis=2)
    l2[np.arange(len(y)), y] = np.inf
    linf[np.arange(len(y)), y] = np.inf
    return model, x, torch.from_numpy(y), l2.min(1), linf.min(1)


def _l2(res, x):
    return (res.images - x).flatten(1).double().norm(dim=1).numpy()


def _linf(res, x):
    return (res.images - x).flatten(1).double().abs().amax(dim=1).numpy()


def _agrees_with_model(model, res, labels):
    with torch.no_grad():
        pred = model(res.images).argmax(1)
    assert torch.equal(res.predictions, pred)
    want = pred == res.target if res.target is not None else pred != labels
    assert torch.equal(res.success, want)


def test_the_box_never_binds(affine):
    _, x, _, l2, linf = affine
    assert float(x.min()) - linf.max() * 1.1 > 0 and float(x.max()) + linf.max() * 1.1 < 1
    assert np.all(np.isfinite(l2)) and np.all(l2 > 0)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_finds_the_nearest_boundary(affine, norm):
    model, x, y, l2, linf = affine
    res = A.deepfool(model, x, y, norm=norm)
    assert bool(res.success.all())
    dist, ref = (_l2(res, x), l2) if norm == "l2" else (_linf(res, x), linf)
    ratio = dist / ref
    # one linear step lands on the boundary, times 1 + overshoot
    assert ratio.min() >= 1.0 - 1e-4 and ratio.max() <= 1.1
    np.testing.assert_allclose(ratio, 1.02, rtol=2e-3)
    _agrees_with_model(model, res, y)
    # without overshoot it stops on the boundary, where it does not cross
    exact = A.deepfool(model, x, y, norm=norm, overshoot=0.0, n_iter=1)
    d0 = _l2(exact, x) if norm == "l2" else _linf(exact, x)
    np.testing.assert_allclose(d0, ref, rtol=2e-3)


def test_deepfool_candidates_limit_the_classes(affine):
    model, x, y, _, _ = affine
    # with 2 candidates only the runner-up of the clean logits is aimed at:
    # the result is the closed-form distance to that class's boundary
    W = model[1].weight.detach().double()
    b = model[1].bias.detach().double()
    z = x.flatten(1).double() @ W.T + b
    runner_up = z.scatter(1, y[:, None], -float("inf")).argmax(1)
    idx = torch.arange(len(y))
    ref = ((z[idx, y] - z[idx, runner_up]) / (W[y] - W[runner_up]).norm(dim=1)).numpy()
    res = A.deepfool(model, x, y, n_candidates=2)
    assert bool(res.success.all())
    np.testing.assert_allclose(_l2(res, x) / ref, 1.02, rtol=2e-3)


def test_cw_l2_finds_the_nearest_boundary(affine):
    model, x, y, l2, _ = affine
    res = A.cw_l2(model, x, y, n_iter=200, binary_search_steps=4)
    assert bool(res.success.all())
    ratio = _l2(res, x) / l2
    # never inside the boundary (every result is adversarial), within 10 %
    assert ratio.min() >= 1.0 - 1e-4 and ratio.max() <= 1.1, (ratio.min(), ratio.max())
    _agrees_with_model(model, res, y)


def test_cw_l2_targeted_reaches_the_target_at_its_distance(affine):
    model, x, y, _, _ = affine
    target = (y + 1) % N_CLASSES
    res = A.cw_l2(model, x, y, targeted=True, target=target, n_iter=200, binary_search_steps=6)
    assert bool(res.success.all())
    _agrees_with_model(model, res, y)
    # the smallest step that makes the target the argmax is at least its
    # pairwise distance to every class, and the target's own boundary
    # distance (z_y - z_t) / ||w_y - w_t|| is a lower bound
    W = model[1].weight.detach().double()
    b = model[1].bias.detach().double()
    z = x.flatten(1).double() @ W.T + b
    idx = torch.arange(len(y))
    lower = (z[idx, y] - z[idx, target]) / (W[y] - W[target]).norm(dim=1)
    assert np.all(_l2(res, x) >= lower.numpy() * (1 - 1e-4))


def test_cw_l2_confidence_puts_the_point_past_the_boundary(affine):
    model, x, y, _, _ = affine
    res = A.cw_l2(model, x, y, confidence=2.0, n_iter=100, binary_search_steps=4)
    with torch.no_grad():
        z = model(res.images)
    own = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], -float("inf")).amax(1)
    assert bool((other - own >= 2.0 - 1e-4)[res.success].all()) and res.success_rate > 0.9


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_succeeds_just_above_the_closed_form_and_never_below(affine, loss):
    model, x, y, _, linf = affine
    above, below = [], []
    # one eps per image: batches of images sharing a budget rounded up/down
    for factor, out in [(1.05, above), (0.95, below)]:
        for i in range(len(y)):
            res = A.apgd(model, x[i : i + 1], y[i : i + 1], float(linf[i]) * factor,
                         loss=loss, n_iter=50, random_state=i)
            assert float(_linf(res, x[i : i + 1])[0]) <= float(linf[i]) * factor + 1e-6
            out.append(bool(res.success))
    assert np.mean(above) >= 0.95, np.mean(above)
    assert not any(below)


def test_apgd_restarts_only_run_the_images_still_correct(affine):
    model, x, y, _, linf = affine
    eps = float(np.median(linf))
    one = A.apgd(model, x, y, eps, n_iter=20, random_state=0)
    three = A.apgd(model, x, y, eps, n_iter=20, n_restarts=3, random_state=0)
    # the first restart is the same run; later ones only add successes
    assert bool((three.success | ~one.success).all())
    assert torch.equal(three.images[one.success], one.images[one.success])
    _agrees_with_model(model, three, y)
    assert float((three.images - x).abs().max()) <= eps + 1e-6


@pytest.mark.parametrize("name", ["cw_l2", "deepfool", "apgd"])
def test_new_attacks_are_registered_seeded_and_run_in_batches(affine, name):
    model, x, y, _, linf = affine
    eps = float(np.median(linf)) if name == "apgd" else None
    kw = {"n_iter": 20} if name != "deepfool" else {}
    assert ATTACKS[name] is getattr(A, name)
    a = run_attack(name, model, x, y, eps=eps, batch_size=16, device="cpu", random_state=3, **kw)
    b = run_attack(name, model, x, y, eps=eps, batch_size=16, device="cpu", random_state=3, **kw)
    assert torch.equal(a.images, b.images) and torch.equal(a.success, b.success)
    _agrees_with_model(model, a, y)
    q = run_attack(name, model, x, y, eps=eps, batch_size=64, device="cpu", random_state=3,
                   quantize=True, **kw)
    levels = q.images * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    _agrees_with_model(model, q, y)
    if name == "apgd":
        # the random start depends on the seed
        c = run_attack(name, model, x, y, eps=eps, batch_size=16, device="cpu",
                       random_state=4, **kw)
        assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("name", ["cw_l2", "deepfool"])
def test_minimal_attacks_stay_in_the_box_and_leave_the_input_alone(affine, name):
    model, x, y, _, _ = affine
    x = x.clone()
    x[0, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.0, 1.0])  # pixels on the box edges
    before = x.clone()
    kw = {"n_iter": 20, "binary_search_steps": 2} if name == "cw_l2" else {}
    res = ATTACKS[name](model, x, y, random_state=0, **kw)
    assert torch.equal(x, before)
    assert res.images.shape == x.shape and res.images.dtype == x.dtype
    assert float(res.images.min()) >= 0 and float(res.images.max()) <= 1
    assert float((res.images - x).abs().max()) > 0
    _agrees_with_model(model, res, y)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 10\)"):
        ATTACKS[name](model, x, torch.full_like(y, 10), **kw)


def test_new_attacks_give_clear_errors(affine):
    model, x, y, _, _ = affine
    x, y = x[:4], y[:4]
    with pytest.raises(ValueError, match="takes no eps budget"):
        A.deepfool(model, x, y, 0.1)
    with pytest.raises(ValueError, match="takes no eps budget"):
        run_attack("cw_l2", model, x, y, eps=0.1)
    with pytest.raises(ValueError, match="apgd needs eps"):
        A.apgd(model, x, y)
    with pytest.raises(ValueError, match="norm must be 'l2' or 'linf'"):
        A.deepfool(model, x, y, norm="l1")
    with pytest.raises(ValueError, match="loss must be 'ce' or 'dlr'"):
        A.apgd(model, x, y, 0.1, loss="hinge")
    with pytest.raises(ValueError, match="n_candidates"):
        A.deepfool(model, x, y, n_candidates=1)
    with pytest.raises(ValueError, match="confidence"):
        A.cw_l2(model, x, y, confidence=-1)
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\)"):
        A.cw_l2(model, x, torch.full_like(y, 10))
    two = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(DIM, 2))
    with pytest.raises(ValueError, match="needs at least 3 classes"):
        A.apgd(two, x, torch.zeros_like(y), 0.1, loss="dlr")


def test_already_misclassified_images_are_left_alone(affine):
    model, x, y, _, _ = affine
    wrong = (y + 1) % N_CLASSES
    res = A.deepfool(model, x[:8], wrong[:8])
    assert bool(res.success.all()) and torch.equal(res.images, x[:8])
    res = A.cw_l2(model, x[:8], wrong[:8], n_iter=5, binary_search_steps=1)
    assert bool(res.success.all())
    assert float((res.images - x[:8]).abs().max()) < 1e-5  # tanh round trip
