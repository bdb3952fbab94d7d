"""Feature store: round trip, crash and resume, shards, damaged stores."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sklearn_advdet import store as store_mod
from sklearn_advdet.deep.extraction import FeatureExtractor
from sklearn_advdet.store import (
    FeatureStore,
    FeatureStoreWriter,
    StoreBusyError,
    StoreError,
    open_store,
)

N = 50
CHUNK = 8  # 7 chunks, the last one of 2 rows


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.Conv2d(4, 5, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(5, 3),
    )


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.random((N, 3, 8, 8), dtype=np.float32)
    labels = rng.integers(0, 3, N)
    meta = {"source_id": np.arange(N) * 10, "attack": np.array(["fgsm", "none"] * (N // 2))}
    return images, labels, meta


def extractor(model=None, **kw):
    return FeatureExtractor(model or tiny_cnn(), layers=["0", "1", "4"], device="cpu",
                            batch_size=4, progress=False, **kw)


def assert_same_store(a, b):
    assert a.layout == b.layout and len(a) == len(b)
    for name in a.layer_names:
        np.testing.assert_array_equal(a.layer(name), b.layer(name))
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    np.testing.assert_array_equal(a.labels, b.labels)
    for k, v in a.metadata.items():
        np.testing.assert_array_equal(v, b.metadata[k])


def test_round_trip_matches_in_memory_extraction(tmp_path, data):
    images, labels, meta = data
    fx = extractor()
    st = fx.extract_to_store(images, tmp_path / "s", labels=labels, metadata=meta,
                             chunk_size=CHUNK, source="unit test")
    mem = fx.extract(images, labels=labels)
    assert isinstance(st, FeatureStore) and len(st) == N
    assert st.layout == mem.layout
    np.testing.assert_allclose(st.X, mem.X, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(st.labels, labels)
    np.testing.assert_array_equal(st.predictions, mem.predictions)
    np.testing.assert_array_equal(st.metadata["source_id"], meta["source_id"])
    np.testing.assert_array_equal(st.metadata["attack"], meta["attack"])
    assert st.layer("1").shape == (N, 4) and isinstance(st.layer("1"), np.memmap)
    assert st.layer_names == ["0", "1", "4"] and st.n_classes == 3
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["count"] == N
    assert manifest["model"] == "Sequential" and manifest["source"] == "unit test"
    assert [e["name"] for e in manifest["layers"]] == ["0", "1", "4"]
    files = set(os.listdir(tmp_path / "s"))
    assert {"logits.npy", "predictions.npy", "labels.npy", "meta_source_id.npy",
            "meta_attack.npy", "000_0.npy", "001_1.npy", "002_4.npy"} <= files
    assert "_chunks" not in files  # commit markers are dropped once complete
    # plain numpy reads it as well
    np.testing.assert_array_equal(np.load(tmp_path / "s" / "logits.npy"), mem.logits)
    # get_X subsets
    sub = st.get_X(layers=["4"], include_logits=False, rows=slice(0, 5))
    np.testing.assert_allclose(sub, mem.layer("4")[:5], rtol=1e-6, atol=1e-7)


def test_store_without_logits_in_X(tmp_path, data):
    images, labels, _ = data
    st = extractor(include_logits=False).extract_to_store(
        images, tmp_path / "s", chunk_size=CHUNK)
    assert not st.layout.has_logits and st.X.shape == (N, 13)
    assert st.logits.shape == (N, 3)  # still stored, just not in X
    assert st.labels is None


class _Crash(Exception):
    pass


def _crash_after(monkeypatch, k, half_written=False):
    """Make FeatureStoreWriter.write_chunk fail on its (k+1)-th call."""
    original = FeatureStoreWriter.write_chunk
    calls = []

    def flaky(self, chunk, **kw):
        calls.append(chunk)
        if len(calls) > k:
            if half_written:
                # rows reach the disk, the commit marker does not
                garbage = [np.full_like(a, 7.0) for a in kw["layers"]]
                original(self, chunk, layers=garbage, logits=kw["logits"] * 0,
                         labels=kw.get("labels"))
                os.remove(self.path / "_chunks" / f"{chunk:08d}")
            raise _Crash(f"killed in chunk {chunk}")
        return original(self, chunk, **kw)

    monkeypatch.setattr(FeatureStoreWriter, "write_chunk", flaky)
    return calls


@pytest.mark.parametrize("half_written", [False, True])
def test_resume_after_crash_gives_identical_arrays(tmp_path, data, monkeypatch,
                                                   half_written):
    images, labels, meta = data
    reference = extractor().extract_to_store(images, tmp_path / "ref", labels=labels,
                                             metadata=meta, chunk_size=CHUNK)
    model = tiny_cnn()
    calls = _crash_after(monkeypatch, 3, half_written=half_written)
    with pytest.raises(_Crash):
        extractor(model).extract_to_store(images, tmp_path / "s", labels=labels,
                                          metadata=meta, chunk_size=CHUNK)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(StoreError, match=r"incomplete \(3 of 7 chunks"):
        open_store(tmp_path / "s")
    partial = open_store(tmp_path / "s", allow_incomplete=True)
    np.testing.assert_array_equal(partial.logits[: 3 * CHUNK], reference.logits[: 3 * CHUNK])

    monkeypatch.undo()
    calls = _crash_after(monkeypatch, 10**9)  # count the chunks of the restart
    resumed = extractor(model).extract_to_store(images, tmp_path / "s", labels=labels,
                                                metadata=meta, chunk_size=CHUNK)
    assert calls == [3, 4, 5, 6]  # only the missing chunks, in order
    assert_same_store(resumed, reference)
    assert resumed.manifest["complete"]

    # a complete store is not recomputed
    calls.clear()
    again = extractor(model).extract_to_store(images, tmp_path / "s", labels=labels,
                                              metadata=meta, chunk_size=CHUNK)
    assert calls == []
    assert_same_store(again, reference)


def test_shards_fill_one_store(tmp_path, data):
    images, labels, _ = data
    reference = extractor().extract_to_store(images, tmp_path / "ref", labels=labels,
                                             chunk_size=CHUNK)
    first = extractor().extract_to_store(images, tmp_path / "s", labels=labels,
                                         chunk_size=CHUNK, start=16, stop=40)
    assert not first.manifest["complete"]
    # the second "process" takes the remaining ranges
    extractor().extract_to_store(images, tmp_path / "s", labels=labels,
                                 chunk_size=CHUNK, start=0, stop=16)
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "s")
    last = extractor().extract_to_store(images, tmp_path / "s", labels=labels,
                                        chunk_size=CHUNK, start=40)
    assert last.manifest["complete"]
    assert_same_store(last, reference)
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        extractor().extract_to_store(images, tmp_path / "t", chunk_size=CHUNK, start=3)


def test_store_from_dataset_and_loader(tmp_path, data):
    images, labels, _ = data
    ds = TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))
    a = extractor().extract_to_store(ds, tmp_path / "ds", chunk_size=CHUNK)
    b = extractor().extract_to_store(DataLoader(ds, batch_size=4), tmp_path / "dl",
                                     chunk_size=CHUNK)
    ref = extractor().extract(images, labels=labels)
    for st in (a, b):
        np.testing.assert_allclose(st.X, ref.X, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(st.labels, labels)
    with pytest.raises(ValueError, match="shuffle=False"):
        extractor().extract_to_store(DataLoader(ds, batch_size=4, shuffle=True),
                                     tmp_path / "shuffled")


def test_existing_store_mismatch_and_overwrite(tmp_path, data):
    images, labels, meta = data
    path = tmp_path / "s"
    extractor().extract_to_store(images, path, labels=labels, chunk_size=CHUNK)
    with pytest.raises(StoreError, match="different feature store"):
        extractor().extract_to_store(images, path, labels=labels, chunk_size=16)
    with pytest.raises(StoreError, match="the hooked layers differ"):
        FeatureExtractor(tiny_cnn(), layers=["0"], progress=False).extract_to_store(
            images, path, labels=labels, chunk_size=CHUNK)
    # resume=False starts over with the new settings
    st = FeatureExtractor(tiny_cnn(), layers=["0"], progress=False).extract_to_store(
        images, path, labels=labels, chunk_size=16, resume=False)
    assert st.layer_names == ["0"] and st.manifest["chunk_size"] == 16
    assert not (path / "002_4.npy").exists()
    # changed metadata values are refused on resume
    extractor().extract_to_store(images, tmp_path / "m", metadata=meta, chunk_size=CHUNK)
    other = dict(meta, source_id=meta["source_id"] + 1)
    with pytest.raises(StoreError, match="metadata 'source_id' differs"):
        extractor().extract_to_store(images, tmp_path / "m", metadata=other,
                                     chunk_size=CHUNK)
    # a directory holding something else is never overwritten
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty"):
        extractor().extract_to_store(images, tmp_path / "busy", chunk_size=CHUNK)
    with pytest.raises(ValueError, match="one value per sample"):
        extractor().extract_to_store(images, tmp_path / "bad",
                                     metadata={"x": np.arange(3)})


def test_damaged_stores_fail_clearly(tmp_path, data):
    images, labels, _ = data
    path = tmp_path / "s"
    extractor().extract_to_store(images, path, labels=labels, chunk_size=CHUNK)
    open_store(path)  # whole

    with pytest.raises(StoreError, match="not a feature store"):
        open_store(tmp_path)
    # truncated layer file
    f = path / "001_1.npy"
    content = f.read_bytes()
    f.write_bytes(content[:-40])
    with pytest.raises(StoreError, match="truncated"):
        open_store(path)
    f.write_bytes(content)
    # missing file
    os.rename(path / "labels.npy", path / "labels.bak")
    with pytest.raises(StoreError, match="missing labels.npy"):
        open_store(path)
    os.rename(path / "labels.bak", path / "labels.npy")
    # manifest inconsistent with the arrays
    manifest_path = path / "manifest.json"
    good = manifest_path.read_text()
    bad = json.loads(good)
    bad["count"] = N + 1
    for e in bad["layers"] + [v for v in bad["arrays"].values() if v]:
        e["shape"][0] = N + 1
    manifest_path.write_text(json.dumps(bad))
    with pytest.raises(StoreError, match="inconsistent"):
        open_store(path)
    bad = json.loads(good)
    bad["layers"][0]["shape"][1] = 5
    manifest_path.write_text(json.dumps(bad))
    with pytest.raises(StoreError, match="inconsistent"):
        open_store(path)
    manifest_path.write_text(good[: len(good) // 2])
    with pytest.raises(StoreError, match="not valid JSON"):
        open_store(path)
    manifest_path.write_text(good)
    assert len(open_store(path, mmap_mode=None)) == N
    assert issubclass(StoreError, ValueError)


def test_writer_api_directly(tmp_path):
    w = FeatureStoreWriter.create(tmp_path / "w", count=5, layer_names=["a"],
                                  layer_sizes=[2], n_classes=None, chunk_size=2)
    assert w.missing_chunks() == [0, 1, 2] and w.chunk_bounds(2) == (4, 5)
    for k in w.missing_chunks():
        lo, hi = w.chunk_bounds(k)
        w.write_chunk(k, layers=[np.arange(lo * 2, hi * 2).reshape(-1, 2)])
    assert w.finalize()
    st = open_store(tmp_path / "w")
    np.testing.assert_array_equal(st.X, np.arange(10).reshape(5, 2))
    assert st.logits is None and st.predictions is None and st.n_classes is None


def test_reading_needs_no_torch(tmp_path, data):
    images, labels, _ = data
    path = tmp_path / "s"
    extractor().extract_to_store(images, path, labels=labels, chunk_size=CHUNK)
    code = (
        "import sys\n"
        "from sklearn_advdet.store import open_store\n"
        f"s = open_store({str(path)!r})\n"
        "print(s.X.shape)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"({N}, 16)"
    assert "torch" not in store_mod.__dict__


def test_old_paths_are_the_same_objects():
    """deep.store, deep.detection and deep.extraction keep working (no warning)."""
    import sklearn_advdet.deep.attack_sets as attack_sets
    import sklearn_advdet.deep.detection as old_detection
    import sklearn_advdet.deep.layers as layers
    import sklearn_advdet.deep.store as old_store
    import sklearn_advdet.store as new_store
    from sklearn_advdet.deep import extraction

    for name in ("FeatureStore", "FeatureStoreWriter", "StoreError", "open_store"):
        assert getattr(old_store, name) is getattr(new_store, name)
    for name in ("build_detection_set", "parse_attacks", "AttackSpec", "NOISE_ATTACKS"):
        assert getattr(old_detection, name) is getattr(attack_sets, name)
    assert extraction.resolve_layers is layers.resolve_layers
    assert extraction.LAYER_PRESETS is layers.LAYER_PRESETS


# ------------------------------------------------------- stores that cannot lie
def test_resume_with_different_images_of_the_same_shape_is_refused(tmp_path, data):
    images, labels, _ = data
    path = tmp_path / "s"
    # a partial store (as a crash would leave it): only the first two chunks
    partial = extractor().extract_to_store(images, path, labels=labels, chunk_size=CHUNK,
                                           stop=2 * CHUNK)
    assert not partial.manifest["complete"]
    other = images[::-1].copy()
    with pytest.raises(StoreError, match=r"the images differ \(stored array:sha256:"):
        extractor().extract_to_store(other, path, labels=labels, chunk_size=CHUNK)
    with pytest.raises(StoreError, match="the labels differ"):
        extractor().extract_to_store(images, path, labels=(labels + 1) % 3,
                                     chunk_size=CHUNK)
    with pytest.raises(StoreError, match="the model's weights differ"):
        extractor(tiny_cnn(seed=1)).extract_to_store(images, path, labels=labels,
                                                     chunk_size=CHUNK)
    # nothing was written by the refused runs: the same input still resumes
    st = extractor().extract_to_store(images, path, labels=labels, chunk_size=CHUNK)
    assert st.manifest["complete"]
    assert_same_store(st, extractor().extract_to_store(images, tmp_path / "ref",
                                                       labels=labels, chunk_size=CHUNK))
    fp = st.fingerprint
    assert set(fp) == {"data", "labels", "model", "layers"} and fp["layers"] == "0,1,4"


def test_folder_fingerprint_sees_changed_files(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    path = tmp_path / "s"
    extractor().extract_to_store(root, path, chunk_size=2, stop=2)
    # same size and shape, other pixels and a new mtime
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "b" / "2.png")
    os.utime(root / "b" / "2.png", ns=(1, 1))
    with pytest.raises(StoreError, match="the images differ"):
        extractor().extract_to_store(root, path, chunk_size=2)


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog, data):
    import logging

    images, labels, _ = data
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    path = tmp_path / "s"
    path.mkdir()
    (path / "_allocating.lock").write_text(json.dumps(
        {"pid": pid, "host": "here", "time": "2026-01-01T00:00:00"}))
    with caplog.at_level(logging.WARNING, logger="sklearn_advdet"):
        st = extractor().extract_to_store(images, path, labels=labels, chunk_size=CHUNK,
                                          lock_timeout=0)
    assert len(st) == N and not (path / "_allocating.lock").exists()
    assert any(f"pid {pid}" in r.getMessage() and "taking over" in r.getMessage()
               for r in caplog.records)
    # an empty lock file (left by an older version) is taken over the same way
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "_allocating.lock").touch()
    FeatureStoreWriter.create(tmp_path / "e", count=2, layer_names=["a"], layer_sizes=[1],
                              n_classes=None, lock_timeout=0)


def test_live_lock_times_out_naming_its_owner(tmp_path):
    path = tmp_path / "s"
    path.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from sklearn_advdet._store_lock import store_lock\n"
         f"with store_lock({str(path / '_allocating.lock')!r}, 5):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusyError, match=rf"held by pid {holder.pid} on host .*"
                                             r"lock_timeout"):
            FeatureStoreWriter.create(path, count=2, layer_names=["a"], layer_sizes=[1],
                                      n_classes=None, lock_timeout=0.3)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    # once the holder is gone (killed: the lock file stays), the lock is taken over
    assert (path / "_allocating.lock").exists()
    FeatureStoreWriter.create(path, count=2, layer_names=["a"], layer_sizes=[1],
                              n_classes=None, lock_timeout=0)


def test_readers_never_mix_two_writes(tmp_path, data):
    images, labels, _ = data
    path = tmp_path / "s"
    first = extractor().extract_to_store(images, path, labels=labels, chunk_size=CHUNK)
    old_logits = np.array(first.logits)  # cached before the rewrite
    extractor(tiny_cnn(seed=1)).extract_to_store(images, path, labels=labels,
                                                 chunk_size=CHUNK, resume=False)
    for read in (lambda: first.logits, lambda: first.layer("4"), lambda: first.X):
        with pytest.raises(StoreError, match="rewritten since it was opened"):
            read()
    again = open_store(path)
    assert again.generation != first.generation
    assert not np.array_equal(np.asarray(again.logits), old_logits)


def test_a_replaced_store_refuses_the_old_writer(tmp_path):
    kw = dict(count=4, layer_names=["a"], layer_sizes=[2], n_classes=None, chunk_size=2)
    old = FeatureStoreWriter.create(tmp_path / "s", **kw)
    old.write_chunk(0, layers=[np.ones((2, 2))])
    new = FeatureStoreWriter.create(tmp_path / "s", resume=False, **kw)
    with pytest.raises(StoreError, match="replaced by another writer"):
        old.write_chunk(1, layers=[np.ones((2, 2))])
    assert new.committed() == set()  # the old chunk does not count in the new store
    with pytest.raises(ValueError, match=r"has shape \(1, 2\), the store needs \(2, 2\)"):
        new.write_chunk(0, layers=[np.ones((1, 2))])  # no silent broadcasting


def _mutations():
    def setter(*keys, value):
        def f(m):
            d = m
            for k in keys[:-1]:
                d = d[k]
            d[keys[-1]] = value
            return m
        return f
    return {
        "count": setter("count", value="50"),
        "chunk_size": setter("chunk_size", value=0),
        "layers": setter("layers", value={"a": 1}),
        "file": setter("layers", 0, "file", value="../../etc/passwd"),
        "dtype": setter("layers", 0, "dtype", value="object"),
        "shape": setter("layers", 0, "shape", value=[N]),
        "arrays": setter("arrays", value=None),
        "complete": setter("complete", value="yes"),
        "generation": setter("generation", value=7),
    }


@pytest.mark.parametrize("what", sorted(_mutations()))
def test_every_malformed_manifest_is_a_store_error_naming_it(tmp_path, data, what):
    images, labels, _ = data
    path = tmp_path / "s"
    extractor().extract_to_store(images, path, labels=labels, chunk_size=CHUNK)
    mpath = path / "manifest.json"
    mpath.write_text(json.dumps(_mutations()[what](json.loads(mpath.read_text()))))
    for call in (lambda: open_store(path),
                 lambda: extractor().extract_to_store(images, path, labels=labels,
                                                      chunk_size=CHUNK)):
        with pytest.raises(StoreError, match=f"{mpath} is malformed"):
            call()


def test_malformed_json_and_array_files(tmp_path, data):
    images, labels, _ = data
    path = tmp_path / "s"
    extractor().extract_to_store(images, path, labels=labels, chunk_size=CHUNK)
    mpath = path / "manifest.json"
    good = mpath.read_bytes()
    for raw in (b"{", b"\xff\xfe", b"[1, 2]"):
        mpath.write_bytes(raw)
        with pytest.raises(StoreError, match=str(mpath)):
            open_store(path)
    mpath.write_bytes(good)
    f = path / "logits.npy"
    f.write_bytes(b"\x93NUMPY garbage header")
    with pytest.raises(StoreError, match=f"{f} is not a valid .npy file"):
        open_store(path)
    # damaged after opening: the access names the file
    extractor().extract_to_store(images, path, labels=labels, chunk_size=CHUNK,
                                 resume=False)
    st = open_store(path)
    (path / "labels.npy").write_bytes(b"not an array")
    with pytest.raises(StoreError, match="labels.npy"):
        st.labels


# ------------------------------------------------- streamed sources, shards, merge
def _tar_of_images(path, n_per_class=6, classes=("a", "b", "c")):
    import io
    import tarfile

    from PIL import Image

    rng = np.random.default_rng(3)
    with tarfile.open(path, "w") as t:
        for c in classes:
            for i in range(n_per_class):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    buf, "PNG")
                info = tarfile.TarInfo(f"split/{c}/{i:03d}.png")
                info.size = len(buf.getvalue())
                t.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def test_streamed_tar_equals_the_decoded_array(tmp_path):
    from sklearn_advdet.deep.data import load_image_folder

    tar = _tar_of_images(tmp_path / "imgs.tar")
    images, labels, _ = load_image_folder(tar)
    ref = extractor().extract(images, labels=labels)
    for workers in (0, 2):
        got = extractor(num_workers=workers).extract(tar)
        np.testing.assert_array_equal(got.labels, labels)
        np.testing.assert_allclose(got.X, ref.X, rtol=1e-6, atol=1e-7)


def test_shards_merged_equal_one_extraction(tmp_path):
    from sklearn_advdet.store import merge_stores

    tar = _tar_of_images(tmp_path / "imgs.tar")  # 18 images
    meta = {"row": np.arange(18) * 3}
    whole = extractor().extract_to_store(tar, tmp_path / "whole", chunk_size=CHUNK,
                                         metadata=meta)
    shards = [extractor(num_workers=1 if i == 1 else 0).extract_to_store(
        tar, tmp_path / f"shard{i}", chunk_size=CHUNK, metadata=meta, shard=(i, 3))
        for i in range(3)]
    assert [len(s) for s in shards] == [6, 6, 6]
    assert [s.manifest["shard"]["start"] for s in shards] == [0, 6, 12]
    merged = merge_stores([s.path for s in shards[::-1]], tmp_path / "merged")
    assert merged.layout == whole.layout and len(merged) == 18
    np.testing.assert_allclose(merged.X, whole.X, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(merged.predictions, whole.predictions)
    np.testing.assert_array_equal(merged.labels, whole.labels)
    np.testing.assert_array_equal(merged.metadata["row"], meta["row"])
    assert merged.fingerprint == whole.fingerprint and merged.source == whole.source
    # a resume of the whole extraction into the merged store finds nothing to do
    again = extractor().extract_to_store(tar, tmp_path / "merged", chunk_size=CHUNK,
                                         metadata=meta)
    assert again.generation == merged.generation
    # a shard store is not resumable as another shard
    with pytest.raises(StoreError, match="shard differ"):
        extractor().extract_to_store(tar, tmp_path / "shard0", chunk_size=CHUNK,
                                     metadata=meta, shard=(1, 3))


def test_bad_shards_are_named_and_never_merged(tmp_path):
    from sklearn_advdet.store import merge_stores

    tar = _tar_of_images(tmp_path / "imgs.tar")
    paths = [extractor().extract_to_store(tar, tmp_path / f"s{i}", chunk_size=CHUNK,
                                          shard=(i, 3)).path for i in range(3)]
    out = tmp_path / "out"
    # a partial shard (only its first chunk)
    extractor().extract_to_store(tar, tmp_path / "partial", chunk_size=2,
                                 shard=(1, 3), stop=2)
    with pytest.raises(StoreError, match=r"shard .*partial cannot be merged: .*incomplete"):
        merge_stores([paths[0], tmp_path / "partial", paths[2]], out)
    # a corrupt shard (truncated array)
    f = paths[2] / "logits.npy"
    good = f.read_bytes()
    f.write_bytes(good[:-8])
    with pytest.raises(StoreError, match=r"shard .*s2 cannot be merged: .*truncated"):
        merge_stores(paths, out)
    f.write_bytes(good)
    # a shard of another model, a duplicate and a missing one
    extractor(tiny_cnn(seed=5)).extract_to_store(tar, tmp_path / "other", chunk_size=CHUNK,
                                                 shard=(1, 3))
    with pytest.raises(StoreError, match=r"shard .*other cannot be merged: its input "
                                         "fingerprint differs"):
        merge_stores([paths[0], tmp_path / "other", paths[2]], out)
    with pytest.raises(StoreError, match="both shard 0 of 3"):
        merge_stores([paths[0], paths[0], paths[2]], out)
    with pytest.raises(StoreError, match=r"shards \[1\] of 3 are missing"):
        merge_stores([paths[0], paths[2]], out)
    with pytest.raises(StoreError, match="no shard information"):
        merge_stores([extractor().extract_to_store(tar, tmp_path / "plain").path], out)
    assert not out.exists()  # nothing was ever written
    assert len(merge_stores(paths, out)) == 18


def test_corrupt_member_in_a_worker_is_named(tmp_path):
    import io
    import tarfile

    tar = _tar_of_images(tmp_path / "imgs.tar", n_per_class=2)
    with tarfile.open(tar, "a") as t:
        info = tarfile.TarInfo("split/c/zzz.png")
        info.size = 7
        t.addfile(info, io.BytesIO(b"garbage"))
    with pytest.raises(ValueError, match=r"member 'split/c/zzz.png' of .*imgs.tar is not "
                                         "a readable image"):
        extractor(num_workers=1).extract(tar)


# ------------------------------------------------------- fuzz-suite regressions
@pytest.mark.parametrize("kwargs, match", [
    ({"count": -1}, "count must be an integer >= 0"),
    ({"chunk_size": "x"}, r"chunk_size \(rows per chunk\) must be an integer >= 1"),
    ({"layer_sizes": [0]}, "every layer size must be an integer >= 1"),
    ({"n_classes": 0}, r"n_classes \(or None\) must be an integer >= 1"),
])
def test_writer_arguments_are_checked_before_anything_is_written(tmp_path, kwargs, match):
    # was: count=-1 allocated the first array, then failed in numpy
    spec = dict(count=3, layer_names=["a"], layer_sizes=[2], n_classes=2, chunk_size=2)
    with pytest.raises(ValueError, match=match):
        FeatureStoreWriter.create(tmp_path / "s", **{**spec, **kwargs})
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_a_chunk_that_does_not_exist_is_named(tmp_path):
    # was: numpy's "could not broadcast input array from shape (2,2) into shape (0,2)"
    w = FeatureStoreWriter.create(tmp_path / "s", count=3, layer_names=["a"],
                                  layer_sizes=[2], n_classes=None, chunk_size=2)
    for k in (2, -1, 1.0):
        with pytest.raises(ValueError, match=r"chunk .* does not exist: the store has 2 "
                                             r"chunk\(s\), numbered 0 to 1"):
            w.write_chunk(k, layers=[np.ones((2, 2))])
    assert w.committed() == set()


def test_labels_out_of_range_leave_no_store(tmp_path, data):
    # was: the store was allocated, then the labels were refused chunk by chunk
    images, labels, _ = data
    bad = labels.copy()
    bad[-1] = 3  # the model has 3 classes
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        extractor().extract_to_store(images, tmp_path / "s", labels=bad, chunk_size=CHUNK)
    assert not (tmp_path / "s").exists()


def test_a_run_that_fails_before_its_first_chunk_removes_its_store(tmp_path, data,
                                                                   monkeypatch):
    images, labels, _ = data
    _crash_after(monkeypatch, 0)  # the first chunk fails: nothing committed
    with pytest.raises(_Crash):
        extractor().extract_to_store(images, tmp_path / "s", labels=labels,
                                     chunk_size=CHUNK)
    assert not (tmp_path / "s").exists()
    (tmp_path / "empty").mkdir()  # a folder that was there stays, emptied
    with pytest.raises(_Crash):
        extractor().extract_to_store(images, tmp_path / "empty", labels=labels,
                                     chunk_size=CHUNK)
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    # a store with committed chunks stays, to be resumed
    monkeypatch.undo()
    _crash_after(monkeypatch, 2)
    with pytest.raises(_Crash):
        extractor().extract_to_store(images, tmp_path / "s", labels=labels,
                                     chunk_size=CHUNK)
    assert len(open_store(tmp_path / "s", allow_incomplete=True).manifest["layers"]) == 3
