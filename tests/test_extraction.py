"""FeatureExtractor: hooks, pooling, modes, presets and every input kind."""

import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from sklearn_advdet import FeatureLayout
from sklearn_advdet.deep.data import list_image_folder, load_image_folder
from sklearn_advdet.deep.extraction import (
    LAYER_PRESETS,
    ExtractedFeatures,
    FeatureExtractor,
    extract_features,
    resolve_layers,
)
from sklearn_advdet.deep.models import cifar_resnet


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),   # "0"
        nn.BatchNorm2d(4),               # "1" -> followed by an in-place ReLU
        nn.ReLU(inplace=True),           # "2"
        nn.Conv2d(4, 5, 3, stride=2),    # "3"
        nn.ReLU(),                       # "4"
        nn.AdaptiveAvgPool2d(1),         # "5"
        nn.Flatten(),                    # "6"
        nn.Linear(5, 3),                 # "7"
    )


def randomise_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def all_hooks_empty(model):
    return all(
        not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()
    )


def images_uint8(n=13, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)


# --------------------------------------------------------------- correctness
def test_pooled_features_match_manual_forward():
    model = randomise_bn(tiny_cnn())
    x = torch.rand(9, 3, 8, 8)
    feats = FeatureExtractor(model, layers=["0", "1", "3", "4"], device="cpu",
                             batch_size=4, progress=False).extract(x.numpy())
    model.eval()
    with torch.no_grad():
        a0 = model[0](x)
        a1 = model[1](a0)
        a3 = model[3](torch.relu(a1))
        a4 = torch.relu(a3)
        logits = model(x)
    expected = torch.cat([a0.mean((2, 3)), a1.mean((2, 3)), a3.mean((2, 3)),
                          a4.mean((2, 3)), logits], dim=1).numpy()
    np.testing.assert_allclose(feats.X, expected, rtol=1e-5, atol=1e-6)
    assert feats.layout == FeatureLayout([4, 4, 5, 5, 3],
                                         names=["0", "1", "3", "4", "logits"],
                                         has_logits=True)
    np.testing.assert_array_equal(feats.predictions, logits.argmax(1).numpy())
    np.testing.assert_allclose(feats.layer("3"), a3.mean((2, 3)).numpy(), rtol=1e-5,
                               atol=1e-6)
    assert feats.labels is None and len(feats) == 9
    assert feats.X.dtype == np.float32


def test_inplace_relu_after_hooked_module_does_not_corrupt():
    model = randomise_bn(tiny_cnn())
    x = torch.rand(6, 3, 8, 8)
    feats = FeatureExtractor(model, layers=["1"], device="cpu", progress=False,
                             include_logits=False).extract(x)
    with torch.no_grad():
        bn_out = model.eval()[1](model[0](x))
    # the BN output has negative pooled values that the in-place ReLU would zero
    assert (bn_out.mean((2, 3)) < 0).any()
    np.testing.assert_allclose(feats.X, bn_out.mean((2, 3)).numpy(), rtol=1e-5,
                               atol=1e-6)

    # 2-D outputs pass through unpooled and are copied before the in-place ReLU
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(inplace=True),
                        nn.Linear(6, 3))
    z = torch.rand(20, 3, 2, 2)
    feats = FeatureExtractor(mlp, layers=["1"], device="cpu", progress=False,
                             include_logits=False).extract(z)
    with torch.no_grad():
        lin = mlp[1](mlp[0](z))
    assert (lin < 0).any()
    np.testing.assert_allclose(feats.X, lin.numpy(), rtol=1e-5, atol=1e-6)


def test_include_logits_false_and_extract_features():
    model = tiny_cnn()
    x = torch.rand(5, 3, 8, 8)
    with_logits = FeatureExtractor(model, layers=["0", "4"], device="cpu",
                                   progress=False).extract(x)
    without = FeatureExtractor(model, layers=["0", "4"], device="cpu",
                               progress=False, include_logits=False).extract(x)
    assert without.X.shape == (5, 9) and not without.layout.has_logits
    np.testing.assert_array_equal(with_logits.X[:, :9], without.X)
    np.testing.assert_array_equal(with_logits.logits, without.logits)
    X, layout = extract_features(model, x, layers=["0", "4"], batch_size=2)
    np.testing.assert_allclose(X, with_logits.X, rtol=1e-6, atol=1e-7)
    assert layout == with_logits.layout
    assert isinstance(with_logits, ExtractedFeatures)


