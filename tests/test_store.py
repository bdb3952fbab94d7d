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
    with pytest.raises(StoreError, match="different feature store"):
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
