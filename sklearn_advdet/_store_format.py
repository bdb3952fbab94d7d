"""On-disk format of the feature store: manifest, array checks, chunk markers.

Shared by the reader (:mod:`sklearn_advdet.store`) and the writer
(:mod:`sklearn_advdet._store_writer`); numpy only.

Every way a manifest or an array file can be damaged (not JSON, a missing or
mistyped field, a file name leaving the store directory, an object dtype, a
bad ``.npy`` header, a short file) is a :class:`StoreError` that names the
file.
"""

import json
import os
import re
from pathlib import Path

import numpy as np

STORE_FORMAT = "sklearn_advdet.feature_store"
#: 2: a generation id in the manifest and in every chunk marker, and an
#: input fingerprint.  Version 1 stores (neither) are still read.
STORE_VERSION = 2
_MANIFEST = "manifest.json"
_CHUNKS = "_chunks"
_LOCK = "_allocating.lock"
_FILE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


class StoreError(ValueError):
    """A feature store is missing, incomplete, truncated, inconsistent or
    was made from other input."""


class StoreBusyError(StoreError):
    """Another live process holds the store's lock (``lock_timeout`` ran out)."""


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


def _pid_alive(pid):
    """Whether a process ``pid`` runs on this host (True when unsure)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True
    return True


def _remove_stale_tmp(path):
    """Delete ``.<name>.<pid>.tmp`` files of writers that are no longer running."""
    for f in os.listdir(path):
        m = re.fullmatch(r"\..+\.(\d+)\.tmp", f)
        if not m:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _pid_alive(pid):
            continue  # that writer is still running
        try:
            os.remove(Path(path) / f)
        except OSError:
            pass


def _malformed(mpath, what):
    return StoreError(f"{mpath} is malformed ({what}): the store is damaged, "
                      "extract it again (resume=False)")


def _check_entry(mpath, key, entry, count, ndim=None):
    """One array entry of the manifest: a plain file name, a shape, a dtype."""
    if not isinstance(entry, dict):
        raise _malformed(mpath, f"entry {key!r} is {type(entry).__name__}, not an object")
    name = entry.get("file")
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or name in (".", ".."):
        raise _malformed(mpath, f"entry {key!r} names the file {name!r}, not a plain "
                                "file name inside the store")
    shape = entry.get("shape")
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                       for s in shape)
            or (ndim is not None and len(shape) != ndim)):
        raise _malformed(mpath, f"entry {key!r} has shape {shape!r}")
    if shape[0] != count:
        raise _malformed(mpath, f"entry {key!r} has {shape[0]} rows, count is {count}")
    try:
        dtype = np.dtype(entry.get("dtype"))
    except (TypeError, ValueError):
        raise _malformed(mpath, f"entry {key!r} has dtype {entry.get('dtype')!r}") from None
    if dtype.hasobject or entry.get("dtype") is None:
        raise _malformed(mpath, f"entry {key!r} has dtype {entry.get('dtype')!r}")


def _check_manifest(mpath, m):
    """Every field the reader and the writer use, with its type."""
    if not isinstance(m, dict):
        raise _malformed(mpath, f"a JSON {type(m).__name__}, not an object")
    count = m.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise _malformed(mpath, f"count is {count!r}")
    chunk = m.get("chunk_size")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise _malformed(mpath, f"chunk_size is {chunk!r}")
    layers, arrays, meta = m.get("layers"), m.get("arrays"), m.get("metadata")
    if not isinstance(layers, list):
        raise _malformed(mpath, "layers is not a list")
    if not isinstance(arrays, dict) or not isinstance(meta, dict):
        raise _malformed(mpath, "arrays or metadata is not an object")
    for e in layers:
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise _malformed(mpath, f"layer entry {e!r} has no name")
        _check_entry(mpath, f"layer {e['name']}", e, count, ndim=2)
    for key, ndim in (("logits", 2), ("predictions", 1), ("labels", 1)):
        if arrays.get(key) is not None:
            _check_entry(mpath, key, arrays[key], count, ndim=ndim)
    for name, e in meta.items():
        _check_entry(mpath, f"metadata {name}", e, count)
    files = [e["file"] for _, e in _array_entries(m)]
    if len(set(files)) != len(files):
        raise _malformed(mpath, "two arrays share one file")
    if not isinstance(m.get("complete", False), bool):
        raise _malformed(mpath, f"complete is {m.get('complete')!r}")
    gen = m.get("generation")
    if gen is not None and not isinstance(gen, str):
        raise _malformed(mpath, f"generation is {gen!r}")
    fp = m.get("fingerprint")
    if fp is not None and not isinstance(fp, dict):
        raise _malformed(mpath, f"fingerprint is {fp!r}")


def _read_manifest(path):
    mpath = Path(path) / _MANIFEST
    if not mpath.is_file():
        raise StoreError(
            f"{path} is not a feature store: {_MANIFEST} is missing (extract "
            "one with FeatureExtractor.extract_to_store)"
        )
    try:
        with open(mpath, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{mpath} is not valid JSON ({exc}): the store is damaged, "
                         "extract it again (resume=False)") from None
    except OSError as exc:
        raise StoreError(f"{mpath} cannot be read ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise StoreError(f"{mpath} is not a {STORE_FORMAT} manifest")
    version = manifest.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise _malformed(mpath, f"version is {version!r}")
    if version > STORE_VERSION:
        raise StoreError(
            f"{path} was written by a newer sklearn_advdet (store version "
            f"{version} > {STORE_VERSION}): upgrade to read it"
        )
    _check_manifest(mpath, manifest)
    return manifest


def _read_generation(path):
    """The generation id the manifest at ``path`` names now (StoreError when gone)."""
    return _read_manifest(path).get("generation")


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
    try:
        with open(fpath, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            header_end = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise StoreError(f"{fpath} is not a valid .npy file ({exc}): the store is "
                         "damaged, extract it again") from None
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


def _load_npy(path, entry, mmap_mode):
    """np.load of one array file, every failure a StoreError naming the file."""
    fpath = Path(path) / entry["file"]
    try:
        return np.load(fpath, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise StoreError(f"{fpath} cannot be read as an array ({exc}): the store is "
                         "damaged, extract it again") from None


def _n_chunks(manifest):
    count, cs = int(manifest["count"]), int(manifest["chunk_size"])
    return max(1, -(-count // cs)) if count else 0


def _marker_text(lo, hi, generation):
    return f"{lo} {hi} {generation or ''}\n"


def _committed(path, manifest):
    """Chunks whose marker belongs to this manifest's generation."""
    d = Path(path) / _CHUNKS
    n = _n_chunks(manifest)
    if manifest.get("complete"):
        return set(range(n))
    if not d.is_dir():
        return set()
    gen = manifest.get("generation")
    cs, count = int(manifest["chunk_size"]), int(manifest["count"])
    out = set()
    for f in os.listdir(d):
        if not (f.isdigit() and int(f) < n):
            continue
        k = int(f)
        try:
            parts = (Path(d) / f).read_text().split()
        except (OSError, UnicodeDecodeError):
            continue
        want = [str(k * cs), str(min((k + 1) * cs, count))]
        if parts[:2] != want:
            continue  # damaged marker: the chunk is recomputed
        if gen is not None and parts[2:] != [gen]:
            continue  # a marker of an earlier store at this path
        out.add(k)
    return out
