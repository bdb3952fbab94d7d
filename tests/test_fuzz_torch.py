"""Fuzz suite of the torch side (issue 16, item 6).

The one validation layer (:mod:`sklearn_advdet.deep._checks`), feature
extraction, every attack of :data:`~sklearn_advdet.deep.attacks.ATTACKS`,
the detection-set builder and the feature stores get random batches --
shapes (NHWC, wrong ndim, empty), dtypes, NaN/inf, values outside [0, 1],
labels out of range, budgets out of range -- and must either give a valid
result or raise a ValueError/TypeError of their own (:func:`_fuzz.call`).
Writing to disk must leave no partial file: the folder is absent, empty, or
holds a complete store that :func:`~sklearn_advdet.store.open_store` reads.
A tiny CNN on 1 x 6 x 6 images keeps every call in milliseconds.
"""

import shutil

import numpy as np
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from _fuzz import FUZZ, call, describe
from sklearn_advdet.deep._checks import check_images, check_labels
from sklearn_advdet.deep.attack_sets import build_detection_set
from sklearn_advdet.deep.attacks import ATTACKS, run_attack
from sklearn_advdet.deep.extraction import FeatureExtractor, extract_features
from sklearn_advdet.store import FeatureStoreWriter, open_store

N_CLASSES = 3


@pytest.fixture(scope="module")
def model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(2, N_CLASSES))
    return net.eval()


# ---------------------------------------------------------------- the inputs
IMAGE_MUTATIONS = ["float64", "float16", "uint8", "int", "bool",
                   "complex", "nan", "inf", "above_one", "negative", "nhwc", "3d", "5d",
                   "1d", "list", "tensor", "no_images", "channels", "too_small", "ragged",
                   "object", "none_value", "tiny_excess", "read_only", "strided"]


def _read_only(a):
    """A read-only copy, as ``np.load(mmap_mode="r")`` gives."""
    a = a.copy()
    a.flags.writeable = False
    return a


def mutate_images(x, how):
    """Images ``x`` (N, 1, 6, 6) float32 in [0, 1] spoilt as ``how`` says."""
    n = x.shape[0]
    spoil = {
        "float64": lambda: x.astype(np.float64),
        "float16": lambda: x.astype(np.float16),
        "uint8": lambda: (x * 255).astype(np.uint8),
        "int": lambda: (x * 255).astype(np.int64),
        "bool": lambda: x > 0.5,
        "complex": lambda: x.astype(np.complex64),
        "nan": lambda: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x),
        "inf": lambda: np.where(np.arange(x.size).reshape(x.shape) == 3, np.inf, x),
        "above_one": lambda: x * 255,
        "negative": lambda: (x - 0.5) / 0.25,
        "nhwc": lambda: np.repeat(x.transpose(0, 2, 3, 1), 3, axis=3),
        "3d": lambda: x[:, 0],
        "5d": lambda: x[:, None],
        "1d": lambda: x.ravel(),
        "list": lambda: x.tolist(),
        "tensor": lambda: torch.from_numpy(x),
        "no_images": lambda: x[:0],
        "channels": lambda: np.repeat(x, 3, axis=1),
        "too_small": lambda: x[:, :, :2, :2],
        "ragged": lambda: [x[0], x[0, :, :3]] if n else [[1.0], [1.0, 2.0]],
        "object": lambda: x.astype(object),
        "none_value": lambda: None,
        "tiny_excess": lambda: np.minimum(x + 1e-7, 1 + 1e-7),
        "read_only": lambda: _read_only(x),
        "strided": lambda: np.repeat(x, 2, axis=3)[..., ::2],
    }
    return spoil[how]() if how in spoil else x


LABEL_MUTATIONS = ["out_of_range", "negative", "float", "bool",
                   "short", "2d", "str", "tensor", "list", "huge", "none_value", "read_only"]


def mutate_labels(y, how):
    n = len(y)
    spoil = {
        "out_of_range": lambda: np.where(np.arange(n) == 0, N_CLASSES, y),
        "negative": lambda: np.where(np.arange(n) == n - 1, -1, y),
        "float": lambda: y.astype(np.float32),
        "bool": lambda: y > 0,
        "short": lambda: y[:-1],
        "2d": lambda: y[:, None],
        "str": lambda: y.astype(str),
        "tensor": lambda: torch.from_numpy(y),
        "list": lambda: y.tolist(),
        "huge": lambda: y + 2**40,
        "none_value": lambda: None,
        "read_only": lambda: _read_only(y),
    }
    return spoil[how]() if how in spoil else y


