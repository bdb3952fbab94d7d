"""Join the shard stores of one extraction (``shard=(i, n)``) into one store.

Every shard is checked before anything is written: it must open as a whole
store (complete, not truncated, arrays as the manifest promises), carry shard
information, and agree with the others on the input fingerprint, the layout,
the total count and the metadata names; the shards must be ``0..n-1`` once
each and cover the rows without gap or overlap.  A shard that fails is named
in the :class:`StoreError` and nothing is merged.  The output is written
chunk by chunk like any store and marked complete last; a failure while
copying removes it.
"""

import shutil
from pathlib import Path

import numpy as np

from ._store_format import StoreError
from ._store_reader import FeatureStore, open_store
from ._store_writer import FeatureStoreWriter

__all__ = ["merge_stores"]


def _open_shard(path):
    try:
        store = open_store(path)
    except (StoreError, OSError) as exc:
        raise StoreError(f"shard {path} cannot be merged: {exc}") from None
    info = store.manifest.get("shard")
    if not isinstance(info, dict) or not {"index", "of", "start", "stop", "total"} <= set(info):
        raise StoreError(f"shard {path} cannot be merged: its manifest has no shard "
                         "information (extract it with shard=(i, n))")
    if info["stop"] - info["start"] != len(store):
        raise StoreError(f"shard {path} cannot be merged: it holds {len(store)} rows "
                         f"for rows [{info['start']}, {info['stop']})")
    return store, info


def _base_fingerprint(store):
    fp = dict(store.fingerprint or {})
    fp.pop("shard", None)
    return fp


def _check_shards(shards):
    """(stores sorted by shard index) or a StoreError naming the odd one out."""
    first, info0 = shards[0]
    n = info0["of"]
    by_index = {}
    for store, info in shards:
        where = f"shard {store.path}"
        for what, mine, theirs in (
                ("number of shards", info["of"], n),
                ("total count", info["total"], info0["total"]),
                ("input fingerprint", _base_fingerprint(store), _base_fingerprint(first)),
                ("layout", store.layout, first.layout),
                ("metadata", sorted(store.manifest["metadata"]),
                 sorted(first.manifest["metadata"])),
                ("labels", store.labels is None, first.labels is None)):
            if mine != theirs:
                raise StoreError(f"{where} cannot be merged: its {what} differs from "
                                 f"that of shard {first.path}")
        if info["index"] in by_index:
            raise StoreError(f"{where} and shard {by_index[info['index']][0].path} are "
                             f"both shard {info['index']} of {n}")
        by_index[info["index"]] = (store, info)
    missing = sorted(set(range(n)) - set(by_index))
    if missing:
        raise StoreError(f"shards {missing} of {n} are missing: found only "
                         f"{sorted(by_index)}; nothing was merged")
    ordered = [by_index[i] for i in range(n)]
    row = 0
    for store, info in ordered:
        if info["start"] != row:
            raise StoreError(f"shard {store.path} starts at row {info['start']}, expected "
                             f"{row}: the shards do not tile the data")
        row = info["stop"]
    if row != info0["total"]:
        raise StoreError(f"the shards cover {row} of {info0['total']} rows")
    return [s for s, _ in ordered]


def merge_stores(shards, path, *, chunk_size=None, lock_timeout=600.0):
    """Join the shard stores of one extraction into one store at ``path``.

    Parameters
    ----------
    shards : sequence of str or path-like
        The ``n`` stores written with ``extract_to_store(..., shard=(i, n))``,
        in any order.
    path : str or path-like
        Output store directory (new or empty).
    chunk_size : int, default=None
        Chunk size of the output (default: that of shard 0).
    lock_timeout : float, default=600
        As for :meth:`FeatureStoreWriter.create`.

    Returns
    -------
    FeatureStore
        The merged store: the same arrays as one extraction of the whole data.

    Raises
    ------
    StoreError
        Naming the shard that is incomplete, damaged, from other input, a
        duplicate or missing; nothing is written then.
    """
    paths = [Path(p) for p in shards]
    if not paths:
        raise ValueError("merge_stores needs at least one shard store")
    if any(Path(path).resolve() == p.resolve() for p in paths):
        raise ValueError(f"the output {path} is one of the shards: pick a new directory")
    stores = _check_shards([_open_shard(p) for p in paths])
    first = stores[0]
    m = first.manifest
    total = m["shard"]["total"]
    metadata = {k: np.concatenate([np.asarray(s.metadata[k]) for s in stores])
                for k in m["metadata"]}
    extra = {k: v for k, v in m.items() if k in ("include_logits", "extractor")}
    writer = FeatureStoreWriter.create(
        path, count=total, layer_names=first.layer_names, layer_sizes=first.layer_sizes,
        n_classes=first.n_classes, chunk_size=int(chunk_size or m["chunk_size"]),
        has_labels=first.labels is not None, metadata=metadata, model=m.get("model"),
        source=m.get("source", "").rsplit(" rows [", 1)[0] or None,
        dtype=m.get("dtype", "float32"), extra=extra,
        fingerprint=_base_fingerprint(first), resume=False, lock_timeout=lock_timeout)
    try:
        starts = np.cumsum([0] + [len(s) for s in stores])
        for k in writer.missing_chunks():
            lo, hi = writer.chunk_bounds(k)
            writer.write_chunk(k, **_rows(stores, starts, lo, hi))
        writer.close()
        if not writer.finalize():
            raise StoreError(f"merging into {path} left chunks unwritten")
    except BaseException:
        writer.close()
        shutil.rmtree(path, ignore_errors=True)
        raise
    return FeatureStore.open(path)


def _rows(stores, starts, lo, hi):
    """Rows [lo, hi) of the concatenated shards, as write_chunk arguments."""
    parts = []
    for s, a, b in zip(stores, starts[:-1], starts[1:]):
        if b > lo and a < hi:
            parts.append((s, max(lo, a) - a, min(hi, b) - a))

    def cat(get):
        return np.concatenate([np.asarray(get(s)[i:j]) for s, i, j in parts])
    n_layers = len(stores[0].layer_names)
    out = {"layers": [cat(lambda s, li=li: s.layer(li)) for li in range(n_layers)]}
    if stores[0].n_classes is not None:
        out["logits"] = cat(lambda s: s.logits)
    if stores[0].labels is not None:
        out["labels"] = cat(lambda s: s.labels)
    return out
