"""Fault injection: a feature-store writer SIGKILLed at allocation, mid-chunk
and mid-manifest, then resumed; nothing may be lost or duplicated.

The writer runs in a subprocess (numpy only, no torch: fast) that kills
itself with SIGKILL at an injected point -- no ``finally`` block, no atexit,
no flush runs after that, exactly as for ``kill -9`` or the OOM killer.  The
test process then resumes the store with the same input and compares every
array with the rows an uninterrupted writer produces.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sklearn_advdet.store import FeatureStoreWriter, StoreError, open_store

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

COUNT, CHUNK, SIZES, N_CLASSES = 23, 4, (3, 5), 4  # 6 chunks, the last one of 3 rows
SPEC = dict(count=COUNT, layer_names=["a", "b"], layer_sizes=list(SIZES),
            n_classes=N_CLASSES, chunk_size=CHUNK, has_labels=True,
            metadata={"image_id": np.arange(COUNT) * 7},
            fingerprint={"data": "unit-test-data"})


def rows(lo, hi):
    """The arrays of rows [lo, hi): a function of the row index only."""
    i = np.arange(lo, hi, dtype=np.float64)[:, None]
    layers = [i * 10 + np.arange(s) for s in SIZES]
    logits = np.cos(i + np.arange(N_CLASSES))
    return layers, logits, (np.arange(lo, hi) % N_CLASSES)


def fill(writer):
    """Write every missing chunk; returns the chunks written."""
    done = []
    for k in writer.missing_chunks():
        lo, hi = writer.chunk_bounds(k)
        layers, logits, labels = rows(lo, hi)
        writer.write_chunk(k, layers=layers, logits=logits, labels=labels)
        done.append(k)
    return done


# The child: the same writer with one function wrapped so that its n-th call
# kills the process at the named point.
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    import test_faults as T
    from sklearn_advdet import _store_format, _store_writer
    from sklearn_advdet.store import FeatureStoreWriter

    point, path = sys.argv[1], sys.argv[2]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def nth(fn, n, before=True, when=lambda *a, **k: True):
        calls = [0]
        def wrapped(*a, **k):
            hit = when(*a, **k)
            if hit:
                calls[0] += 1
                if calls[0] == n and before:
                    die()
            out = fn(*a, **k)
            if hit and calls[0] == n and not before:
                die()
            return out
        return wrapped

    if point == "allocation":       # 3rd array allocated, no manifest yet
        np.lib.format.open_memmap = nth(np.lib.format.open_memmap, 3, before=False)
    elif point == "mid_chunk":      # chunk 2: some arrays flushed, others not
        np.memmap.flush = nth(np.memmap.flush, 5 + 2 * 5 + 3)  # 5 at allocation
    elif point == "before_marker":  # chunk 3 fully flushed, its marker not made
        FeatureStoreWriter._check_generation = nth(
            FeatureStoreWriter._check_generation, 4)
    elif point == "marker_tmp":     # chunk 1's marker written to its .tmp only
        os.replace = nth(os.replace, 2, when=lambda src, dst: "_chunks" in str(dst))
    elif point in ("manifest_alloc", "manifest_final"):
        # half of the manifest's temporary file written, then killed
        n = 1 if point == "manifest_alloc" else 2
        real_dump = json.dump
        calls = [0]
        def dump(obj, f, **kw):
            calls[0] += 1
            if calls[0] == n:
                text = json.dumps(obj, **kw)
                f.write(text[: len(text) // 2])
                f.flush()
                die()
            return real_dump(obj, f, **kw)
        _store_format.json.dump = dump
    elif point == "manifest_replace":  # complete manifest in .tmp, not yet in place
        os.replace = nth(os.replace, 1, when=lambda src, dst: str(dst).endswith(
            "manifest.json") and json.load(open(src))["complete"])
    w = FeatureStoreWriter.create(path, **T.SPEC)
    T.fill(w)
    w.finalize()
    print("finished")
""")

