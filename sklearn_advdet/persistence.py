"""Save fitted estimators in a format that loads without running code.

``save(estimator, path)`` writes one zip file (``.advdet`` by convention)
holding ``manifest.json`` -- the versions, the user's metadata and the
estimator as a JSON tree -- and ``arrays/<n>.npy`` members (stored, not
compressed) read back with ``numpy.load(allow_pickle=False)``.  ``load(path)``
rebuilds every object as ``cls.__new__(cls)`` plus its stored attributes,
and only for the classes of :func:`supported_types` (the allow-list is
checked on the class's name before its module is imported; this package's
own classes must be estimators or :data:`OWN_HELPERS`, without a finaliser); a file naming any other
class, holding a pickle, a member outside that layout (``../x``, absolute
paths), or damaged or truncated, is refused with a :class:`PersistenceError`
before anything of it is used.  Unlike :mod:`pickle` / :mod:`joblib`, a file
from a stranger cannot run code when loaded.

Supported: every estimator of this package (skorch nets included: their
constructor arguments plus the module's ``state_dict`` as arrays; the net is
rebuilt on load and predicts as before; optimizer state and callbacks are
not kept), the kNN scorer's search indexes (rebuilt from the stored
reference arrays), and the scikit-learn pieces a detection pipeline uses
(see :data:`SKLEARN_CLASSES`).  Attributes may be None, bool, int, float,
str, complex, lists, tuples, sets, dicts, slices, numpy arrays (structured
too), numpy scalars and dtypes, ``RandomState``/``Generator``, torch devices
and tensors, and supported objects (nested, shared references kept).

Examples
--------
>>> import numpy as np, tempfile, os
>>> from sklearn.linear_model import LogisticRegression
>>> from sklearn_advdet import persistence
>>> X = np.array([[0.0], [1.0], [2.0], [3.0]]); y = np.array([0, 0, 1, 1])
>>> clf = LogisticRegression().fit(X, y)
>>> path = os.path.join(tempfile.mkdtemp(), "clf.advdet")
>>> persistence.save(clf, path, metadata={"note": "toy"})
PosixPath('...clf.advdet')
>>> back, meta = persistence.load(path, return_metadata=True)
>>> bool(np.array_equal(back.predict_proba(X), clf.predict_proba(X))), meta["note"]
(True, 'toy')
"""

import importlib
import io
import json
import os
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ._persistence_codec import Decoder, Encoder, PersistenceError, class_path
from ._persistence_hooks import SKORCH_NETS, hook_for_class

__all__ = ["save", "load", "is_model_file", "supported_types", "PersistenceError",
           "SKLEARN_CLASSES", "OWN_HELPERS", "FORMAT"]

FORMAT = "sklearn_advdet.model"
FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_ARRAY_NAME = re.compile(r"arrays/[0-9]{1,9}\.npy")
_MAX_MANIFEST_BYTES = 64 * 2**20

#: scikit-learn classes a saved estimator may contain (exact import paths).
SKLEARN_CLASSES = frozenset({
    "sklearn.pipeline.Pipeline",
    "sklearn.pipeline.FeatureUnion",
    "sklearn.frozen._frozen.FrozenEstimator",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._data.MinMaxScaler",
    "sklearn.preprocessing._data.RobustScaler",
    "sklearn.preprocessing._data.Normalizer",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.decomposition._pca.PCA",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting."
    "HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.mixture._gaussian_mixture.GaussianMixture",
    "sklearn.ensemble._iforest.IsolationForest",
    "sklearn.tree._classes.ExtraTreeRegressor",
    "sklearn.tree._tree.Tree",
    "sklearn.covariance._empirical_covariance.EmpiricalCovariance",
    "sklearn.covariance._shrunk_covariance.LedoitWolf",
    "sklearn.covariance._shrunk_covariance.OAS",
    "sklearn.covariance._shrunk_covariance.ShrunkCovariance",
})

# parts of this package that are not plain numpy/sklearn objects
_OWN_EXCLUDED = ("sklearn_advdet.deep", "sklearn_advdet.experiments", "sklearn_advdet.cli",
                 "sklearn_advdet._torch_nets", "sklearn_advdet.persistence",
                 "sklearn_advdet._persistence")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _own_class_path(path):
    """Whether ``path`` may name a class of this package (string test only)."""
    if not path.startswith("sklearn_advdet."):
        return False
    if any(path == p or path.startswith(p + ".") or path.startswith(p + "_")
           for p in _OWN_EXCLUDED):
        return False
    parts = path.split(".")
    return len(parts) >= 3 and all(_IDENTIFIER.fullmatch(p) for p in parts) and \
        not parts[-1].startswith("__")