# ------------------------------------------------------- hooks, modes, grads
def test_hooks_removed_and_modes_restored_after_success():
    model = tiny_cnn()
    model.train()
    model[3].eval()  # a mixed state must come back exactly
    before = [m.training for m in model.modules()]
    running_mean = model[1].running_mean.clone()
    feats = FeatureExtractor(model, layers=["0", "1", "4"], device="auto",
                             progress=False).extract(torch.rand(8, 3, 8, 8))
    assert all_hooks_empty(model)
    assert [m.training for m in model.modules()] == before
    # eval mode was used: BatchNorm statistics did not move
    torch.testing.assert_close(model[1].running_mean, running_mean)
    assert all(p.grad is None for p in model.parameters())
    assert feats.X.shape == (8, 4 + 4 + 5 + 3)


class _FailOnSecondBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny_cnn()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom")
        return self.net(x)


def test_hooks_removed_and_modes_restored_after_exception():
    model = _FailOnSecondBatch()
    model.train()
    fx = FeatureExtractor(model, layers=["net.0", "net.4"], device="cpu",
                          batch_size=4, progress=False)
    with pytest.raises(RuntimeError, match="boom"):
        fx.extract(np.random.default_rng(0).random((10, 3, 8, 8), dtype=np.float32))
    assert model.calls == 2
    assert all_hooks_empty(model)
    assert all(m.training for m in model.modules())


def test_module_running_twice_or_not_at_all_is_an_error():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.unused = nn.Conv2d(3, 3, 1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).mean((2, 3)))

    model = Twice()
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="ran twice"):
        FeatureExtractor(model, layers=["conv"], progress=False).extract(x)
    with pytest.raises(RuntimeError, match="did not run"):
        FeatureExtractor(model, layers=["unused"], progress=False).extract(x)
    assert all_hooks_empty(model)


