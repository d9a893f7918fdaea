"""Shared description of the embedded SQLite store (written by the gateway, read by services)."""

from karkhana.storage.sqlite_schema import (
    SCHEMA_SQL,
    SCHEMA_VERSION,
    ValueType,
    connect,
    decode_value,
    encode_value,
)

__all__ = ["SCHEMA_SQL", "SCHEMA_VERSION", "ValueType", "connect", "decode_value", "encode_value"]
