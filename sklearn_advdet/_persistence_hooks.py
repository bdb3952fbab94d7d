"""Objects :mod:`sklearn_advdet.persistence` stores in their own way.

- skorch nets: the constructor arguments and the module's ``state_dict`` as
  arrays; rebuilt with ``initialize()`` (torch imported lazily) and the
  weights loaded back.  Callbacks, optimizer state and data samplers are not
  kept: a loaded net predicts; refit the estimator to train again.
- search indexes of the kNN scorer: the reference arrays and the
  constructor's arguments; the index is rebuilt on load.
- ``HistGradientBoostingClassifier``: its loss object (Cython) is rebuilt
  from the fitted estimator instead of stored.
"""

import inspect
import warnings

import numpy as np

from ._persistence_codec import PersistenceError, class_path

__all__ = ["HOOKS_BY_PATH", "hook_for_class"]

# classes of a net's parts that a file may name (never resolved otherwise)
_NET_MODULE_PREFIX = "sklearn_advdet._torch_nets."
_NET_PARTS = {
    "criterion": ("BCEWithLogitsLoss", "CrossEntropyLoss", "BCELoss", "NLLLoss", "MSELoss"),
    "optimizer": ("Adam", "AdamW", "SGD", "RMSprop"),
}
_NET_SCALARS = ("lr", "batch_size", "max_epochs", "warm_start", "verbose", "threshold",
                "predict_nonlinearity", "compile", "use_caching", "torch_load_kwargs")


class _Hook:
    full = False

    def prepare(self, obj, attrs):
        return attrs

    def after_load(self, obj):
        pass


class _SkorchNet(_Hook):
    """A fitted skorch net as constructor arguments + state_dict arrays."""

    full = True

    def dump(self, net, enc, where):
        import torch

        if not getattr(net, "initialized_", False):
            raise PersistenceError(f"{where}: the skorch net is not initialized")
        module_cls = net.module if isinstance(net.module, type) else type(net.module)
        if not class_path(module_cls).startswith(_NET_MODULE_PREFIX):
            raise PersistenceError(f"{where}: module {class_path(module_cls)} is not one "
                                   "of sklearn_advdet's networks")
        params = net.get_params(deep=False)
        state = {
            "module": class_path(module_cls),
            "module_kwargs": enc.encode(
                {k[len("module__"):]: v for k, v in params.items()
                 if k.startswith("module__")}, f"{where}.module__"),
            "scalars": enc.encode({k: params[k] for k in _NET_SCALARS if k in params
                                   and _plain(params[k])}, where),
            "device": str(net.device),
            "weights": enc.encode({k: v.detach().cpu().numpy()
                                   for k, v in net.module_.state_dict().items()},
                                  f"{where}.module_"),
            "history": enc.encode(_plain_history(net.history), f"{where}.history"),
        }
        for part, names in _NET_PARTS.items():
            value = params[part]
            cls = value if isinstance(value, type) else type(value)
            home = torch.nn if part == "criterion" else torch.optim
            if cls.__name__ not in names or getattr(home, cls.__name__, None) is not cls:
                raise PersistenceError(f"{where}: {part} {class_path(cls)} is not supported")
            state[part] = cls.__name__
        return state

    def load(self, cls, state, dec, where):
        import torch
        from skorch.history import History

        module_path = state["module"]
        if not (isinstance(module_path, str) and module_path.startswith(_NET_MODULE_PREFIX)):
            raise PersistenceError(f"{where}: module {module_path!r} is not allowed")
        from . import _torch_nets

        module_cls = getattr(_torch_nets, module_path[len(_NET_MODULE_PREFIX):], None)
        if not (isinstance(module_cls, type) and issubclass(module_cls, torch.nn.Module)
                and class_path(module_cls) == module_path):
            raise PersistenceError(f"{where}: unknown network {module_path!r}")
        parts = {}
        for part, names in _NET_PARTS.items():
            if state[part] not in names:
                raise PersistenceError(f"{where}: {part} {state[part]!r} is not allowed")
            parts[part] = getattr(torch.nn if part == "criterion" else torch.optim,
                                  state[part])
        kwargs = {f"module__{k}": v
                  for k, v in dec.decode(state["module_kwargs"], where).items()}
        scalars = dec.decode(state["scalars"], where)
        scalars = {k: v for k, v in scalars.items() if k in _NET_SCALARS}
        device = dec.policy.map_device(torch.device(str(state["device"])))
        net = cls(module=module_cls, train_split=None, device=str(device),
                  **parts, **scalars, **kwargs)
        with torch.random.fork_rng(devices=[]):  # initialising draws random weights
            net.initialize()
        weights = dec.decode(state["weights"], f"{where}.module_")
        try:
            net.module_.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()},
                                        strict=True)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise PersistenceError(f"{where}: the stored weights do not fit the network "
                                   f"({str(exc).splitlines()[0]})") from None
        net.module_.to(device)
        net.history = History(dec.decode(state["history"], f"{where}.history"))
        return net


