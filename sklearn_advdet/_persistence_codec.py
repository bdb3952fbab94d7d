"""Encode a fitted estimator as JSON + plain numpy arrays, and back.

Used by :mod:`sklearn_advdet.persistence`.  Every value becomes JSON (None,
bool, int, str, finite float, list) or a tagged JSON object ``{"$": tag,
...}``; arrays without Python objects go to ``.npy`` members, read back with
``allow_pickle=False``.  Objects are rebuilt as ``cls.__new__(cls)`` plus
their stored attributes, only for classes the allow-list accepts; nothing
of the file is ever called or unpickled.
"""

import math

import numpy as np

__all__ = ["PersistenceError", "Encoder", "Decoder"]

_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
_BUILTIN_TYPES = {"float": float, "int": int, "bool": bool, "str": str, "complex": complex}


class PersistenceError(ValueError):
    """A file that is not a valid sklearn_advdet model, or an object that
    cannot be saved in that format."""


def class_path(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_numpy_type(value):
    return isinstance(value, type) and issubclass(value, np.generic) and value is not np.object_


class Encoder:
    """Turns a value into JSON; arrays are collected in ``self.arrays``.

    ``policy`` gives ``check_class(cls, where)`` (raises for a class outside
    the allow-list) and ``hook_for(cls)``: None, or a hook whose ``full``
    says whether it replaces the object's encoding (``dump(obj, encoder,
    where) -> JSON`` / ``load(cls, state, decoder, where) -> obj``) or adjusts
    its attributes (``prepare(obj, attrs) -> attrs`` / ``after_load(obj)``).
    """

    def __init__(self, policy):
        self.policy = policy
        self.arrays = {}  # member name -> array
        self._array_ids = {}  # id(array) -> member name (shared arrays stored once)
        self._object_ids = {}  # id(obj) -> object number
        self._keep = []  # keep encoded objects alive so their ids stay unique

    def array(self, value):
        key = id(value)
        if key not in self._array_ids:
            name = f"arrays/{len(self.arrays)}.npy"
            self.arrays[name] = value
            self._array_ids[key] = name
            self._keep.append(value)
        return self._array_ids[key]

    def encode(self, value, where):  # noqa: C901 - one branch per kind of value
        if value is None or type(value) in (bool, str, int):
            return value
        if type(value) is float:
            if math.isfinite(value):
                return value
            return {"$": "float", "v": repr(value)}
        if type(value) is complex:
            return {"$": "complex", "re": self.encode(value.real, where),
                    "im": self.encode(value.imag, where)}
        if type(value) is list:
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if type(value) is tuple:
            return {"$": "tuple", "items": [self.encode(v, f"{where}[{i}]")
                                            for i, v in enumerate(value)]}
        if type(value) in (set, frozenset):
            items = sorted(value, key=repr)
            return {"$": type(value).__name__,
                    "items": [self.encode(v, f"{where}{{}}") for v in items]}
        if type(value) is dict:
            return {"$": "dict", "items": [[self.encode(k, f"{where} key"),
                                            self.encode(v, f"{where}[{k!r}]")]
                                           for k, v in value.items()]}
        if type(value) is slice:
            return {"$": "slice", "v": [self.encode(v, where)
                                        for v in (value.start, value.stop, value.step)]}
        if type(value) is np.ndarray:
            return self._ndarray(value, where)
        if isinstance(value, np.generic) and type(value).__module__ == "numpy":
            if isinstance(value, np.object_):
                raise PersistenceError(f"{where}: numpy object scalars are not supported")
            return {"$": "npscalar", "ref": self.array(np.asarray(value))}
        if type(value) is np.dtype or isinstance(value, np.dtype):
            return self._dtype(value, where)
        if _is_numpy_type(value):
            return {"$": "type", "name": f"numpy.{value.__name__}"}
        if isinstance(value, type) and value in _BUILTIN_TYPES.values():
            return {"$": "type", "name": value.__name__}
        if type(value) is np.random.RandomState:
            return {"$": "RandomState", "state": self.encode(value.get_state(), where)}
        if type(value) is np.random.Generator:
            bitgen = value.bit_generator
            name = type(bitgen).__name__
            if name not in _BIT_GENERATORS:
                raise PersistenceError(f"{where}: bit generator {name} is not supported")
            return {"$": "Generator", "bit_generator": name,
                    "state": self.encode(bitgen.state, where)}
        torch_value = self._torch(value, where)
        if torch_value is not None:
            return torch_value
        return self._object(value, where)

    def _ndarray(self, value, where):
        if not value.dtype.hasobject:
            return {"$": "ndarray", "ref": self.array(value)}
        if value.dtype != np.dtype(object):
            raise PersistenceError(f"{where}: structured arrays with Python objects "
                                   "are not supported")
        if all(isinstance(v, str) for v in value.flat):  # feature names, class labels
            return {"$": "strarray", "ref": self.array(value.astype(str))}
        return {"$": "objarray", "shape": list(value.shape),
                "items": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value.flat)]}

    @staticmethod
    def _dtype(value, where):
        if value.hasobject and value != np.dtype(object):
            raise PersistenceError(f"{where}: dtype {value} holds Python objects")
        return {"$": "dtype", "descr": value.descr if value.names else value.str}

    def _torch(self, value, where):
        module = type(value).__module__ or ""
        if not module.startswith("torch"):
            return None
        import torch

        if isinstance(value, torch.device):
            return {"$": "torch.device", "v": str(value)}
        if type(value) in (torch.Tensor, torch.nn.Parameter):
            try:
                array = value.detach().cpu().numpy()
            except (TypeError, RuntimeError) as exc:
                raise PersistenceError(f"{where}: tensor of dtype {value.dtype} "
                                       f"cannot be stored ({exc})") from None
            return {"$": "tensor", "ref": self.array(array)}
        if isinstance(value, torch.dtype):
            return {"$": "torch.dtype", "v": str(value).removeprefix("torch.")}
        return None

    def _object(self, value, where):
        cls = type(value)
        key = id(value)
        if key in self._object_ids:
            return {"$": "same", "id": self._object_ids[key]}
        self.policy.check_class(cls, where)
        number = len(self._object_ids)
        self._object_ids[key] = number
        self._keep.append(value)
        hook = self.policy.hook_for(cls)
        if hook is not None and hook.full:
            state = hook.dump(value, self, where)
            return {"$": "object", "class": class_path(cls), "id": number, "hook": True,
                    "state": state}
        if not hasattr(value, "__dict__") or "__slots__" in vars(cls):
            raise PersistenceError(f"{where}: {class_path(cls)} keeps its state outside "
                                   "__dict__ and cannot be saved")
        raw = dict(vars(value))
        if hook is not None:
            raw = hook.prepare(value, raw)
        for k in raw:
            if type(k) is not str:
                raise PersistenceError(f"{where}: attribute name {k!r} is not a string")
        state = {k: self.encode(v, f"{where}.{k}") for k, v in raw.items()}
        return {"$": "object", "class": class_path(cls), "id": number, "state": state}


