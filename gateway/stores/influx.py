"""InfluxDB store adapter (schema: :mod:`karkhana.storage.influx_schema`).

``influx_api: v2`` writes through influxdb-client's write API (``/api/v2/write``: InfluxDB
2.x, 3.x and compatible servers), ``v1`` through ``/write`` (InfluxDB 1.x). Each batch is
written synchronously, so it is confirmed durable before ``write`` returns and the gateway
acknowledges its MQTT messages.

Influx has no multi-request transaction. What makes a batch all-or-nothing in effect: every
point is idempotent (keyed by its tags and time), the samples are written first and the
agents' high-water marks and the dead letters last, and a failed batch is retried whole by
the gateway's writer. A failure can leave some samples of the batch stored, but never marks
an envelope as committed before its samples are.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from gateway.deadletters import DeadLetter, payload_text
from gateway.decode import NormalizedSample
from gateway.stores.base import Batch, WriteResult
from karkhana.errors import StoreError
from karkhana.models import from_ns, iso_utc
from karkhana.storage.influx_schema import (
    AGENT_SEQ,
    DatabaseNotFound,
    InfluxHttp,
    InfluxTarget,
    PointsRejected,
    SampleLines,
    agent_seq_line,
    dead_letter_line,
    error_text,
    http_error,
    retention_dropped,
)

log = logging.getLogger(__name__)

LINES_PER_REQUEST = 5000
REJECTED_TOPIC = "store:influxdb"
"""The ``topic`` of the dead letter of a sample InfluxDB refused (it names no MQTT topic:
the sample came through the store, not a message)."""
REJECTED_LINE_MAX = 4096
"""Bytes of a refused sample's line protocol kept as its dead letter's payload."""
"""Large batches go out in several requests (servers limit the body size)."""

RETRIES = 2
"""Retries of one request inside the client (connection errors, 429, 5xx) before the write
fails and the gateway's writer takes over with its own, longer backoff."""
RETRY_BACKOFF_S = 0.5


class _LineWriter(Protocol):
    def write(self, body: bytes) -> int:
        """Write line protocol; return the points dropped by the retention policy."""
        ...

    def close(self) -> None: ...


class _V1Writer:
    """``/write?db=...&precision=ns`` of InfluxDB 1.x."""

    def __init__(self, http: InfluxHttp) -> None:
        self._http = http

    def write(self, body: bytes) -> int:
        return self._http.write_v1(body)

    def close(self) -> None:
        """The shared HTTP client is closed by the store."""


