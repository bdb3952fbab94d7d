"""CIFAR ResNets: architecture, weight loading, and the published accuracies."""

import numpy as np
import pytest
import torch

from sklearn_advdet.deep.extraction import FeatureExtractor
from sklearn_advdet.deep.models import CIFAR_MEAN, CIFAR_STD, cifar_resnet


@pytest.mark.parametrize(
    "depth, n_params",
    # parameter counts of He et al. 2016, table 6 (0.27M, 0.46M, 0.66M, 0.85M, 1.7M)
    [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6), (110, 1.7e6)],
)
def test_depths_and_parameter_counts(depth, n_params):
    model = cifar_resnet(depth)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - n_params) / n_params < 0.02
    blocks = (depth - 2) // 6
    assert model.feature_layers == [
        f"layer{s}.{i}" for s in (1, 2, 3) for i in range(blocks)
    ]
    names = dict(model.named_modules())
    assert "linear" in names and f"layer3.{blocks - 1}" in names
    assert f"layer3.{blocks}" not in names
    assert not model.training


def test_bad_depth():
    with pytest.raises(ValueError, match="depth must be one of"):
        cifar_resnet(18)


def test_option_a_shortcut_pads_with_zeros():
    model = cifar_resnet(20)
    block = model.layer2[0]
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    # the 16 input channels, subsampled, sit in the middle; 8 zero channels each side
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, :8]) == 0 and torch.count_nonzero(out[:, 24:]) == 0
    # option A adds no parameters
    assert not list(block.shortcut.parameters())


def test_normalisation_is_inside_the_model():
    torch.manual_seed(0)
    model = cifar_resnet(20)
    x = torch.rand(3, 3, 32, 32)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.linear(
            torch.nn.functional.adaptive_avg_pool2d(
                model.layer3(model.layer2(model.layer1(torch.relu(
                    model.bn1(model.conv1((x - mean) / std)))))), 1).flatten(1))
        torch.testing.assert_close(model(x), expected)
    # the normalisation is not part of the state dict (published files lack it)
    assert "mean" not in model.state_dict()


def test_load_prefixed_checkpoint_and_depth_mismatch(tmp_path):
    torch.manual_seed(0)
    src = cifar_resnet(32)
    ckpt = {"best_prec1": 90.0,
            "state_dict": {"module." + k: v for k, v in src.state_dict().items()
                           if not k.endswith("num_batches_tracked")}}
    path = tmp_path / "resnet32.th"
    torch.save(ckpt, path)
    model = cifar_resnet(32, weights=path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src.eval()(x))
    with pytest.raises(ValueError, match="ResNet-32.*pass depth=32"):
        cifar_resnet(20, weights=path)
    with pytest.raises(ValueError, match="do not fit"):
        cifar_resnet(32, weights=path, num_classes=100)
    with pytest.raises(TypeError, match="path"):
        cifar_resnet(20, weights=[1, 2])


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the 10,000-image runs, restored afterwards.

    On a 2-core machine shared with other jobs, two OpenMP threads spin-wait
    for each other and run ~4x slower than one (benchmarks/results/
    bench_extraction.md); one thread keeps these tests near 30 s in any case.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(
    "depth, filename, expected",
    [(20, "resnet20-12fca82f.th", 0.810), (56, "resnet56-4bfd9763.th", 0.832)],
)
def test_published_accuracy_on_jpeg_test_set(shared_data, depth, filename, expected):
    """shared/data/README.md: ResNet-20 81.0 %, ResNet-56 83.2 % on test.tar."""
    model = cifar_resnet(depth, weights=shared_data / "weights" / filename)
    fx = FeatureExtractor(model, layers="cifar_resnet", device="cpu",
                          batch_size=500, progress=False)
    feats = fx.extract(shared_data / "cifar10-jpeg" / "test.tar")
    n = (depth - 2) // 6
    assert feats.X.shape == (10000, n * (16 + 32 + 64) + 10)
    assert feats.layout.sizes == (16,) * n + (32,) * n + (64,) * n + (10,)
    assert np.bincount(feats.labels).tolist() == [1000] * 10
    accuracy = np.mean(feats.predictions == feats.labels)
    assert abs(accuracy - expected) <= 0.002, accuracy
    # the last block's pooled features, fed to the linear layer, give the logits
    with torch.no_grad():
        logits = model.linear(torch.from_numpy(feats.layer(f"layer3.{n - 1}")[:64]))
    np.testing.assert_allclose(logits.numpy(), feats.logits[:64], rtol=1e-4, atol=1e-4)
