"""The torch side's one validation layer (sklearn_advdet.deep._checks)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sklearn_advdet.deep._checks import (  # noqa: E402
    as_tensor,
    check_images,
    check_labels,
    model_logits,
    n_classes_of,
    select_logits,
)


def test_check_images_accepts_nchw_floats_in_unit_range_without_copy():
    x = torch.rand(3, 3, 8, 8)
    assert check_images(x) is x
    arr = np.random.default_rng(0).random((2, 1, 5, 5)).astype(np.float32)
    out = check_images(arr)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 5, 5)
    assert np.shares_memory(out.numpy(), arr)
    # empty batches and 2-D (flat) batches are fine
    assert check_images(torch.zeros(0, 3, 4, 4)).shape[0] == 0
    assert check_images(torch.zeros(4, 10)).shape == (4, 10)


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (5, 28, 28, 1), (1, 64, 64, 4)])
def test_nhwc_is_refused_naming_the_permute(shape):
    with pytest.raises(ValueError, match=r"NHWC.*x\.permute\(0, 3, 1, 2\)"):
        check_images(torch.zeros(shape))
    with pytest.raises(ValueError, match=r"numpy: x\.transpose\(0, 3, 1, 2\)"):
        check_images(np.zeros(shape, dtype=np.float32))
    # the fix it names works
    fixed = torch.zeros(shape).permute(0, 3, 1, 2)
    assert check_images(fixed).shape[1] == shape[-1]


def test_ambiguous_small_images_are_taken_as_nchw():
    # 3 channels first and 3 last: NCHW is the rule, no guess
    assert check_images(torch.zeros(2, 3, 3, 3)).shape == (2, 3, 3, 3)


def test_dtype_range_and_finiteness():
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(TypeError, match="divide uint8 images by 255"):
        check_images((x * 255).to(torch.uint8))
    with pytest.raises(TypeError, match="floats in"):
        check_images(torch.zeros(2, 3, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"in \[0, 1\].*0-255 images: divide by 255"):
        check_images(x * 255)
    with pytest.raises(ValueError, match=r"normalisation inside the model"):
        check_images(x - 0.5)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    bad[1, 2, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="2 NaN or infinite"):
        check_images(bad)
    with pytest.raises(ValueError, match="batch axis"):
        check_images(torch.zeros(5))
    with pytest.raises(ValueError, match="4-D"):
        check_images(torch.zeros(2, 5), ndim=4)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        check_images("images")
    with pytest.raises(TypeError, match="Python objects"):
        as_tensor([np.zeros(2), np.zeros(3)], "images")


def test_check_labels_shape_dtype_and_range():
    out = check_labels(np.array([0, 9, 3], dtype=np.int32), 3, n_classes=10)
    assert out.dtype == torch.int64 and out.tolist() == [0, 9, 3]
    with pytest.raises(ValueError, match=r"in \[0, 10\).*got 10 for 2 image"):
        check_labels(torch.tensor([10, 1, 10]), 3, n_classes=10)
    with pytest.raises(ValueError, match=">= 0, got -1"):
        check_labels([-1, 0], 2)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        check_labels([0, 1], 3)
    with pytest.raises(ValueError, match=r"target must have shape \(2,\)"):
        check_labels([[0, 1]], 2, name="target")
    with pytest.raises(TypeError, match="integer class indices"):
        check_labels(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(TypeError, match="integer class indices"):
        check_labels(torch.tensor([True, False]), 2)
    # without n_classes any index >= 0 passes
    assert check_labels([100], 1).tolist() == [100]


class _Outputs(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        z = self.fc(x.flatten(1))
        if self.kind == "tuple":
            return z, x
        if self.kind == "dict":
            return {"features": x, "logits": z}
        if self.kind == "1d":
            return z[:, 0]
        if self.kind == "int":
            return z.argmax(1)
        if self.kind == "drop":
            return z[:1]
        return z


def test_model_logits_plain_tuple_and_dict():
    x = torch.rand(2, 1, 2, 2)
    ref = _Outputs("plain")
    plain = model_logits(ref, x)
    assert plain.shape == (2, 3)
    for kind, sel in [("tuple", 0), ("tuple", -2), ("dict", "logits")]:
        m = _Outputs(kind)
        m.load_state_dict(ref.state_dict())
        assert torch.equal(model_logits(m, x, output=sel), plain)
    with pytest.raises(ValueError, match=r"tuple of 2 items.*output=0"):
        model_logits(_Outputs("tuple"), x)
    with pytest.raises(ValueError, match=r"dict with keys \['features', 'logits'\].*output='logits'"):
        model_logits(_Outputs("dict"), x)
    with pytest.raises(ValueError, match=r"output='z' selects no entry.*keys"):
        model_logits(_Outputs("dict"), x, output="z")
    with pytest.raises(ValueError, match=r"output=2 selects no entry.*\[0, 2\)"):
        model_logits(_Outputs("tuple"), x, output=2)
    with pytest.raises(ValueError, match="leave output=None"):
        model_logits(_Outputs("plain"), x, output=0)
    with pytest.raises(ValueError, match="shape"):
        model_logits(_Outputs("tuple"), x, output=1)  # the 4-D images, not logits
    with pytest.raises(ValueError, match="float logits"):
        model_logits(_Outputs("1d"), x)
    with pytest.raises(ValueError, match="float logits"):
        model_logits(_Outputs("int"), x)
    with pytest.raises(ValueError, match="logits for 1 images from a batch of 2"):
        model_logits(_Outputs("drop"), x)
    with pytest.raises(TypeError, match="output must be None, an int"):
        model_logits(_Outputs("tuple"), x, output=1.0)
    with pytest.raises(ValueError, match="logits must be a tensor"):
        select_logits({"logits": [1, 2]}, "logits")


def test_n_classes_of():
    x = torch.rand(2, 1, 2, 2)
    assert n_classes_of(_Outputs("plain"), x) == 3
    assert n_classes_of(_Outputs("dict"), x, output="logits") == 3
    with pytest.raises(ValueError, match="at least one image"):
        n_classes_of(_Outputs("plain"), x[:0])


# ------------------------------------------------------- fuzz-suite regressions
def test_wide_unsigned_labels_and_read_only_arrays():
    # was: torch's NotImplementedError ("min_all" not implemented for 'UInt64')
    assert check_labels(np.array([1, 2], dtype=np.uint64), 2, 3).tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        check_labels(np.array([1, 7], dtype=np.uint32), 2, 3)
    # was: torch's UserWarning about non-writable arrays (np.load(mmap_mode="r"))
    x = np.random.default_rng(0).random((2, 1, 4, 4), dtype=np.float32)
    x.flags.writeable = False
    assert np.shares_memory(check_images(x).numpy(), x)


def test_first_forward_turns_a_model_input_error_into_a_value_error():
    from sklearn_advdet.deep._checks import first_forward

    conv = torch.nn.Conv2d(3, 2, 3)
    with pytest.raises(ValueError, match=r"cannot take images of shape \(1, 5, 5\) \(a "
                                         r"batch of 2, torch.float32\).*3 channels"):
        first_forward(conv, torch.rand(2, 1, 5, 5))
    with pytest.raises(ValueError, match="cannot take images"):
        n_classes_of(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)),
                     torch.rand(2, 1, 3, 3))

    class Oom(torch.nn.Module):
        def forward(self, x):
            raise torch.cuda.OutOfMemoryError("out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):  # subclasses pass through
        first_forward(Oom(), torch.rand(1, 1, 2, 2))