class Decoder:
    """Rebuilds values encoded by :class:`Encoder` from JSON and arrays.

    ``arrays(name, where)`` returns the array of a member; ``policy`` as for
    :class:`Encoder` plus ``resolve_class(path, where)`` (checks the
    allow-list BEFORE importing anything) and ``map_device(device)``.
    """

    def __init__(self, policy, arrays):
        self.policy = policy
        self.arrays = arrays
        self._objects = {}

    def decode(self, node, where):  # noqa: C901 - one branch per tag
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if not isinstance(node, dict) or not isinstance(node.get("$"), str):
            raise PersistenceError(f"{where}: malformed value {str(node)[:60]!r}")
        tag = node["$"]
        try:
            if tag == "float":
                if node["v"] not in ("nan", "inf", "-inf"):
                    raise PersistenceError(f"{where}: malformed float {node['v']!r}")
                return float(node["v"])
            if tag == "complex":
                return complex(self.decode(node["re"], where), self.decode(node["im"], where))
            if tag in ("tuple", "set", "frozenset"):
                items = [self.decode(v, f"{where}[{i}]") for i, v in enumerate(node["items"])]
                return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
            if tag == "dict":
                return {self._key(k, where): self.decode(v, f"{where}[{k!r}]")
                        for k, v in node["items"]}
            if tag == "slice":
                return slice(*(self.decode(v, where) for v in node["v"]))
            if tag == "ndarray":
                return self.arrays(node["ref"], where)
            if tag == "strarray":
                return self.arrays(node["ref"], where).astype(object)
            if tag == "objarray":
                out = np.empty(len(node["items"]), dtype=object)
                for i, v in enumerate(node["items"]):
                    out[i] = self.decode(v, f"{where}[{i}]")
                return out.reshape(tuple(int(s) for s in node["shape"]))
            if tag == "npscalar":
                array = self.arrays(node["ref"], where)
                if array.ndim != 0:
                    raise PersistenceError(f"{where}: a numpy scalar must be 0-d")
                return array[()]
            if tag == "dtype":
                return _decode_dtype(node["descr"], where)
            if tag == "type":
                return _decode_type(node["name"], where)
            if tag == "RandomState":
                rs = np.random.RandomState()
                rs.set_state(self.decode(node["state"], where))
                return rs
            if tag == "Generator":
                return self._generator(node, where)
            if tag in ("torch.device", "tensor", "torch.dtype"):
                return self._torch(tag, node, where)
            if tag == "same":
                return self._objects[int(node["id"])]
            if tag == "object":
                return self._object(node, where)
        except PersistenceError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise PersistenceError(f"{where}: malformed {tag!r} entry ({exc})") from None
        raise PersistenceError(f"{where}: unknown value tag {tag!r}")

    def _key(self, node, where):
        key = self.decode(node, f"{where} key")
        try:
            hash(key)
        except TypeError:
            raise PersistenceError(f"{where}: unhashable dict key") from None
        return key

    def _generator(self, node, where):
        name = node["bit_generator"]
        if name not in _BIT_GENERATORS:
            raise PersistenceError(f"{where}: bit generator {name!r} is not allowed")
        bitgen = getattr(np.random, name)()
        bitgen.state = self.decode(node["state"], where)
        return np.random.Generator(bitgen)

    def _torch(self, tag, node, where):
        import torch

        if tag == "torch.device":
            return self.policy.map_device(torch.device(str(node["v"])))
        if tag == "torch.dtype":
            value = getattr(torch, str(node["v"]), None)
            if not isinstance(value, torch.dtype):
                raise PersistenceError(f"{where}: unknown torch dtype {node['v']!r}")
            return value
        return torch.from_numpy(self.arrays(node["ref"], where))

    def _object(self, node, where):
        cls = self.policy.resolve_class(node["class"], where)
        number = int(node["id"])
        if number in self._objects:
            raise PersistenceError(f"{where}: object number {number} defined twice")
        hook = self.policy.hook_for(cls)
        full = hook is not None and hook.full
        if bool(node.get("hook")) != full:
            raise PersistenceError(f"{where}: {node['class']} entry has the wrong form")
        if full:
            try:
                obj = hook.load(cls, node["state"], self, where)
            except PersistenceError:
                raise
            except Exception as exc:  # the rebuild of an allowed class failed
                raise PersistenceError(f"{where}: cannot rebuild {node['class']} "
                                       f"({type(exc).__name__}: {exc})") from None
            self._objects[number] = obj
            return obj
        obj = cls.__new__(cls)
        self._objects[number] = obj
        state = node["state"]
        if not isinstance(state, dict):
            raise PersistenceError(f"{where}: malformed object state")
        odd = [k for k in state if not str(k).isidentifier() or str(k).startswith("__")]
        if odd:  # attributes of a fitted estimator are plain names
            raise PersistenceError(f"{where}: attribute name {str(odd[0])[:40]!r} refused")
        obj.__dict__.update({str(k): self.decode(v, f"{where}.{k}") for k, v in state.items()})
        if hook is not None:
            hook.after_load(obj)
        return obj


def _decode_dtype(descr, where):
    def as_tuple(item):
        if isinstance(item, list):
            return tuple(as_tuple(v) if isinstance(v, list) else v for v in item)
        return item

    if isinstance(descr, str):
        dtype = np.dtype(descr)
    elif isinstance(descr, list):
        dtype = np.dtype([as_tuple(item) for item in descr])
    else:
        raise PersistenceError(f"{where}: malformed dtype")
    if dtype.hasobject and dtype != np.dtype(object):
        raise PersistenceError(f"{where}: dtype with Python objects refused")
    return dtype


def _decode_type(name, where):
    if name in _BUILTIN_TYPES:
        return _BUILTIN_TYPES[name]
    if isinstance(name, str) and name.startswith("numpy."):
        value = getattr(np, name[len("numpy."):], None)
        if _is_numpy_type(value):
            return value
    raise PersistenceError(f"{where}: type {name!r} is not allowed")
