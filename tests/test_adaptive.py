"""Adaptive attacks on classifier + detector (sklearn_advdet.deep.adaptive)."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from sklearn_advdet import KNNClassScorer, MLPDetector, PivotEmbedder
from sklearn_advdet.deep.adaptive import (GradientError, _orthogonal, adaptive_pgd,
                                          check_input_gradients, evaluate_guarded,
                                          orthogonal_pgd)
from sklearn_advdet.deep.attacks import AttackResult, pgd
from sklearn_advdet.deep.digits import DIGITS_LAYERS, train_digits_cnn
from sklearn_advdet.deep.extraction import extract_features
from sklearn_advdet.experiments.guarded import GuardedModel

LAYERS = list(DIGITS_LAYERS)
EPS = 0.1


class Toy(torch.nn.Module):
    """Linear 2-class classifier on x0 - x1; the detector fires on x2 > 0.5."""

    threshold = 0.5

    def forward(self, x):
        f = x.flatten(1)
        logits = torch.stack([f[:, 0] - f[:, 1], f[:, 1] - f[:, 0]], dim=1) * 10
        return logits, torch.sigmoid(20 * (f[:, 2] - 0.5))


def test_toy_attack_stays_in_the_ball_and_fools_both():
    rng = np.random.RandomState(0)
    x = torch.tensor(rng.uniform(0.3, 0.7, size=(64, 1, 2, 2)), dtype=torch.float32)
    x[:, 0, 1, 0] = 0.45  # x2: undetected at the start, 0.05 from the boundary
    y = (x.flatten(1)[:, 1] > x.flatten(1)[:, 0]).long()
    for attack in (adaptive_pgd, orthogonal_pgd):
        r = attack(Toy(), x, y, EPS, n_iter=20, random_state=0)
        assert isinstance(r, AttackResult)
        d = (r.images - x).abs().amax()
        assert d <= EPS + 1e-6 and r.images.min() >= 0 and r.images.max() <= 1
        success, mis, p = evaluate_guarded(Toy(), r.images, y)
        torch.testing.assert_close(r.success, success)
        # reachable where |x0 - x1| < 2 eps: the classifier flips with x2 kept low
        gap = (x.flatten(1)[:, 0] - x.flatten(1)[:, 1]).abs()
        assert bool(success[gap < 2 * EPS - 0.01].all())
        assert not bool(success[gap > 2 * EPS + 1e-6].any())
        assert bool((gap > 2 * EPS + 1e-6).any())  # the test has unreachable images


def test_quantize_and_bad_parameters():
    x = torch.full((4, 1, 2, 2), 100 / 255)
    y = torch.zeros(4, dtype=torch.long)
    r = adaptive_pgd(Toy(), x, y, 8 / 255, n_iter=3, quantize=True, random_state=0)
    levels = r.images * 255
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
    assert (levels - 100).abs().max() <= 8 + 1e-4
    with pytest.raises(ValueError, match="lam"):
        adaptive_pgd(Toy(), x, y, 0.1, lam=[-1.0])
    with pytest.raises(ValueError, match="eps_from_255"):
        adaptive_pgd(Toy(), x, y, 8)

    class NoThreshold(Toy):
        threshold = None

    with pytest.raises(ValueError, match="calibrate"):
        orthogonal_pgd(NoThreshold(), x, y, 0.1)


def test_orthogonal_projection():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    b[0] = 0
    o = _orthogonal(a, b)
    dots = (o.flatten(1) * b.flatten(1)).sum(1)
    torch.testing.assert_close(dots, torch.zeros(5), rtol=0, atol=1e-4)
    torch.testing.assert_close(o[0], a[0])  # nothing to project on
    # a - o is parallel to b
    resid = (a - o).flatten(1)[1:]
    cos = (resid * b.flatten(1)[1:]).sum(1) / (resid.norm(dim=1) * b.flatten(1)[1:].norm(dim=1))
    torch.testing.assert_close(cos.abs(), torch.ones(4), rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def guarded_digits():
    """A digits CNN guarded by pivots + MLP trained on PGD examples."""
    d = load_digits()
    X, y = (d.images / 16).astype(np.float32)[:, None], d.target
    model = train_digits_cnn(X[:1000], y[:1000], epochs=8, random_state=0)
    X_ref, layout = extract_features(model, torch.from_numpy(X[:1000]), layers=LAYERS)
    clean, yc = torch.from_numpy(X[1000:1300]), torch.from_numpy(y[1000:1300])
    adv = pgd(model, clean, yc, EPS, n_iter=10, random_state=0).images
    X_det, _ = extract_features(model, torch.cat([clean, adv]), layers=LAYERS)
    y_det = np.repeat([0, 1], 300)
    pipe = make_pipeline(FrozenEstimator(PivotEmbedder(layout).fit(X_ref, y[:1000])),
                         MLPDetector(max_epochs=40, lr=1e-2, random_state=0))
    pipe.fit(X_det, y_det)
    guard = GuardedModel(model, pipe, layers=LAYERS)
    guard.calibrate(torch.from_numpy(X[1300:1500]), target_fpr=0.05)
    test = torch.from_numpy(X[1500:1620])
    return dict(model=model, guard=guard, images=test, labels=torch.from_numpy(y[1500:1620]),
                X_ref=X_ref, y_ref=y[:1000], layout=layout, X_det=X_det, y_det=y_det)


def test_gradients_reach_the_input(guarded_digits):
    g = guarded_digits
    shares = check_input_gradients(g["guard"], g["images"][:32], g["labels"][:32])
    assert shares["classifier"] > 0.9 and shares["detector"] > 0.9


def test_piecewise_constant_detector_is_refused_and_its_surrogate_passes(guarded_digits):
    g = guarded_digits
    knn = make_pipeline(FrozenEstimator(KNNClassScorer(g["layout"], layers="all", n_neighbors=30)
                                        .fit(g["X_ref"], g["y_ref"])), LogisticRegression())
    knn.fit(g["X_det"], g["y_det"])
    exact = GuardedModel(g["model"], knn, layers=LAYERS)
    with pytest.raises(GradientError, match="surrogate=True"):
        check_input_gradients(exact, g["images"][:16], g["labels"][:16])
    soft = GuardedModel(g["model"], knn, layers=LAYERS, surrogate=True)
    shares = check_input_gradients(soft, g["images"][:16], g["labels"][:16])
    assert shares["detector"] > 0.5


def test_sanity_rule_adaptive_beats_oblivious_pgd(guarded_digits):
    """Undetected misclassification: adaptive >= oblivious PGD at the same budget."""
    g = guarded_digits
    guard, x, y = g["guard"], g["images"], g["labels"]
    oblivious = pgd(g["model"], x, y, EPS, n_iter=10, random_state=1)
    base, mis, _ = evaluate_guarded(guard, oblivious.images, y)
    assert mis.float().mean() > 0.3  # the budget fools the bare classifier
    adaptive = adaptive_pgd(guard, x, y, EPS, n_iter=10, random_state=1)
    orth = orthogonal_pgd(guard, x, y, EPS, n_iter=10, random_state=1)
    rate = base.float().mean()
    assert adaptive.success.float().mean() >= rate
    assert orth.success.float().mean() >= rate
    for r in (adaptive, orth):
        assert (r.images - x).abs().max() <= EPS + 1e-6
        torch.testing.assert_close(r.success, evaluate_guarded(guard, r.images, y)[0])