# helper objects (not estimators) of this package that fitted estimators hold
OWN_HELPERS = frozenset({
    "sklearn_advdet._layout.FeatureLayout",
    "sklearn_advdet.search.exact.ExactIndex",
    "sklearn_advdet.search.exact._ExactIndex",
    "sklearn_advdet.search.pynndescent.PynndescentIndex",
    "sklearn_advdet.search._base._AutoIndex",
    "sklearn_advdet.knn._ExactIndex",
    "sklearn_advdet.knn._PynndescentIndex",
    "sklearn_advdet._density.DensityModel",
    "sklearn_advdet.search._layers.ChunkedPCA",
})


def _own_class_allowed(cls):
    """Own classes: estimators and the listed helpers, none with a finaliser
    (a ``__del__`` could act on attributes a crafted file sets)."""
    from sklearn.base import BaseEstimator

    if any("__del__" in vars(k) for k in cls.__mro__[:-1]):
        return False
    return issubclass(cls, BaseEstimator) or class_path(cls) in OWN_HELPERS


def _allowed_path(path):
    return isinstance(path, str) and (
        path in SKLEARN_CLASSES or path in SKORCH_NETS or _own_class_path(path))


def supported_types():
    """The import paths a saved file may name (this package's own classes as a
    pattern), sorted."""
    return sorted(SKLEARN_CLASSES | set(SKORCH_NETS) | OWN_HELPERS) + [
        "sklearn_advdet.<module>.<Estimator> (every scikit-learn estimator of the "
        "numpy/scikit-learn side; not deep/, experiments/, cli/)"]


class _Policy:
    """The allow-list, the hooks, and the device mapping of one save/load."""

    def __init__(self):
        self._warned_device = False

    def check_class(self, cls, where):
        path = class_path(cls)
        if not _allowed_path(path):
            raise PersistenceError(
                f"{where}: type {path} is not supported by sklearn_advdet.persistence "
                "(supported: this package's estimators, skorch nets of its detectors and "
                "the scikit-learn classes in persistence.SKLEARN_CLASSES)")
        if path in SKORCH_NETS and hook_for_class(cls) is None:  # pragma: no cover
            raise PersistenceError(f"{where}: {path} needs a hook")
        if self.resolve_class(path, where) is not cls:
            raise PersistenceError(f"{where}: {path} is not importable under that name")

    hook_for = staticmethod(hook_for_class)

    @staticmethod
    def resolve_class(path, where):
        if not _allowed_path(path):
            raise PersistenceError(
                f"{where}: the file names type {str(path)[:80]!r}, which is not on the "
                "allow-list of sklearn_advdet.persistence: refusing to load it")
        module_name, _, name = path.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise PersistenceError(f"{where}: module {module_name} of {path} cannot be "
                                   "imported (saved with another version?)") from None
        cls = getattr(module, name, None)
        if not isinstance(cls, type) or class_path(cls) != path:
            raise PersistenceError(f"{where}: {path} is not a class of that module "
                                   "(saved with another version?)")
        if path.startswith("sklearn_advdet.") and not _own_class_allowed(cls):
            raise PersistenceError(
                f"{where}: type {path} is not supported by sklearn_advdet.persistence "
                "(only the package's estimators and persistence.OWN_HELPERS)")
        return cls

    def map_device(self, device):
        import torch

        if device.type == "cuda" and not torch.cuda.is_available():
            if not self._warned_device:
                from skorch.exceptions import DeviceWarning

                warnings.warn("the model was saved on CUDA, which this machine lacks: "
                              "it is loaded on the CPU", DeviceWarning, stacklevel=4)
                self._warned_device = True
            return torch.device("cpu")
        return device


def _versions():
    import sklearn

    from . import __version__

    return {"sklearn_advdet": __version__, "sklearn": sklearn.__version__,
            "numpy": np.__version__}


