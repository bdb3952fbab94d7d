"""Old home of the feature store; it moved to :mod:`sklearn_advdet.store` (core).

Kept so that ``from sklearn_advdet.deep.store import ...`` keeps working.
"""

from ..store import (STORE_FORMAT, STORE_VERSION, FeatureStore,  # noqa: F401
                     FeatureStoreWriter, StoreError, _atomic_write_json, open_store)

__all__ = ["FeatureStore", "FeatureStoreWriter", "open_store", "StoreError",
           "STORE_FORMAT", "STORE_VERSION"]