@st.composite
def batches(draw, max_n=4, parts=("nothing", "nothing", "images", "labels")):
    """``(images, labels, part)``: 1 x 6 x 6 images and labels, at most one part spoilt."""
    n = draw(st.integers(1, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.random((n, 1, 6, 6), dtype=np.float32)
    y = rng.integers(0, N_CLASSES, n)
    part = draw(st.sampled_from(parts))
    how_x = draw(st.sampled_from(IMAGE_MUTATIONS)) if part == "images" else "none"
    how_y = draw(st.sampled_from(LABEL_MUTATIONS)) if part == "labels" else "none"
    return mutate_images(x, how_x), mutate_labels(y, how_y), part


def _check_result_images(out, images):
    out = out.detach().cpu().numpy().astype(np.float64)
    assert np.isfinite(out).all(), "adversarial images hold NaN/inf"
    assert out.min() >= 0 and out.max() <= 1, f"images left [0, 1]: {out.min()} {out.max()}"
    assert out.shape == tuple(np.shape(images))


# ------------------------------------------------------- the validation layer
_SHAPES = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4)
image_arrays = st.one_of(
    hnp.arrays(dtype=st.sampled_from([np.float16, np.float32, np.float64, np.uint8,
                                      np.int64, np.bool_, np.complex64]), shape=_SHAPES),
    hnp.arrays(dtype=st.sampled_from([np.float32, np.float64]), shape=_SHAPES,
               elements=st.floats(0, 1, width=32)),
)


@FUZZ(300)
@given(images=image_arrays, as_tensor=st.booleans(), ndim=st.sampled_from([None, 4]))
def test_check_images(images, as_tensor, ndim):
    x = torch.from_numpy(images) if as_tensor else images
    out, _ = call(check_images, x, ndim=ndim)
    if out is not None:
        assert isinstance(out, torch.Tensor) and out.is_floating_point()
        assert out.ndim >= 2 and (ndim is None or out.ndim == ndim)
        values = out.double()
        assert bool(torch.isfinite(values).all())
        if values.numel():
            assert float(values.min()) >= -1e-6 and float(values.max()) <= 1 + 1e-6


@FUZZ(300)
@given(labels=st.one_of(
           hnp.arrays(dtype=st.sampled_from([np.int8, np.int64, np.uint8, np.float32,
                                             np.bool_, np.complex64, np.uint64]),
                      shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0,
                                             max_side=4)),
           hnp.arrays(dtype=st.sampled_from([np.int64, np.int32, np.int8]),
                      shape=st.integers(0, 4), elements=st.integers(-1, 4))),
       n=st.sampled_from([None, 0, 1, 3]), n_classes=st.sampled_from([None, 1, 3, 300]),
       as_tensor=st.booleans())
def test_check_labels(labels, n, n_classes, as_tensor):
    n = len(labels) if n is None and labels.ndim else (n or 0)
    y = torch.from_numpy(labels) if as_tensor else labels
    out, _ = call(check_labels, y, n, n_classes)
    if out is not None:
        assert out.dtype == torch.int64 and tuple(out.shape) == (n,)
        assert np.array_equal(out.numpy(), np.asarray(labels).astype(np.int64))
        if n:
            assert int(out.min()) >= 0
            assert n_classes is None or int(out.max()) < n_classes


@FUZZ(50)
@given(values=st.lists(st.one_of(st.none(), st.text(max_size=2), st.floats(),
                                 st.integers(-5, 5), st.lists(st.integers(), max_size=2)),
                       max_size=4))
def test_check_images_and_labels_on_python_objects(values):
    call(check_images, values)
    call(check_labels, values, len(values), 3)


# ---------------------------------------------------------------- extraction
LAYERS = ["auto", ["0", "4"], ["2"], [], ["nope"], "cifar_resnet", ["0", "0"], "0", 3, None]


@FUZZ(100)
@given(batch=batches(), layers=st.sampled_from(LAYERS),
       batch_size=st.sampled_from([1, 2, 256, 0, -1, 2.5, "x", None, True]),
       include_logits=st.booleans())
def test_extract_features(model, batch, layers, batch_size, include_logits):
    images, _, part = batch
    out, _ = call(extract_features, model, images, layers=layers, batch_size=batch_size,
                  include_logits=include_logits)
    if out is not None:
        X, layout = out
        assert X.dtype == np.float32 and X.shape == (len(images), layout.n_features)
        assert layout.has_logits == include_logits
        assert np.isfinite(X).all()