def _plain(value):
    return value is None or isinstance(value, (bool, int, float, str))


def _plain_history(history):
    """The epoch records, keeping plain values (batches included)."""
    def clean(record):
        out = {}
        for k, v in record.items():
            if k == "batches":
                out[k] = [clean(b) for b in v]
            elif _plain(v) or (isinstance(v, list) and all(_plain(x) for x in v)):
                out[k] = v
            elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
                out[k] = v.item()
        return out

    return [clean(dict(r)) for r in history]


class _ArgsIndex(_Hook):
    """An index rebuilt by calling its constructor with stored arguments."""

    full = True

    def __init__(self, args):
        self.args = args

    def dump(self, obj, enc, where):
        return {name: enc.encode(self._get(obj, name), f"{where}.{name}")
                for name in self.args}

    def _get(self, obj, name):
        return getattr(obj, name)

    def load(self, cls, state, dec, where):
        if set(state) != set(self.args):
            raise PersistenceError(f"{where}: index arguments {sorted(state)} differ "
                                   f"from {list(self.args)}")
        values = {k: dec.decode(state[k], f"{where}.{k}") for k in self.args}
        return cls(**values)


class _PynndescentIndex(_ArgsIndex):
    """The graph is rebuilt from the references with the same seed and settings
    (approximate search: the same recall, not always the same neighbours)."""

    _KEYS = ("n_neighbors", "n_trees", "leaf_size", "pruning_degree_multiplier",
             "diversify_prob", "n_iters", "delta", "max_candidates", "low_memory")

    def _get(self, obj, name):
        if name == "random_state":
            return getattr(obj.index, "random_state", None)
        if name == "n_jobs":
            return getattr(obj.index, "n_jobs", None)
        if name == "params":
            params = {"epsilon": float(obj.epsilon)}
            for key in self._KEYS:
                value = getattr(obj.index, key, None)
                if value is not None and (_plain(value) or hasattr(value, "item")):
                    params[key] = value
            return params
        return getattr(obj, name)

    def load(self, cls, state, dec, where):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pynndescent notes
            return super().load(cls, state, dec, where)


class _SkorchDetector(_Hook):
    """The package's skorch detectors: ``device_`` follows the rebuilt net
    (the CPU when the file was written on CUDA and this machine has none)."""

    def after_load(self, obj):
        net = getattr(obj, "net_", None)
        device = getattr(obj, "device_", None)
        if net is None or device is None or str(device) == str(net.device):
            return
        if isinstance(device, str):
            obj.device_ = str(net.device)
        else:
            import torch

            obj.device_ = torch.device(net.device)


class _HistGradientBoosting(_Hook):
    """The loss object (Cython) is rebuilt, the early-stopping scorer dropped."""

    def prepare(self, obj, attrs):
        attrs = dict(attrs)
        attrs.pop("_loss", None)
        attrs["_scorer"] = None  # only used while fitting
        return attrs

    def after_load(self, obj):
        if hasattr(obj, "n_trees_per_iteration_"):  # fitted (an unfitted one has no loss)
            obj._loss = obj._get_loss(sample_weight=None)


