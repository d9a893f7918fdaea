"""Store adapters behind one small protocol."""

from gateway.stores.base import Batch, Store, WriteResult
from gateway.stores.sqlite import SqliteStore

__all__ = ["Batch", "SqliteStore", "Store", "WriteResult"]
