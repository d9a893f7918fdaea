"""Parsing and checking of query parameters, with messages a client can act on."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from karkhana.config.factory import FactoryConfig
from karkhana.models import from_ns, to_ns, utc_now
from services.api.errors import not_found, unprocessable
from services.catalog import AssetSelection, MalformedAssetPath, UnknownAsset, select
from services.kpi.buckets import floor_bucket

# A '+' in an unencoded query string arrives as a space: "...T06:00:00 05:00".
_SPACED_OFFSET = re.compile(r"^(.*\d) (\d{2}(?::?\d{2})?)$")


def parse_instant(name: str, text: str) -> datetime:
    """An ISO 8601 timestamp with a timezone, as aware UTC; HTTP 422 otherwise."""
    raw = text.strip()
    match = _SPACED_OFFSET.match(raw)
    if match and "T" in match.group(1):
        raw = f"{match.group(1)}+{match.group(2)}"
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise unprocessable(
            f"'{name}': {text!r} is not an ISO 8601 timestamp "
            "(e.g. 2024-05-06T06:00:00Z or 2024-05-06T11:00:00+05:00)"
        ) from exc
    if value.tzinfo is None or value.utcoffset() is None:
        raise unprocessable(
            f"'{name}': timestamp {text!r} has no timezone; add 'Z' (UTC) or an offset such "
            "as '+05:00'"
        )
    return value.astimezone(UTC)


def check_window(start: datetime, end: datetime, max_days: float) -> None:
    if start >= end:
        raise unprocessable(f"'from' ({start.isoformat()}) must be before 'to' ({end.isoformat()})")
    if end - start > timedelta(days=max_days):
        raise unprocessable(
            f"the window from {start.isoformat()} to {end.isoformat()} is longer than the "
            f"maximum of {max_days:g} days; ask for a shorter window"
        )


def default_bucket_end() -> datetime:
    """The end of a bucketed query without 'to': the start of the current bucket."""
    return from_ns(floor_bucket(to_ns(utc_now())))


def select_asset(factory: FactoryConfig, asset: str) -> AssetSelection:
    """The machines under ``asset``; HTTP 422 for a malformed path, 404 for an unknown one."""
    try:
        return select(factory, asset)
    except MalformedAssetPath as exc:
        raise unprocessable(str(exc)) from exc
    except UnknownAsset as exc:
        raise not_found(str(exc)) from exc