POINTS = ["allocation", "mid_chunk", "before_marker", "marker_tmp", "manifest_alloc",
          "manifest_final", "manifest_replace"]


def run_child(point, path):
    code = CHILD.format(tests=os.path.dirname(__file__))
    return subprocess.run([sys.executable, "-c", code, point, str(path)],
                          capture_output=True, text=True, timeout=60)


def assert_whole(store):
    layers, logits, labels = rows(0, COUNT)
    for name, expected in zip(("a", "b"), layers):
        np.testing.assert_array_equal(store.layer(name), expected.astype(np.float32))
    np.testing.assert_array_equal(store.logits, logits.astype(np.float32))
    np.testing.assert_array_equal(store.predictions, logits.argmax(axis=1))
    np.testing.assert_array_equal(store.labels, labels)
    np.testing.assert_array_equal(store.metadata["image_id"], SPEC["metadata"]["image_id"])


@pytest.mark.parametrize("point", POINTS)
def test_sigkilled_writer_resumes_without_loss_or_duplicates(tmp_path, point):
    path = tmp_path / "store"
    out = run_child(point, path)
    assert out.returncode == -signal.SIGKILL, (out.returncode, out.stdout, out.stderr)
    assert "finished" not in out.stdout
    # a killed store is never taken for a finished one
    with pytest.raises(StoreError):
        open_store(path)
    before = set()
    if (path / "manifest.json").exists():
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except ValueError:
            manifest = None
        assert manifest is None or not manifest["complete"]
    # resume: the lock of a writer killed during allocation does not block it
    writer = FeatureStoreWriter.create(path, lock_timeout=5, **SPEC)
    before = writer.committed()
    written = fill(writer)
    assert writer.finalize()
    # every chunk is written exactly once over the two runs
    assert sorted(before | set(written)) == list(range(writer.n_chunks))
    assert not before & set(written)
    assert_whole(open_store(path))
    leftovers = [f for f in os.listdir(path) if f.endswith(".tmp")]
    assert not leftovers, leftovers
    assert not (path / "_chunks").exists()


def test_what_each_kill_left_behind(tmp_path):
    """The kills above hit the moments they name (so the test is not vacuous)."""
    seen = {}
    for point in ("allocation", "mid_chunk", "before_marker", "manifest_final"):
        path = tmp_path / point
        run_child(point, path)
        has_manifest = (path / "manifest.json").exists()
        committed = None
        if has_manifest:
            try:
                w = FeatureStoreWriter(path, json.loads((path / "manifest.json").read_text()))
                committed = sorted(w.committed())
            except ValueError:
                committed = "unreadable"
        seen[point] = (has_manifest, committed)
    assert seen["allocation"] == (False, None)
    assert seen["mid_chunk"] == (True, [0, 1])
    assert seen["before_marker"] == (True, [0, 1, 2])
    assert seen["manifest_final"] == (True, list(range(6)))  # all chunks, not complete


def test_external_sigkill_at_a_random_moment(tmp_path):
    """A plain kill -9 from outside while chunks are being written."""
    path = tmp_path / "store"
    code = CHILD.format(tests=os.path.dirname(__file__)).replace(
        "T.fill(w)", "import time\n"
        "for k in w.missing_chunks():\n"
        "    lo, hi = w.chunk_bounds(k)\n"
        "    layers, logits, labels = T.rows(lo, hi)\n"
        "    w.write_chunk(k, layers=layers, logits=logits, labels=labels)\n"
        "    print(k, flush=True)\n"
        "    time.sleep(0.05)\n")
    with subprocess.Popen([sys.executable, "-c", code, "none", str(path)],
                          stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout.readline().strip() == "0"
        assert child.stdout.readline().strip() == "1"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    writer = FeatureStoreWriter.create(path, lock_timeout=5, **SPEC)
    before = writer.committed()
    assert {0, 1} <= before and len(before) < writer.n_chunks
    written = fill(writer)
    assert writer.finalize() and not before & set(written)
    assert_whole(open_store(path))
