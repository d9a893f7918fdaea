"""Read access to the InfluxDB store with InfluxQL over ``/query`` (schema:
``karkhana.storage.influx_schema``).

Works on InfluxDB 1.x and, through a DBRP mapping of the bucket, 2.x (the mapping is created
when missing) and 3.x. Implements ``services.kpi.SampleSource`` like the SQLite reader. A
database that does not exist yet reads as empty, so the API answers before the first sample
arrives.

``InfluxSource`` lives as long as the API process (one pooled HTTP client); each request
takes a light ``InfluxReader`` from it.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Iterator
from typing import Any

from karkhana.models import Quality
from karkhana.storage.influx_schema import (
    DEAD_LETTERS,
    SAMPLES,
    VALUE_FIELDS,
    DatabaseNotFound,
    InfluxHttp,
    InfluxTarget,
    Series,
    ql_string,
    sample_value,
)
from services.kpi.source import Point
from services.store import StoredDeadLetter

logger = logging.getLogger(__name__)

PAGE = 10_000
"""Rows per query: InfluxDB 1.x's default ``max-row-limit`` (later versions) is 10000."""

_COLUMNS = ", ".join((*VALUE_FIELDS, "quality"))
_QUALITIES = {q.value: q for q in Quality}


class InfluxSource:
    """The API's connection to the store; thread-safe."""

    def __init__(self, target: InfluxTarget) -> None:
        self.target = target
        self._http = InfluxHttp(target)
        self._prepared = False
        self._lock = threading.Lock()

    def reader(self) -> InfluxReader:
        """A reader for one request; the first one checks the server (and on 2.x maps the
        bucket for InfluxQL). Raises StoreError while the server cannot be reached."""
        with self._lock:
            if not self._prepared:
                self._prepare()
                self._prepared = True
        return InfluxReader(self._http)

    def _prepare(self) -> None:
        version = self._http.ping()
        if self.target.api == "v2" and version.lstrip("v").startswith("2."):
            self._http.ensure_bucket_and_dbrp()

    def close(self) -> None:
        self._http.close()


class InfluxReader:
    """``SampleSource`` over InfluxQL; caches nothing beyond one request."""

    def __init__(self, http: InfluxHttp) -> None:
        self._http = http
        self.location = http.target.location
        self._exists: bool | None = None

    def close(self) -> None:
        """Nothing to release: the HTTP client belongs to the ``InfluxSource``."""

    def _select(self, q: str) -> list[Series]:
        try:
            return self._http.query(q)
        except DatabaseNotFound:
            self._exists = False
            return []

    def _rows(self, q: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for series in self._select(q):
            if series.name == SAMPLES:
                rows.extend(series.rows())
        return rows

    @property
    def exists(self) -> bool:
        """Whether the database is there (it is created by the gateway's first start)."""
        if self._exists is None:
            names = {
                str(row[0]) for series in self._select("SHOW DATABASES") for row in series.values
            }
            self._exists = self._http.target.database in names
        return self._exists

    # --- SampleSource -----------------------------------------------------------------

    def points(self, asset: str, signal: str, start_ns: int, end_ns: int) -> list[Point]:
        return list(self._pages(asset, signal, start_ns, end_ns, descending=False))

    def points_before(self, asset: str, signal: str, before_ns: int) -> Iterator[Point]:
        return self._pages(asset, signal, None, before_ns, descending=True)

    def points_from(self, asset: str, signal: str, from_ns: int) -> Iterator[Point]:
        return self._pages(asset, signal, from_ns, None, descending=False)

    def _pages(
        self,
        asset: str,
        signal: str,
        start_ns: int | None,
        end_ns: int | None,
        *,
        descending: bool,
    ) -> Iterator[Point]:
        """Points of one series in ``[start_ns, end_ns)``, read ``PAGE`` rows at a time
        (lazily), continuing after the last timestamp seen (unique within a series)."""
        where = f"asset = {ql_string(asset)} AND signal = {ql_string(signal)}"
        low, high = start_ns, end_ns
        while True:
            bounds = ""
            if low is not None:
                bounds += f" AND time >= {low}"
            if high is not None:
                bounds += f" AND time < {high}"
            order = " ORDER BY time DESC" if descending else ""
            rows = self._rows(
                f"SELECT {_COLUMNS} FROM {SAMPLES} WHERE {where}{bounds}{order} LIMIT {PAGE}"
            )
            for row in rows:
                point = _point(row)
                if point is not None:
                    yield point
            if len(rows) < PAGE:
                return
            last = int(rows[-1]["time"])
            if descending:
                high = last
            else:
                low = last + 1

    def sample_times(self, asset: str, start_ns: int, end_ns: int) -> list[int]:
        where = f"asset = {ql_string(asset)}"
        times: list[int] = []
        before = self._rows(
            f"SELECT last(quality) FROM {SAMPLES} WHERE {where} AND time < {start_ns}"
        )
        if before:
            times.append(int(before[0]["time"]))
        low = start_ns
        while True:
            rows = self._rows(
                f"SELECT quality FROM {SAMPLES} WHERE {where} "
                f"AND time >= {low} AND time < {end_ns} LIMIT {PAGE}"
            )
            for row in rows:
                ts = int(row["time"])
                if not times or ts != times[-1]:
                    times.append(ts)
            if len(rows) < PAGE:
                return times
            # Rows of other signals at the last time may be cut off; they add no new time.
            low = int(rows[-1]["time"]) + 1

    # --- health -----------------------------------------------------------------------

    def sample_count(self) -> int:
        rows = self._rows(f"SELECT count(quality) FROM {SAMPLES}")
        return int(rows[0]["count"]) if rows else 0

    # --- dead letters -----------------------------------------------------------------

    def dead_letters(self, limit: int, before_id: int | None = None) -> list[StoredDeadLetter]:
        """Up to ``limit`` dead letters received before ``before_id``, newest first.

        A dead letter's id is its receive time in ns (the gateway keeps those unique).
        """
        bound = f" WHERE time < {before_id}" if before_id is not None else ""
        out: list[StoredDeadLetter] = []
        for series in self._select(
            f"SELECT topic, reason, payload, payload_encoding, payload_size FROM {DEAD_LETTERS}"
            f"{bound} ORDER BY time DESC LIMIT {int(limit)}"
        ):
            if series.name != DEAD_LETTERS:
                continue
            for row in series.rows():
                out.append(
                    StoredDeadLetter(
                        id=int(row["time"]),
                        received_ns=int(row["time"]),
                        topic=str(row.get("topic") or ""),
                        reason=str(row.get("reason") or ""),
                        payload=_payload_bytes(row),
                        payload_size=int(row.get("payload_size") or 0),
                    )
                )
        return out

    def dead_letter_count(self) -> int:
        for series in self._select(f"SELECT count(reason) FROM {DEAD_LETTERS}"):
            for row in series.rows():
                return int(row.get("count") or 0)
        return 0


def _payload_bytes(row: dict[str, Any]) -> bytes:
    text = str(row.get("payload") or "")
    if row.get("payload_encoding") == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except ValueError:
            logger.warning("dead letter at %s has an invalid base64 payload", row.get("time"))
    return text.encode("utf-8")


def _point(row: dict[str, Any]) -> Point | None:
    value = sample_value(row)
    if value is None:
        logger.warning("InfluxDB point at %s has no value field; skipped", row.get("time"))
        return None
    quality = _QUALITIES.get(row.get("quality") or "", Quality.BAD)
    return Point(int(row["time"]), value, quality)