@FUZZ(100)
@given(batch=batches(), output=st.sampled_from([None, None, 0, "logits", 1.5]))
def test_feature_extractor_extract(model, batch, output):
    images, labels, part = batch
    fx = FeatureExtractor(model, layers=["1"], device="cpu", batch_size=2, progress=False,
                          output=output)
    out, _ = call(fx.extract, images, labels=labels)
    if out is not None:
        assert out.X.shape[0] == len(images)
        assert np.isfinite(out.X).all()
        if labels is not None:
            assert np.array_equal(out.labels, np.asarray(labels).astype(np.int64))
            assert out.labels.min() >= 0 and out.labels.max() < N_CLASSES


# -------------------------------------------------------------------- attacks
#: the smallest run of each attack (steps, restarts, search steps)
SMALL = {
    "bim": {"n_iter": 2}, "pgd": {"n_iter": 2}, "mifgsm": {"n_iter": 2},
    "lbfgs": {"binary_search_steps": 1, "max_iter": 3},
    "iterative_target_class": {"n_iter": 2},
    "cw_l2": {"binary_search_steps": 1, "n_iter": 3},
    "deepfool": {"n_iter": 3, "n_candidates": 2}, "apgd": {"n_iter": 3},
}
NO_EPS = ("cw_l2", "deepfool")
EPS = [None, 0.0, 1.0, -0.1, 8.0, float("nan"), float("inf"), "0.1", True,
       np.float32(0.05), torch.tensor(0.05), torch.tensor([0.1, 0.2]), 1e-12]
TARGETED = {"fgsm", "bim", "pgd", "mifgsm", "cw_l2"}
EXTRAS = ["targeted", "target", "bad_target", "quantize", "batch_size", "bad_param",
          "unknown_param"]


@pytest.mark.parametrize("name", sorted(ATTACKS))
@FUZZ(40)
@given(batch=batches(max_n=3, parts=("nothing", "nothing", "images", "labels", "eps",
                                     "params")),
       bad_eps=st.sampled_from(EPS), extra=st.sampled_from(EXTRAS))
def test_run_attack(model, name, batch, bad_eps, extra):
    images, labels, part = batch
    params = dict(SMALL.get(name, {}))
    eps = None if name in NO_EPS else 0.1
    if part == "eps":
        eps = bad_eps
    batch_size = 2
    if part == "params":
        targeted = {"targeted": True} if name in TARGETED else {}
        if extra == "targeted":
            params.update(targeted)
        elif extra == "target":
            params.update(target=2, **targeted)
        elif extra == "bad_target":
            params.update(target=np.array([7] * 5), **targeted)
        elif extra == "quantize":
            params["quantize"] = True
        elif extra == "batch_size":
            batch_size = 0
        elif extra == "bad_param":
            params["n_iter"] = -1
        elif extra == "unknown_param":
            params["nope"] = 1
    before = images.copy() if isinstance(images, np.ndarray) else None
    out, _ = call(run_attack, name, model, images, labels, eps=eps, batch_size=batch_size,
                  device="cpu", random_state=0, **params)
    if before is not None:  # never changed in place, even on an error
        assert np.array_equal(before, images, equal_nan=before.dtype.kind in "fc")
    if out is None:
        return
    n = len(np.asarray(labels))
    _check_result_images(out.images, images)
    assert out.success.shape == (n,) and out.predictions.shape == (n,)
    finite_eps = isinstance(eps, (float, np.floating)) and eps == eps and eps <= 1
    if finite_eps and name not in NO_EPS:
        x0 = torch.as_tensor(np.asarray(images, dtype=np.float64))
        gap = float((out.images.double() - x0).abs().max())
        # the ball is computed in float32 (the model's dtype) and the images
        # are returned in their own dtype: rounding may cross it by an ulp;
        # quantize=True keeps a level within 1e-3 levels of the ball (so that
        # 8-bit images keep their k/255 ball despite rounding)
        tol = max(float(np.finfo(np.float32).eps), float(torch.finfo(out.images.dtype).eps))
        tol += 1e-3 / 255 if params.get("quantize") else 0.0
        assert gap <= float(eps) + tol, f"{name} left the eps-ball: {gap} > {eps}"


# ------------------------------------------------------------ stores on disk
def _assert_no_partial_store(path):
    """Absent, empty, or a complete store that opens."""
    if not path.exists() or not any(path.iterdir()):
        return "nothing"
    store, exc = call(open_store, path)
    assert store is not None, (
        f"a failed write left {sorted(p.name for p in path.iterdir())} in {path}, "
        f"not a complete store: {exc}")
    return "complete"