class _SklearnTree(_Hook):
    """``sklearn.tree._tree.Tree`` (Cython): its constructor arguments and the
    node/value arrays of its own ``__reduce__``; on load the node links are
    checked before ``__setstate__`` so that no prediction reads out of bounds."""

    full = True

    def dump(self, tree, enc, where):
        _, args, state = tree.__reduce__()
        n_features, n_classes, n_outputs = args
        return {"n_features": enc.encode(int(n_features), where),
                "n_classes": enc.encode(np.asarray(n_classes, dtype=np.intp), where),
                "n_outputs": enc.encode(int(n_outputs), where),
                "state": enc.encode(dict(state), f"{where}.state")}

    def load(self, cls, state, dec, where):
        n_features = dec.decode(state["n_features"], where)
        n_classes = np.asarray(dec.decode(state["n_classes"], where), dtype=np.intp)
        n_outputs = dec.decode(state["n_outputs"], where)
        tree_state = dec.decode(state["state"], f"{where}.state")
        nodes = tree_state["nodes"]
        _check_links(nodes, "left_child", "right_child", "feature", n_features,
                     int(tree_state["node_count"]), where)
        if tree_state["values"].shape[0] != len(nodes):
            raise PersistenceError(f"{where}: tree values do not match its nodes")
        tree = cls(int(n_features), n_classes, int(n_outputs))
        tree.__setstate__(tree_state)
        return tree


class _TreePredictor(_Hook):
    """HistGradientBoosting's trees: node links checked on load."""

    def after_load(self, obj):
        nodes = obj.nodes
        if not isinstance(nodes, np.ndarray) or nodes.dtype.names is None:
            raise PersistenceError("TreePredictor nodes are not a structured array")
        inner = ~nodes["is_leaf"].astype(bool)
        n = len(nodes)
        for field in ("left", "right"):
            child = nodes[field][inner].astype(np.int64)
            if np.any(child <= np.flatnonzero(inner)) or np.any(child >= n):
                raise PersistenceError(f"TreePredictor: {field} links out of range")


def _check_links(nodes, left, right, feature, n_features, node_count, where):
    if not isinstance(nodes, np.ndarray) or nodes.dtype.names is None or \
            len(nodes) != node_count:
        raise PersistenceError(f"{where}: malformed tree nodes")
    idx = np.arange(len(nodes))
    for field in (left, right):
        child = nodes[field].astype(np.int64)
        leaf = child == -1
        if np.any(~leaf & ((child <= idx) | (child >= node_count))):
            raise PersistenceError(f"{where}: tree node links out of range")
    feat = nodes[feature].astype(np.int64)
    if np.any((feat >= n_features) | (feat < -2)):
        raise PersistenceError(f"{where}: tree node features out of range")


HOOKS_BY_PATH = {
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting."
    "HistGradientBoostingClassifier": _HistGradientBoosting(),
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor": _TreePredictor(),
    "sklearn.tree._tree.Tree": _SklearnTree(),
}
SKORCH_NETS = (
    "skorch.classifier.NeuralNetBinaryClassifier",
    "skorch.classifier.NeuralNetClassifier",
    "skorch.regressor.NeuralNetRegressor",
    "skorch.net.NeuralNet",
)
_INDEX_SIGNATURES = {
    # class name in sklearn_advdet -> (constructor arguments, hook class)
    "ExactIndex": (("data", "n_jobs"), _ArgsIndex),
    "_ExactIndex": (("data", "n_jobs"), _ArgsIndex),
    "PynndescentIndex": (("data", "random_state", "n_jobs", "params"), _PynndescentIndex),
    "_PynndescentIndex": (("data", "random_state", "n_jobs", "params"), _PynndescentIndex),
}


def hook_for_class(cls):
    """The hook of ``cls`` (allowed class), or None for the generic form."""
    path = class_path(cls)
    if path in HOOKS_BY_PATH:
        return HOOKS_BY_PATH[path]
    if path in SKORCH_NETS:
        return _SkorchNet()
    if path.startswith("sklearn_advdet.") and any(
            k.__name__ == "_SkorchDetector" for k in cls.__mro__):
        return _SkorchDetector()
    spec = _INDEX_SIGNATURES.get(cls.__name__)
    if spec is not None and path.startswith("sklearn_advdet."):
        args, hook = spec
        try:
            params = tuple(inspect.signature(cls.__init__).parameters)[1:]
        except (TypeError, ValueError):
            return None
        if params == args:  # the constructor still takes what the hook stores
            return hook(args)
    return None
