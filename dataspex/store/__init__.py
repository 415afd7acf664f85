"""The run directory's store: design, fingerprint and retraining results (see :mod:`dataspex.store.run_store`)."""

from dataspex.store.run_store import Results, RunStore, StoreScan

__all__ = ["Results", "RunStore", "StoreScan"]