@FUZZ(60)
@given(batch=batches(max_n=5), chunk_size=st.sampled_from([1, 2, 2048, 0, -3, "x"]),
       meta=st.sampled_from(["none", "ok", "short", "bad_name", "2d", "object"]))
def test_extract_to_store_leaves_no_partial_store(model, tmp_path_factory, batch,
                                                  chunk_size, meta):
    images, labels, part = batch
    n = len(images) if hasattr(images, "__len__") else 0
    metadata = {"none": None, "ok": {"image_id": np.arange(n)},
                "short": {"image_id": np.arange(max(n - 1, 0))},
                "bad_name": {"a b": np.arange(n)}, "2d": {"m": np.zeros((n, 2))},
                "object": {"m": np.array([None, "x"] * n, dtype=object)[:n]}}[meta]
    path = tmp_path_factory.mktemp("fuzz_store") / "store"
    fx = FeatureExtractor(model, layers=["1", "4"], device="cpu", batch_size=2,
                          progress=False)
    try:
        store, _ = call(fx.extract_to_store, images, path, labels=labels,
                        metadata=metadata, chunk_size=chunk_size)
        state = _assert_no_partial_store(path)
        event(f"store {state}")
        if store is not None:
            assert len(store) == n and np.isfinite(store.X).all()
            if labels is not None:
                assert np.array_equal(store.labels, np.asarray(labels).astype(np.int64))
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


@FUZZ(60)
@given(rows=st.sampled_from(["ok", "short", "nan", "wide", "1d", "str", "none"]),
       k=st.sampled_from([0, 1, 5, -1]), count=st.sampled_from([3, 0, -1]),
       sizes=st.sampled_from([[2], [0], [-1], [2, 2]]))
def test_store_writer_bad_chunks(tmp_path_factory, rows, k, count, sizes):
    path = tmp_path_factory.mktemp("fuzz_writer") / "store"
    try:
        writer, _ = call(FeatureStoreWriter.create, path, count=count, layer_names=["a"],
                         layer_sizes=sizes, n_classes=2, chunk_size=2, has_labels=True)
        if writer is None:
            _assert_no_partial_store(path)
            return
        layer = {"ok": np.ones((2, sizes[0])), "short": np.ones((1, sizes[0])),
                 "nan": np.full((2, sizes[0]), np.nan), "wide": np.ones((2, 9)),
                 "1d": np.ones(2), "str": np.full((2, sizes[0]), "a"), "none": None}[rows]
        done, _ = call(writer.write_chunk, k, layers=[layer], logits=np.zeros((2, 2)),
                       labels=np.zeros(2, dtype=int))
        if done is not None:
            assert writer.committed() >= {k}
        writer.close()
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


# ------------------------------------------------------ detection-set builder
@FUZZ(25)
@given(batch=batches(max_n=4),
       attacks=st.sampled_from([[("fgsm", 0.1)], [("fgsm", 0.1)],
                                [("pgd", [0.05, 0.1], {"n_iter": 1})],
                                [("gaussian_noise", 0.1)], [("nope", 0.1)],
                                [("fgsm", 5.0)], [], "fgsm"]),
       use_dir=st.booleans())
def test_build_detection_set(model, tmp_path_factory, batch, attacks, use_dir):
    images, labels, part = batch
    if part == "nothing":  # labels the model gets right: there is something to attack
        with torch.no_grad():
            labels = model(torch.as_tensor(images)).argmax(1).numpy()
    out_dir = tmp_path_factory.mktemp("fuzz_build") / "set" if use_dir else None
    ref = np.random.default_rng(1).random((6, 1, 6, 6), dtype=np.float32)
    ref_labels = np.arange(6) % N_CLASSES
    try:
        data, exc = call(build_detection_set, model, ref, ref_labels, images, labels,
                         attacks=attacks, layers=["1", "4"], device="cpu",
                         random_state=0, out_dir=out_dir)
        if data is not None:
            assert data.X.shape == (len(data.y), data.layout.n_features)
            assert np.isfinite(data.X).all() and set(np.unique(data.y)) <= {0, 1}
        elif out_dir is not None and out_dir.exists():
            # a failed build may leave finished stores to resume from, never half ones
            for store_dir in {p.parent for p in out_dir.rglob("*.npy")}:
                assert call(open_store, store_dir)[0] is not None, (
                    f"build_detection_set failed ({exc}) and left a partial store "
                    f"{store_dir.relative_to(out_dir)}; inputs: {describe(images)}, "
                    f"{describe(labels)}")
    finally:
        if out_dir is not None:
            shutil.rmtree(out_dir.parent, ignore_errors=True)