def save(estimator, path, *, metadata=None):
    """Write ``estimator`` (fitted or not) to ``path`` in the safe format.

    Parameters
    ----------
    estimator : object
        An estimator of this package, a supported scikit-learn estimator or
        a Pipeline of them (or a list/dict of such).
    path : str or path-like
        File to write (``.advdet`` by convention); written under a temporary
        name and renamed, so a failure leaves no partial file.
    metadata : dict, default=None
        JSON-serialisable information stored beside the estimator.

    Returns
    -------
    path : pathlib.Path

    Raises
    ------
    PersistenceError
        Naming the attribute and the type that the format cannot hold.
    """
    path = Path(path)
    encoder = Encoder(_Policy())
    root = encoder.encode(estimator, "estimator")
    try:
        meta_json = json.loads(json.dumps(metadata or {}, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise PersistenceError(f"metadata must be JSON-serialisable: {exc}") from None
    arrays = encoder.arrays
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "versions": _versions(),
        "metadata": meta_json, "root": root,
        "arrays": {name: {"dtype": _dtype_text(a.dtype), "shape": list(a.shape)}
                   for name, a in arrays.items()},
    }
    if path.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                               dir=path.absolute().parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(_MANIFEST, json.dumps(manifest, allow_nan=False))
            for name, array in arrays.items():
                with zf.open(name, "w", force_zip64=True) as member:
                    np.save(member, array, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _dtype_text(dtype):
    return dtype.str if dtype.names is None else json.dumps(dtype.descr)


def is_model_file(path):
    """Whether ``path`` starts like a file written by :func:`save` (cheap test:
    a damaged or truncated one still answers True, and :func:`load` says what
    is wrong)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(30 + len(_MANIFEST))
    except OSError:
        return False
    return head[:4] == b"PK\x03\x04" and head[30:] == _MANIFEST.encode()


def load(path, *, return_metadata=False):
    """Read an estimator written by :func:`save`, running nothing from the file.

    Parameters
    ----------
    path : str or path-like
    return_metadata : bool, default=False
        Also return the ``metadata`` dict given to :func:`save`.

    Returns
    -------
    estimator : object
    metadata : dict
        Only with ``return_metadata=True``.

    Raises
    ------
    PersistenceError
        For a file that is not in this format, damaged or truncated, or that
        names a type outside the allow-list (nothing is imported for it).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = _read_manifest(zf, path)
            obj = _decode(zf, manifest, path)
    except zipfile.BadZipFile as exc:
        raise PersistenceError(
            f"{path} is damaged or truncated ({exc}): save the estimator again with "
            "sklearn_advdet.persistence.save (or `advdet fit`)") from None
    except (EOFError, OSError) as exc:
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise PersistenceError(f"{path} is damaged or truncated ({exc}): save the "
                               "estimator again") from None
    _check_versions(manifest, path)
    return (obj, manifest.get("metadata", {})) if return_metadata else obj


def _read_manifest(zf, path):
    infos = zf.infolist()
    names = [i.filename for i in infos]
    if not names or names[0] != _MANIFEST:
        raise PersistenceError(f"{path} is not a sklearn_advdet model file (no {_MANIFEST} "
                               "first): write one with sklearn_advdet.persistence.save")
    if len(set(names)) != len(names):
        raise PersistenceError(f"{path}: duplicate members in the archive: refused")
    for info in infos[1:]:
        if not _ARRAY_NAME.fullmatch(info.filename):
            raise PersistenceError(f"{path}: unexpected member {info.filename[:80]!r} "
                                   "(only manifest.json and arrays/<n>.npy): refused")
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise PersistenceError(f"{path}: member {info.filename} is compressed or "
                                   "encrypted, which save() never writes: refused")
    if infos[0].file_size > _MAX_MANIFEST_BYTES:
        raise PersistenceError(f"{path}: manifest larger than {_MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(zf.read(_MANIFEST).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PersistenceError(f"{path}: {_MANIFEST} is not valid JSON "
                               f"({type(exc).__name__}: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PersistenceError(f"{path} is not a sklearn_advdet model file")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PersistenceError(
            f"{path} has format version {manifest.get('format_version')!r}, this "
            f"sklearn_advdet reads version {FORMAT_VERSION}: upgrade sklearn_advdet")
    listed = manifest.get("arrays")
    if not isinstance(listed, dict) or set(listed) != set(names[1:]):
        raise PersistenceError(f"{path}: the archive's arrays differ from the manifest's "
                               "list (damaged or edited file)")
    if not isinstance(manifest.get("metadata", {}), dict):
        raise PersistenceError(f"{path}: malformed metadata")
    return manifest


def _decode(zf, manifest, path):
    cache = {}
    listed = manifest["arrays"]

    def arrays(name, where):
        if name not in listed:
            raise PersistenceError(f"{path}: {where} refers to a missing array {name!r}")
        if name not in cache:
            try:
                array = np.load(io.BytesIO(zf.read(name)), allow_pickle=False)
            except ValueError as exc:  # includes "Object arrays cannot be loaded ..."
                raise PersistenceError(f"{path}: {name} is not a plain numpy array "
                                       f"({exc}): refused") from None
            spec = listed[name]
            if (not isinstance(spec, dict) or spec.get("dtype") != _dtype_text(array.dtype)
                    or spec.get("shape") != list(array.shape)):
                raise PersistenceError(f"{path}: {name} differs from the manifest "
                                       "(damaged or edited file)")
            cache[name] = array
        return cache[name]

    decoder = Decoder(_Policy(), arrays)
    try:
        return decoder.decode(manifest.get("root"), "estimator")
    except PersistenceError as exc:
        if str(path) in str(exc):
            raise
        raise PersistenceError(f"{path}: {exc}") from None
    except RecursionError:
        raise PersistenceError(f"{path}: nested too deeply") from None


def _check_versions(manifest, path):
    import sklearn

    saved = manifest.get("versions", {}).get("sklearn")
    if isinstance(saved, str) and saved.split(".")[:2] != sklearn.__version__.split(".")[:2]:
        from sklearn.exceptions import InconsistentVersionWarning

        warnings.warn(InconsistentVersionWarning(
            estimator_name=f"the estimator in {path}", current_sklearn_version=sklearn.__version__,
            original_sklearn_version=saved), stacklevel=3)
