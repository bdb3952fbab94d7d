"""On-disk format of the feature store: manifest, array checks, chunk markers.

Shared by the reader (:mod:`sklearn_advdet.store`) and the writer
(:mod:`sklearn_advdet._store_writer`); numpy only.
"""

import json
import os
import re
from pathlib import Path

import numpy as np

STORE_FORMAT = "sklearn_advdet.feature_store"
STORE_VERSION = 1
_MANIFEST = "manifest.json"
_CHUNKS = "_chunks"
_LOCK = "_allocating.lock"


class StoreError(ValueError):
    """A feature store is missing, incomplete, truncated or inconsistent."""


def _safe(name):
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(name))


def _atomic_write_json(path, obj):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_manifest(path):
    mpath = Path(path) / _MANIFEST
    if not mpath.is_file():
        raise StoreError(
            f"{path} is not a feature store: {_MANIFEST} is missing (extract "
            "one with FeatureExtractor.extract_to_store)"
        )
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{mpath} is not valid JSON ({exc}): the store is damaged") from None
    if manifest.get("format") != STORE_FORMAT:
        raise StoreError(f"{mpath} is not a {STORE_FORMAT} manifest")
    if manifest.get("version", 0) > STORE_VERSION:
        raise StoreError(
            f"{path} was written by a newer sklearn_advdet (store version "
            f"{manifest['version']} > {STORE_VERSION}): upgrade to read it"
        )
    return manifest


def _array_entries(manifest):
    """(key, entry) for every array file the manifest promises."""
    out = [(f"layer:{e['name']}", e) for e in manifest["layers"]]
    for key in ("logits", "predictions", "labels"):
        if manifest["arrays"].get(key) is not None:
            out.append((key, manifest["arrays"][key]))
    for name, e in manifest["metadata"].items():
        out.append((f"meta:{name}", e))
    return out


def _check_npy(path, entry, count):
    """Check that an .npy file holds the promised shape/dtype and full data."""
    fpath = Path(path) / entry["file"]
    if not fpath.is_file():
        raise StoreError(f"feature store {path} is missing {entry['file']}")
    with open(fpath, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        except ValueError as exc:
            raise StoreError(f"{fpath} is not a valid .npy file ({exc})") from None
        header_end = f.tell()
    expected_shape = (count, *entry["shape"][1:])
    if tuple(shape) != tuple(expected_shape) or np.dtype(entry["dtype"]) != dtype:
        raise StoreError(
            f"{fpath} holds {dtype} {tuple(shape)} but the manifest promises "
            f"{entry['dtype']} {expected_shape}: the store is inconsistent, "
            "extract it again"
        )
    needed = header_end + int(np.prod(shape)) * dtype.itemsize
    actual = os.path.getsize(fpath)
    if actual < needed:
        raise StoreError(
            f"{fpath} is truncated ({actual} bytes, {needed} needed): the "
            "store is damaged, extract it again"
        )



def _n_chunks(manifest):
    count, cs = int(manifest["count"]), int(manifest["chunk_size"])
    return max(1, -(-count // cs)) if count else 0


def _committed(path, manifest):
    d = Path(path) / _CHUNKS
    n = _n_chunks(manifest)
    if manifest.get("complete"):
        return set(range(n))
    if not d.is_dir():
        return set()
    out = set()
    for f in os.listdir(d):
        if f.isdigit() and int(f) < n:
            out.add(int(f))
    return out