def test_iter_extract_batches():
    model = tiny_cnn()
    x = torch.rand(10, 3, 8, 8)
    fx = FeatureExtractor(model, layers=["0", "4"], device="cpu", batch_size=4,
                          progress=False)
    gen = fx.iter_extract(x, labels=np.arange(10) % 3)
    parts = list(gen)
    assert [len(p) for p in parts] == [4, 4, 2]
    full = fx.extract(x)
    np.testing.assert_allclose(np.concatenate([p.X for p in parts]), full.X,
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(parts[2].labels, [2, 0])
    assert all_hooks_empty(model)
    gen = fx.iter_extract(x)
    next(gen)
    assert not all_hooks_empty(model)  # alive while the generator is
    gen.close()
    assert all_hooks_empty(model)


def test_amp_is_ignored_on_cpu():
    model = tiny_cnn()
    x = torch.rand(4, 3, 8, 8)
    a = FeatureExtractor(model, layers=["4"], device="cpu", progress=False).extract(x)
    b = FeatureExtractor(model, layers=["4"], device="cpu", amp=True,
                         progress=False).extract(x)
    np.testing.assert_array_equal(a.X, b.X)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_and_model_moves_back():
    model = randomise_bn(tiny_cnn())
    x = torch.rand(16, 3, 8, 8)
    cpu = FeatureExtractor(model, layers=["1", "4"], device="cpu",
                           progress=False).extract(x)
    gpu = FeatureExtractor(model, layers=["1", "4"], device="cuda",
                           progress=False).extract(x)
    np.testing.assert_allclose(gpu.X, cpu.X, rtol=1e-3, atol=1e-4)
    assert next(model.parameters()).device.type == "cpu"
    amp = FeatureExtractor(model, layers=["1", "4"], device="cuda", amp=True,
                           progress=False).extract(x)
    np.testing.assert_allclose(amp.X, cpu.X, rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------ presets
class _Named(nn.Module):
    """A module tree with given child names (identity forward)."""

    def __init__(self, spec):
        super().__init__()
        for name, sub in spec.items():
            self.add_module(name, sub)


def test_presets():
    r20 = cifar_resnet(20)
    expected = [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    assert resolve_layers(r20, "cifar_resnet") == expected
    assert resolve_layers(r20, "auto") == expected
    assert resolve_layers(r20, ["linear", "layer1.0"]) == ["linear", "layer1.0"]

    fake50 = _Named({
        "conv1": nn.Identity(),
        **{f"layer{s}": nn.Sequential(*[nn.Identity() for _ in range(n)])
           for s, n in ((1, 3), (2, 4), (3, 6), (4, 3))},
        "fc": nn.Identity(),
    })
    names = resolve_layers(fake50, "resnet50")
    assert len(names) == 16 and names[0] == "layer1.0" and names[-1] == "layer4.2"
    assert names[3:7] == ["layer2.0", "layer2.1", "layer2.2", "layer2.3"]
    assert resolve_layers(fake50, "auto") == names
    # wrapped in another module (e.g. a normalisation + model Sequential)
    wrapped = nn.Sequential(nn.Identity(), fake50)
    assert resolve_layers(wrapped, "resnet50") == ["1." + n for n in names]
    with pytest.raises(ValueError, match="16 bottlenecks"):
        resolve_layers(r20, "resnet50")

    inception = _Named({
        "Conv2d_1a_3x3": nn.Identity(),
        **{f"Mixed_{k}": _Named({"branch1x1": nn.Identity()})
           for k in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c")},
        "fc": nn.Identity(),
    })
    names = resolve_layers(inception, "inception_v3")
    assert names[0] == "Mixed_5b" and names[-1] == "Mixed_7c" and len(names) == 11
    assert resolve_layers(inception, "auto") == names
    assert set(LAYER_PRESETS) == {"cifar_resnet", "resnet50", "inception_v3"}


def test_layer_errors():
    model = tiny_cnn()
    with pytest.raises(ValueError, match="no preset"):
        resolve_layers(model, "auto")
    with pytest.raises(ValueError, match="no module"):
        resolve_layers(model, ["0", "conv9"])
    with pytest.raises(ValueError, match="twice"):
        resolve_layers(model, ["0", "0"])
    with pytest.raises(ValueError, match="cifar_resnet"):
        resolve_layers(model, "cifar_resnet")
    with pytest.raises(TypeError, match="layers must be"):
        resolve_layers(model, 3)


def test_input_errors():
    fx = FeatureExtractor(tiny_cnn(), layers=["0"], progress=False)
    with pytest.raises(TypeError, match=r"must be floats in \[0, 1\], got dtype torch.int32"):
        fx.extract(np.zeros((2, 3, 8, 8), dtype=np.int32))
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        fx.extract(np.zeros((2, 3, 8, 8), dtype=np.float32), labels=[0, 1, 2])
    with pytest.raises(TypeError, match="data must be"):
        fx.extract({"a": 1})
    with pytest.raises(FileNotFoundError):
        fx.extract("/nonexistent/folder")


# -------------------------------------------------------------- input kinds
class _ImageDataset(Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i]).float() / 255, int(self.labels[i])


def _write_folder(root, images, labels, classes):
    for k, (img, y) in enumerate(zip(images, labels)):
        d = root / classes[y]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(d / f"{k:04d}.png")


def test_all_input_kinds_give_the_same_features(tmp_path):
    classes = ["cat", "dog", "ship"]
    imgs = images_uint8(13)
    labels = np.array([0] * 4 + [1] * 5 + [2] * 4)  # sorted, as a folder lists them
    root = tmp_path / "split"
    _write_folder(root, imgs, labels, classes)
    tar_path = tmp_path / "data.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(root, arcname="test")  # test/<class>/<file>, as shared/data's tars

    model = randomise_bn(tiny_cnn())
    fx = FeatureExtractor(model, layers=["1", "4"], device="cpu", batch_size=5,
                          progress=False)
    ref = fx.extract(imgs.astype(np.float32) / 255, labels=labels)
    floats = torch.from_numpy(imgs).float() / 255
    results = {
        "uint8": fx.extract(imgs, labels=labels),
        "tensor": fx.extract(floats, labels=labels),
        "uint8 tensor": fx.extract(torch.from_numpy(imgs), labels=labels),
        "dataset": fx.extract(_ImageDataset(imgs, labels)),
        "tensor dataset": fx.extract(TensorDataset(floats, torch.from_numpy(labels))),
        "loader": fx.extract(DataLoader(_ImageDataset(imgs, labels), batch_size=3)),
        "folder": fx.extract(root),
        "folder str": fx.extract(str(root)),
        "tar": fx.extract(tar_path),
    }
    for kind, res in results.items():
        np.testing.assert_allclose(res.X, ref.X, rtol=1e-5, atol=1e-6, err_msg=kind)
        np.testing.assert_array_equal(res.labels, labels, err_msg=kind)
    # a shuffling loader keeps images and labels together
    shuffled = fx.extract(DataLoader(_ImageDataset(imgs, labels), batch_size=4,
                                     shuffle=True,
                                     generator=torch.Generator().manual_seed(0)))
    order = np.lexsort(shuffled.X.T[::-1])
    ref_order = np.lexsort(ref.X.T[::-1])
    np.testing.assert_allclose(shuffled.X[order], ref.X[ref_order], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(shuffled.labels[order], labels[ref_order])
    # explicit labels override the ones the data carries
    other = fx.extract(_ImageDataset(imgs, labels), labels=labels[::-1].copy())
    np.testing.assert_array_equal(other.labels, labels[::-1])


def test_load_image_folder_options(tmp_path):
    classes = ["b_class", "a_class"]
    imgs = images_uint8(6, seed=1)
    labels = np.array([0, 0, 0, 1, 1, 1])
    _write_folder(tmp_path / "root", imgs, labels, classes)
    loaded, y, names = load_image_folder(tmp_path / "root")
    assert names == ["a_class", "b_class"]  # class index = sorted folder names
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(loaded[:3], imgs[3:])
    np.testing.assert_array_equal(loaded[3:], imgs[:3])
    assert loaded.dtype == np.uint8 and loaded.shape == (6, 3, 8, 8)
    sub, y2, _ = load_image_folder(tmp_path / "root", per_class=2)
    np.testing.assert_array_equal(y2, [0, 0, 1, 1])
    np.testing.assert_array_equal(sub, loaded[[0, 1, 3, 4]])
    first, _, _ = load_image_folder(tmp_path / "root", limit=4)
    np.testing.assert_array_equal(first, loaded[:4])
    resized, _, _ = load_image_folder(tmp_path / "root", size=(4, 5))
    assert resized.shape == (6, 3, 5, 4)
    files, y3, _ = list_image_folder(tmp_path / "root")
    assert files[0].startswith("a_class/") and len(files) == 6
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(ValueError, match="ImageFolder layout"):
        load_image_folder(tmp_path / "flat")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_image_folder(tmp_path / "empty")


# ------------------------------------------- inputs checked as the attacks check them
@pytest.mark.parametrize("bad, error, match", [
    (lambda x: x * 255, ValueError, r"must be in \[0, 1\].*0-255 images: divide by 255"),
    (lambda x: x.index_fill(0, torch.tensor([1]), float("nan")), ValueError,
     "1 NaN or infinite|NaN or infinite"),
    (lambda x: x - 0.5, ValueError, "normalised images"),
    (lambda x: x.permute(0, 2, 3, 1).repeat(1, 2, 2, 1), ValueError, "looks like NHWC"),
    (lambda x: (x * 10).long(), TypeError, "must be floats in"),
])
def test_extract_refuses_what_the_attacks_refuse(tmp_path, bad, error, match):
    from sklearn_advdet.deep.attacks import run_attack

    model = tiny_cnn()
    x = bad(torch.rand(4, 3, 8, 8))
    fx = FeatureExtractor(model, layers=["0"], device="cpu", progress=False)
    with pytest.raises(error, match=match) as ours:
        fx.extract(x)
    with pytest.raises(error) as theirs:
        run_attack("fgsm", model, x, torch.zeros(4, dtype=torch.long), eps=0.1,
                   device="cpu")
    assert str(ours.value) == str(theirs.value)  # the same answer everywhere
    with pytest.raises(error, match=match):
        fx.extract_to_store(x, tmp_path / "s")
    assert not (tmp_path / "s").exists()  # refused before anything is written
    assert all_hooks_empty(model)


def test_uint8_images_are_still_divided_by_255():
    model = tiny_cnn()
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    fx = FeatureExtractor(model, layers=["0"], device="cpu", progress=False)
    np.testing.assert_allclose(fx.extract(x).X, fx.extract(x.float() / 255).X,
                               rtol=1e-6, atol=1e-7)


def test_labels_beyond_the_models_classes_and_tuple_outputs():
    model = tiny_cnn()
    x = torch.rand(4, 3, 8, 8)
    fx = FeatureExtractor(model, layers=["0"], device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        fx.extract(x, labels=[0, 1, 2, 3])

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, z):
            return {"logits": self.net(z), "aux": z}

    with pytest.raises(ValueError, match="output="):
        FeatureExtractor(Pair(), layers=["net.0"], device="cpu", progress=False).extract(x)
    got = FeatureExtractor(Pair(), layers=["net.0"], device="cpu", progress=False,
                           output="logits").extract(x)
    np.testing.assert_allclose(got.X, fx.extract(x).X, rtol=1e-6, atol=1e-7)


# ------------------------------------------------ image sources that check themselves
def _png(rng):
    import io

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _make_tar(path, members, mode="w"):
    import io

    with tarfile.open(path, mode) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def good_tar(tmp_path):
    rng = np.random.default_rng(0)
    members = [(f"test/{c}/{i}.png", _png(rng)) for c in ("cat", "dog") for i in range(5)]
    return _make_tar(tmp_path / "good.tar", members), members


def test_whole_tar_reads_and_matches_its_members(good_tar):
    path, members = good_tar
    images, labels, classes = load_image_folder(path)
    assert images.shape == (10, 3, 8, 8) and classes == ["cat", "dog"]
    np.testing.assert_array_equal(labels, [0] * 5 + [1] * 5)
    first = np.asarray(Image.open(__import__("io").BytesIO(members[0][1])))
    np.testing.assert_array_equal(images[0], first.transpose(2, 0, 1))


def test_truncated_tar_fails_naming_where(good_tar, tmp_path):
    path, members = good_tar
    raw = path.read_bytes()
    # at a member boundary (tarfile alone would read 6 of 10 images as a whole tar)
    with tarfile.open(path) as t:
        boundary = t.getmembers()[6].offset
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[:boundary])
    with pytest.raises(ValueError, match=r"cut.tar is truncated or damaged after member "
                                         r"'test/dog/0.png'.*6 members could be read"):
        load_image_folder(cut)
    with pytest.raises(ValueError, match="truncated"):
        list_image_folder(cut)
    # inside the data of the last member: its end-of-archive block is gone
    with tarfile.open(path) as t:
        last = t.getmembers()[-1]
    cut.write_bytes(raw[:last.offset_data + last.size // 2])
    with pytest.raises(ValueError, match=r"truncated or damaged after member "
                                         r"'test/dog/4.png'"):
        load_image_folder(cut)
    # a compressed tar cut short
    gz = _make_tar(tmp_path / "good.tar.gz", members, "w:gz")
    gz_raw = gz.read_bytes()
    gz.write_bytes(gz_raw[: len(gz_raw) * 2 // 3])
    with pytest.raises(ValueError, match="good.tar.gz is truncated or damaged"):
        load_image_folder(gz)


def test_corrupt_members_and_files_fail_naming_them(tmp_path):
    rng = np.random.default_rng(1)
    good = _png(rng)
    tar = _make_tar(tmp_path / "bad.tar", [("a/0.png", good), ("a/1.png", b"garbage"),
                                          ("b/0.png", good)])
    with pytest.raises(ValueError, match=r"member 'a/1.png' of .*bad.tar is not a "
                                         "readable image"):
        load_image_folder(tar)
    root = tmp_path / "folder"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        (root / c / "0.png").write_bytes(good)
    (root / "b" / "1.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    with pytest.raises(ValueError, match=r"folder/b/1.png is not a readable image"):
        load_image_folder(root)
    with pytest.raises(ValueError, match=r"not a readable tar file|damaged or truncated"):
        (tmp_path / "x.tar").write_bytes(b"\0" * 100 + b"junk")
        load_image_folder(tmp_path / "x.tar")


CIFAR_TEST_TAR = "/work/shared/data/cifar10-jpeg/test.tar"


@pytest.mark.skipif(not __import__("os").path.exists(CIFAR_TEST_TAR),
                    reason="the shared CIFAR-10 JPEG tar is not on this machine")
def test_real_cifar_tar_passes_the_checks():
    files, labels, classes = list_image_folder(CIFAR_TEST_TAR)
    assert len(files) == 10000 and len(classes) == 10
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)


# ------------------------------------------------------- fuzz-suite regressions
def test_bad_batch_size_labels_and_input_shape_are_clear_errors(tmp_path):
    model = tiny_cnn()
    x = torch.rand(4, 3, 8, 8)
    fx = FeatureExtractor(model, layers=["0"], device="cpu", progress=False)
    # was: "invalid literal for int() with base 10: 'x'"
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 'x'"):
        FeatureExtractor(model, batch_size="x", progress=False).extract(x)
    # was: float labels silently truncated (1.7 -> 1)
    with pytest.raises(TypeError, match="labels must hold integer class indices"):
        fx.extract(x, labels=[0.0, 1.7, 2.0, 1.0])
    # was: torch's RuntimeError from inside the first convolution
    with pytest.raises(ValueError, match=r"cannot take images of shape \(1, 8, 8\).*"
                                         "expected input.*to have 3 channels"):
        fx.extract(torch.rand(4, 1, 8, 8))
    # was: RuntimeError from the DataLoader's collate
    with pytest.raises(ValueError, match="cannot be batched together.*same shape"):
        fx.extract([torch.rand(3, 8, 8), torch.rand(3, 8, 6)])
    assert all_hooks_empty(model)


def test_read_only_images_extract_without_a_warning():
    # np.load(mmap_mode="r") gives read-only arrays: torch warned about
    # writing to them (an error in the test suite); they are only read
    x = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    x.flags.writeable = False
    labels = np.array([0, 1, 2, 0])
    labels.flags.writeable = False
    fx = FeatureExtractor(tiny_cnn(), layers=["0"], device="cpu", progress=False)
    np.testing.assert_array_equal(fx.extract(x, labels=labels).X, fx.extract(x.copy()).X)


def test_float16_store_holds_the_float32_values_rounded(tmp_path):
    from sklearn_advdet.store import open_store

    model, x = tiny_cnn(), torch.rand(11, 3, 8, 8)
    fx = FeatureExtractor(model, layers=["0", "3"], device="cpu", progress=False)
    full = fx.extract_to_store(x, tmp_path / "f32", chunk_size=4)
    half = fx.extract_to_store(x, tmp_path / "f16", chunk_size=4, dtype=np.float16)
    assert half.layer(0).dtype == np.float16 and half.logits.dtype == np.float16
    for i in range(2):
        np.testing.assert_array_equal(half.layer(i), full.layer(i).astype(np.float16))
    np.testing.assert_array_equal(half.logits, full.logits.astype(np.float16))
    # a resume must ask for the same precision
    from sklearn_advdet.store import StoreError
    with pytest.raises(StoreError, match="dtype"):
        fx.extract_to_store(x, tmp_path / "f16", chunk_size=4)
    for bad in ("int8", "half-ish", None):
        with pytest.raises(ValueError, match="'float32' or 'float16'"):
            fx.extract_to_store(x, tmp_path / "bad", dtype=bad)
    assert not (tmp_path / "bad").exists()
    # features beyond float16's range are refused, never stored as inf
    with torch.no_grad():
        model[0].weight.mul_(1e6)
    with pytest.raises(ValueError, match="beyond float16's range"):
        fx.extract_to_store(x, tmp_path / "big", chunk_size=4, dtype="float16")
    assert not (tmp_path / "big").exists()
    assert open_store(tmp_path / "f16").layer(0).dtype == np.float16
