"""Shared fixtures.

``shared_data`` points at the real CIFAR-10 images and ResNet weights
(``../shared/data`` on developer machines and in CI).  Where the environment
variable ``SKLEARN_ADVDET_SHARED_DATA`` is set (CI sets it), a missing data
folder is a test *failure*; otherwise tests that need it are skipped with the
reason.
"""

import os
from pathlib import Path

import pytest

SHARED_DATA_ENV = "SKLEARN_ADVDET_SHARED_DATA"
_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"
_REQUIRED = ("cifar10-jpeg/test.tar", "weights/resnet20-12fca82f.th")


def _locate_shared_data():
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        root = Path(env)
        missing = [p for p in _REQUIRED if not (root / p).exists()]
        if missing:
            pytest.fail(
                f"{SHARED_DATA_ENV}={env} is set but {missing} is not there: "
                "the real-data tests must run where this variable is set",
                pytrace=False,
            )
        return root
    if all((_DEFAULT / p).exists() for p in _REQUIRED):
        return _DEFAULT
    pytest.skip(
        f"real data not found: set {SHARED_DATA_ENV} to a folder holding "
        "cifar10-jpeg/ and weights/ (see shared/data/README.md)"
    )


@pytest.fixture(scope="session")
def shared_data():
    """Path of the folder holding ``cifar10-jpeg/`` and ``weights/``."""
    return _locate_shared_data()


@pytest.fixture(scope="session", autouse=True)
def _isolated_data_home(tmp_path_factory):
    """Keep the embedded-data cache of a test run out of the user's home."""
    if "SKLEARN_ADVDET_DATA_HOME" not in os.environ:
        os.environ["SKLEARN_ADVDET_DATA_HOME"] = str(
            tmp_path_factory.mktemp("advdet_data_home")
        )
    yield
