"""Store adapters behind one small protocol."""

from gateway.stores.base import Batch, Store, WriteResult
from gateway.stores.sqlite import SqliteStore, list_dead_letters

__all__ = ["Batch", "SqliteStore", "Store", "WriteResult", "list_dead_letters"]
