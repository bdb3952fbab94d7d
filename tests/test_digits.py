"""The small digits CNN: accuracy, determinism, inputs, hookable layers."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sklearn_advdet.deep.digits import (
    DIGITS_LAYERS,
    DigitsCNN,
    as_digit_images,
    digits_cnn_accuracy,
    torch_threads,
    train_digits_cnn,
)
from sklearn_advdet.deep.extraction import FeatureExtractor


@pytest.fixture(scope="module")
def split():
    digits = load_digits()
    X = digits.images / 16.0
    return train_test_split(X, digits.target, test_size=0.5, stratify=digits.target,
                            random_state=0)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_accuracy_at_least_95_percent(split):
    X_tr, X_te, y_tr, y_te = split
    model = train_digits_cnn(X_tr, y_tr, random_state=0)
    assert not model.training
    acc = digits_cnn_accuracy(model, X_te, y_te)
    # independent check of the accuracy helper: a plain forward pass
    with torch.no_grad():
        pred = model(torch.as_tensor(X_te, dtype=torch.float32)[:, None]).argmax(1).numpy()
    assert acc == pytest.approx(np.mean(pred == y_te))
    assert acc >= 0.95


def test_training_is_deterministic_and_leaves_global_rng_alone(split):
    X_tr, _, y_tr, _ = split
    torch_state = torch.random.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    threads = torch.get_num_threads()
    a = train_digits_cnn(X_tr, y_tr, epochs=3, random_state=7)
    b = train_digits_cnn(X_tr, y_tr, epochs=3, random_state=7)
    c = train_digits_cnn(X_tr, y_tr, epochs=3, random_state=8)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)
    assert torch.equal(torch_state, torch.random.get_rng_state())
    assert np.array_equal(np_state, np.random.get_state()[1])
    assert torch.get_num_threads() == threads


def test_init_is_seeded_and_does_not_touch_global_rng():
    state = torch.random.get_rng_state()
    assert _same_weights(DigitsCNN(random_state=3), DigitsCNN(random_state=3))
    assert not _same_weights(DigitsCNN(random_state=3), DigitsCNN(random_state=4))
    assert torch.equal(state, torch.random.get_rng_state())


def test_input_shapes_are_equivalent():
    digits = load_digits()
    X = digits.images[:40] / 16.0
    a = as_digit_images(X)
    assert a.shape == (40, 1, 8, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, as_digit_images(X.reshape(40, 64)))
    np.testing.assert_array_equal(a, as_digit_images(torch.as_tensor(X)[:, None]))


@pytest.mark.parametrize(
    "X, y, match",
    [
        (np.full((4, 8, 8), 16.0), [0, 1, 2, 3], r"divide load_digits\(\) data by 16"),
        (np.zeros((4, 5, 5)), [0, 1, 2, 3], "must have shape"),
        (np.zeros((4, 8, 8)), [0, 1, 2], "one label per image"),
        (np.zeros((4, 8, 8)), [0, 1, 2, 10], "class labels 0..9"),
    ],
)
def test_bad_inputs_raise(X, y, match):
    with pytest.raises(ValueError, match=match):
        train_digits_cnn(X, y, epochs=1)


def test_torch_threads_restores_setting():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"):
        with torch_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_layers_are_hookable_and_auto_preset():
    model = DigitsCNN(random_state=0).eval()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    feats = FeatureExtractor(model, layers="auto", device="cpu", progress=False).extract(x)
    assert list(feats.layout.layer_names) == list(DIGITS_LAYERS)
    assert feats.layout.sizes == (16, 32, 64, 128, 10)
    # independent computation: run the blocks by hand and pool
    with torch.no_grad():
        h1 = model.conv1(x)
        h2 = model.conv2(h1)
        h3 = model.conv3(model.pool(h2))
        h4 = model.fc1(h3)
        logits = model.fc2(h4)
    expected = torch.cat(
        [h1.mean((2, 3)), h2.mean((2, 3)), h3.mean((2, 3)), h4, logits], 1
    ).numpy()
    np.testing.assert_allclose(feats.X, expected, rtol=1e-5, atol=1e-6)
    # the blocks end with their ReLU: pooled activations are non-negative
    assert (feats.X[:, :-10] >= 0).all()
