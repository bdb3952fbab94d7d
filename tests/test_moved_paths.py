"""Old import paths that the README or docs named keep working for one release."""

import importlib

import pytest

MOVED = [
    ("sklearn_advdet.deep.reproduce", "reproduce", "sklearn_advdet.experiments.reproduce"),
    ("sklearn_advdet.deep.reproduce", "SIZES", "sklearn_advdet.experiments.reproduce"),
    ("sklearn_advdet.datasets", "load_digits_detection", "sklearn_advdet.deep.digits_detection"),
]


@pytest.mark.parametrize("old, name, new", MOVED)
def test_old_path_warns_and_gives_the_same_object(old, name, new):
    pytest.importorskip("torch")
    module = importlib.import_module(old)
    with pytest.warns(FutureWarning, match=f"{name} moved"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


def test_unknown_name_is_an_attribute_error():
    module = importlib.import_module("sklearn_advdet.deep.reproduce")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        module.nope
