"""Deprecated location of the reproduction: use :mod:`sklearn_advdet.experiments.reproduce`.

The reproduction uses both sides (the torch side and the estimators), so it
lives in the layer above both now.  The names resolve from here for one
release, with a FutureWarning; this module itself imports nothing from above.
"""

_NAMES = ("reproduce", "SIZES", "FAMILIES", "locate_cifar_tars", "locate_weights",
          "machine_info")


def __getattr__(name):
    if name in _NAMES:
        import importlib
        import warnings

        warnings.warn(
            f"sklearn_advdet.deep.reproduce.{name} moved to "
            f"sklearn_advdet.experiments.reproduce.{name}; the old path goes in the "
            "next release",
            FutureWarning, stacklevel=2,
        )
        return getattr(importlib.import_module("sklearn_advdet.experiments.reproduce"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