class _V2Writer:
    """influxdb-client's synchronous write API: gzip, bounded retries with backoff."""

    def __init__(self, target: InfluxTarget) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS
        from urllib3 import Retry

        self._target = target
        # urllib3's Retry rather than the client's WritesRetry: WritesRetry's overall
        # deadline starts when it is constructed, so a long-lived client would stop
        # retrying after max_retry_time. Writes are idempotent, so POST may be retried.
        retries = Retry(
            total=RETRIES,
            backoff_factor=RETRY_BACKOFF_S,
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=None,
            raise_on_status=False,
            respect_retry_after_header=True,
        )
        # The library's hints say str where it accepts None (no token, no org: 3.x and
        # compatible servers), hence the untyped keyword arguments.
        options: dict[str, Any] = {"token": target.token, "org": target.org}
        self._client = InfluxDBClient(
            url=target.url,
            timeout=int(target.timeout_s * 1000),
            enable_gzip=True,
            retries=retries,
            **options,
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> int:
        from influxdb_client import WritePrecision
        from influxdb_client.client.exceptions import InfluxDBError
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        target = self._target
        try:
            # influxdb-client insists on an org; 3.x and compatible servers ignore it.
            options: dict[str, Any] = {
                "org": target.org or "",
                "write_precision": WritePrecision.NS,
            }
            self._api.write(bucket=target.database, record=body, **options)
        except ApiException as exc:
            message = error_text(exc.body or exc.reason or "")
            dropped = retention_dropped(message)
            if dropped is not None and exc.status in (400, 422):
                return dropped
            raise http_error(target, "a write", exc.status or 0, message) from exc
        except InfluxDBError as exc:
            raise StoreError(f"InfluxDB at {target.url}: a write failed: {exc}") from exc
        except (HTTPError, OSError) as exc:
            raise StoreError(
                f"cannot reach InfluxDB at {target.url} (a write): {exc or type(exc).__name__}"
            ) from exc
        return 0

    def close(self) -> None:
        self._api.close()
        self._client.close()


class InfluxStore:
    """The production store. Create with :meth:`open`; use from one thread at a time."""

    def __init__(self, target: InfluxTarget, http: InfluxHttp, writer: _LineWriter) -> None:
        self.target = target
        self._http = http
        self._writer = writer
        self._lines = SampleLines()

    @classmethod
    def open(cls, target: InfluxTarget) -> InfluxStore:
        """Check the server (and create the 1.x database, or check the 2.x bucket and map it
        for InfluxQL); raises StoreError with what to fix."""
        http = InfluxHttp(target)
        try:
            version = http.ping()
            if target.api == "v1":
                http.ensure_database()
                writer: _LineWriter = _V1Writer(http)
            else:
                if version.lstrip("v").startswith("2."):
                    if target.org is None:
                        raise StoreError(
                            f"{target.url} is InfluxDB {version}: set influx_org "
                            "(the organization that owns the bucket)"
                        )
                    http.ensure_bucket_and_dbrp()
                else:
                    # InfluxDB 3 and compatible servers have neither buckets API nor DBRP.
                    log.info(
                        "%s reports version %r: skipping the 2.x bucket and DBRP checks",
                        target.url,
                        version,
                    )
                writer = _V2Writer(target)
        except BaseException:
            http.close()
            raise
        log.info("InfluxDB store at %s (server version %s)", target.location, version or "?")
        return cls(target, http, writer)

    def high_water_marks(self) -> dict[str, int]:
        try:
            result = self._http.query(f"SELECT max(last_seq) FROM {AGENT_SEQ} GROUP BY agent")
        except DatabaseNotFound:
            return {}
        marks: dict[str, int] = {}
        for series in result:
            agent = series.tags.get("agent")
            if series.name != AGENT_SEQ or agent is None or "max" not in series.columns:
                # Servers that take writes but not InfluxQL reads (e.g. VictoriaMetrics)
                # answer something else; points stay idempotent without the marks.
                log.warning(
                    "%s did not answer the query for the agents' last committed seq "
                    "(got series %r)",
                    self.target.url,
                    series.name,
                )
                return {}
            for row in series.rows():
                if row.get("max") is not None:
                    marks[agent] = int(row["max"])
        return marks

    def write(self, batch: Batch) -> WriteResult:
        lines: list[str] = []
        samples: list[NormalizedSample] = []
        seen: set[tuple[str, str, int]] = set()
        line = self._lines.line
        total = 0
        for run in batch.runs:
            total += len(run)
            for s in run.samples():
                key = (s.asset, s.signal, s.ts_ns)
                if key in seen:
                    continue  # first one wins inside a batch, as in the SQLite store
                seen.add(key)
                lines.append(line(s.asset, s.signal, s.ts_ns, s.value, s.quality, s.unit))
                samples.append(s)
        dropped = 0
        rejected: list[DeadLetter] = []
        for start in range(0, len(lines), LINES_PER_REQUEST):
            end = min(start + LINES_PER_REQUEST, len(lines))
            dropped += self._send_splitting(lines, samples, start, end, rejected, batch)
        # Marks and dead letters last: an envelope counts as committed only after its samples.
        tail = [agent_seq_line(a, seq, batch.received_ns) for a, seq in batch.high_water.items()]
        tail.extend(_dead_letter_lines([*batch.dead_letters, *rejected]))
        if tail:
            lost = self._send(tail)
            if lost:
                raise StoreError(
                    f"InfluxDB at {self.target.url} dropped {lost} high-water mark or dead "
                    "letter point(s) as older than its retention policy; check the server clock"
                )
        if dropped:
            log.warning(
                "InfluxDB at %s dropped %d sample(s) older than its retention policy",
                self.target.location,
                dropped,
            )
        if rejected:
            log.warning(
                "InfluxDB at %s refused %d sample(s); they are dead letters (first: %s)",
                self.target.location,
                len(rejected),
                rejected[0].reason,
            )
        return WriteResult(
            samples_written=len(lines) - dropped - len(rejected),
            samples_duplicate=total - len(lines),
            rejected=tuple(rejected),
        )

    def _send_splitting(
        self,
        lines: list[str],
        samples: list[NormalizedSample],
        lo: int,
        hi: int,
        rejected: list[DeadLetter],
        batch: Batch,
    ) -> int:
        """Send ``lines[lo:hi]``; when the server refuses the request for good, send each
        half again, down to single lines, so that only the refused samples are left out
        (as dead letters). Points are idempotent, so a half sent twice is harmless."""
        try:
            return self._send(lines[lo:hi])
        except PointsRejected as exc:
            if hi - lo == 1:
                rejected.append(_refused(lines[lo], samples[lo], exc.server_message, batch))
                return 0
        mid = (lo + hi) // 2
        return self._send_splitting(lines, samples, lo, mid, rejected, batch) + (
            self._send_splitting(lines, samples, mid, hi, rejected, batch)
        )

    def _send(self, lines: list[str]) -> int:
        return self._writer.write("\n".join(lines).encode("utf-8"))

    def close(self) -> None:
        try:
            self._writer.close()
        finally:
            self._http.close()


def _refused(line: str, sample: NormalizedSample, message: str, batch: Batch) -> DeadLetter:
    payload = line.encode("utf-8")
    return DeadLetter(
        received_ns=batch.received_ns,
        topic=REJECTED_TOPIC,
        reason=(
            f"InfluxDB refused the sample {sample.asset} {sample.signal} at "
            f"{iso_utc(from_ns(sample.ts_ns))} (ts {sample.ts_ns} ns): {message}"
        ),
        payload=payload[:REJECTED_LINE_MAX],
        payload_size=len(payload),
    )


def _dead_letter_lines(letters: list[DeadLetter]) -> list[str]:
    """One point per letter; equal receive times are spread by a nanosecond each so that
    no letter overwrites another (the same batch retried writes the same points)."""
    out: list[str] = []
    previous = -1
    for letter in sorted(letters, key=lambda d: d.received_ns):
        ts = max(letter.received_ns, previous + 1)
        previous = ts
        truncated = len(letter.payload) < letter.payload_size
        text, encoding = payload_text(letter.payload, truncated)
        out.append(
            dead_letter_line(
                ts, letter.topic, letter.reason, text, encoding, letter.payload_size, truncated
            )
        )
    return out
