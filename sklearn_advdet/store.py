"""Feature store: deep features of an image set, on disk, memory-mapped.

A store is a directory::

    manifest.json          model, layers (names, sizes, files), dtype, count,
                           source, version, chunk size, complete flag
    000_layer1.0.npy ...   one (count, size) float array per hooked layer
    logits.npy             (count, n_classes) float array
    predictions.npy        (count,) int64: argmax of the logits
    labels.npy             (count,) int64 true classes (when known)
    meta_<name>.npy        (count, ...) per-sample metadata arrays
    _chunks/<k>            one marker per committed chunk (while writing;
                           removed once the store is complete)

Writing: every array is pre-allocated with :func:`numpy.lib.format.open_memmap`
and filled chunk by chunk (chunk ``k`` = rows ``[k * chunk_size, (k + 1) *
chunk_size)``). A chunk counts as written only once its rows are flushed and
its marker has been created atomically (temporary file + :func:`os.replace`).
A run that is killed and started again recomputes exactly the chunks without a
marker, so the finished store has the same arrays as an uninterrupted run: no
duplicate rows, no gaps. Because rows have fixed places, several processes can
fill disjoint index ranges (``start``/``stop``) of the same store. The
manifest says ``"complete": true`` only after every chunk is committed, and
:meth:`FeatureStore.open` refuses incomplete, truncated or inconsistent stores
with an error that says what is wrong.

Stores that cannot lie:

* **fingerprint**: the manifest records what the store was made from (a
  content hash of in-memory images and labels, names + sizes + mtimes of an
  image folder or tar, a hash of the model's weights, the hooked layers); a
  resume with any other input is refused with a :class:`StoreError` naming
  what differs.
* **lock**: allocation holds ``_allocating.lock``, which records its owner
  (pid, host, time); a lock left by a dead process is taken over with a logged
  message, a live one is waited for ``lock_timeout`` seconds and then named in
  a :class:`StoreError`.
* **generation**: every write has a generation id (manifest and chunk
  markers); a reader checks it on every array access, so a store rewritten
  after it was opened raises instead of mixing two writes.
* a malformed manifest or array file is a :class:`StoreError` naming the file.

Reading needs only numpy: this module does not import torch.
"""

from ._store_fingerprint import array_digest, files_digest
from ._store_format import (STORE_FORMAT, STORE_VERSION, StoreBusyError, StoreError,
                            _atomic_write_json)
from ._store_merge import merge_stores
from ._store_reader import FeatureStore, open_store
from ._store_writer import FeatureStoreWriter

__all__ = ["FeatureStore", "FeatureStoreWriter", "open_store", "StoreError", "StoreBusyError",
           "STORE_FORMAT", "STORE_VERSION", "array_digest", "files_digest",
           "merge_stores"]
