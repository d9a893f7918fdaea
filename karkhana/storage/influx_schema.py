"""InfluxDB store schema: the contract between the gateway (writer), the services (readers)
and the Grafana dashboards. See ``docs/storage.md``.

Measurements (timestamps in nanoseconds):

- ``samples``: tags ``asset`` (the full ISA-95 path), ``site``, ``area``, ``line``,
  ``machine``, ``signal``; one value field whose key says the Python type (``value_f`` float,
  ``value_i`` integer, ``value_b`` boolean, ``value_s`` string), ``quality`` (string) and
  ``unit`` (string, only when known). A point is keyed by its tags and time, that is by
  (asset, signal, ts): writing it again overwrites it instead of adding a second one, and a
  field key never changes type, so a write can never hit a field type conflict.
- ``agent_seq``: tag ``agent``, field ``last_seq`` (integer): the highest envelope ``seq``
  committed per edge agent, one point per agent and hour (the maximum over all points is the
  high-water mark).
- ``dead_letters``: fields ``topic``, ``reason``, ``payload`` (the truncated payload as UTF-8
  text or base64, per ``payload_encoding``), ``payload_size`` and ``truncated``; time is when
  the message was received.

Also here: the connection settings shared by the gateway and the API (:class:`InfluxSettings`)
and a small HTTP client (:class:`InfluxHttp`) for ``/ping``, InfluxQL over ``/query``, the
1.x ``/write`` endpoint and the 2.x bucket and DBRP checks.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator

from karkhana.errors import StoreError
from karkhana.models import SampleValue

log = logging.getLogger(__name__)

SAMPLES = "samples"
AGENT_SEQ = "agent_seq"
DEAD_LETTERS = "dead_letters"

FLOAT_FIELD = "value_f"
INT_FIELD = "value_i"
BOOL_FIELD = "value_b"
STR_FIELD = "value_s"
VALUE_FIELDS = (BOOL_FIELD, INT_FIELD, FLOAT_FIELD, STR_FIELD)
"""In the order the reader picks one when a point has several (see ``docs/storage.md``)."""

AGENT_SEQ_BUCKET_NS = 3600 * 1_000_000_000
"""``agent_seq`` keeps one point per agent and hour: bounded growth, cheap ``max()``."""

StoreKind = Literal["sqlite", "influxdb"]
InfluxApi = Literal["v1", "v2"]


# --- line protocol ----------------------------------------------------------------------

_TAG_ESCAPES = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ "})
_STR_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


def escape_tag(value: str) -> str:
    """A tag value for line protocol (commas, equals signs and spaces escaped)."""
    return value.translate(_TAG_ESCAPES)


def field_string(value: str) -> str:
    """A quoted string field value (newlines are allowed inside the quotes)."""
    return '"' + value.translate(_STR_ESCAPES) + '"'


def value_field(value: SampleValue) -> str:
    """``key=value`` of a sample value, the key chosen by the value's Python type."""
    # bool first: it is a subclass of int.
    if isinstance(value, bool):
        return f"{BOOL_FIELD}={'true' if value else 'false'}"
    if isinstance(value, int):
        return f"{INT_FIELD}={value}i"
    if isinstance(value, float):
        return f"{FLOAT_FIELD}={value!r}"
    return f"{STR_FIELD}={field_string(str(value))}"


def series_key(asset: str, signal: str) -> str:
    """``samples,<tags>`` of one series, tags in sorted key order (what Influx stores)."""
    parts = asset.split("/")
    tags = {"asset": asset, "signal": signal}
    if len(parts) == 4:
        tags.update(zip(("site", "area", "line", "machine"), parts, strict=True))
    return SAMPLES + "".join(f",{k}={escape_tag(v)}" for k, v in sorted(tags.items()) if v)


class SampleLines:
    """Encodes samples as line protocol, caching each series' measurement and tags."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], str] = {}

    def line(
        self,
        asset: str,
        signal: str,
        ts_ns: int,
        value: SampleValue,
        quality: str,
        unit: str | None = None,
    ) -> str:
        key = self._keys.get((asset, signal))
        if key is None:
            key = self._keys[(asset, signal)] = series_key(asset, signal)
        fields = f"{value_field(value)},quality={field_string(quality)}"
        if unit is not None:
            fields += f",unit={field_string(unit)}"
        return f"{key} {fields} {ts_ns}"


def agent_seq_line(agent: str, seq: int, received_ns: int) -> str:
    bucket = received_ns - received_ns % AGENT_SEQ_BUCKET_NS
    return f"{AGENT_SEQ},agent={escape_tag(agent)} last_seq={seq}i {bucket}"


def dead_letter_line(
    received_ns: int,
    topic: str,
    reason: str,
    payload: str,
    payload_encoding: str,
    payload_size: int,
    truncated: bool,
) -> str:
    return (
        f"{DEAD_LETTERS} topic={field_string(topic)},reason={field_string(reason)},"
        f"payload={field_string(payload)},payload_encoding={field_string(payload_encoding)},"
        f"payload_size={payload_size}i,truncated={'true' if truncated else 'false'} {received_ns}"
    )


# --- InfluxQL ---------------------------------------------------------------------------

_QL_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\n": "\\n"})


def ql_string(value: str) -> str:
    """An InfluxQL string literal (for tag comparisons)."""
    return "'" + value.translate(_QL_ESCAPES) + "'"


def ql_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier (database, measurement)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sample_value(row: dict[str, Any]) -> SampleValue | None:
    """The sample value of a query row, with its original Python type (None if absent).

    Query results carry floats without a fraction as JSON integers, so the field key, not
    the JSON number, decides the type.
    """
    for key in VALUE_FIELDS:
        raw = row.get(key)
        if raw is None:
            continue
        if key == FLOAT_FIELD:
            return float(raw)
        if key == INT_FIELD:
            return int(raw)
        if key == BOOL_FIELD:
            return bool(raw)
        return str(raw)
    return None


@dataclass(frozen=True, slots=True)
class Series:
    """One series of an InfluxQL result."""

    name: str
    columns: list[str]
    values: list[list[Any]]
    tags: dict[str, str] = field(default_factory=dict)

    def rows(self) -> Iterator[dict[str, Any]]:
        columns = self.columns
        for values in self.values:
            yield dict(zip(columns, values, strict=False))


# --- connection settings ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InfluxTarget:
    """Where the InfluxDB store is and how to authenticate (plain values, no pydantic)."""

    url: str
    api: InfluxApi
    database: str
    """1.x database, or 2.x/3.x bucket; also the database name InfluxQL queries use."""
    org: str | None = None
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0

    @property
    def location(self) -> str:
        kind = "database" if self.api == "v1" else "bucket"
        return f"{self.url} ({kind} {self.database})"

    @property
    def credentials_hint(self) -> str:
        if self.api == "v1":
            return "check influx_username/influx_password"
        return f"check influx_token (it needs access to bucket {self.database!r})"


class InfluxSettings(BaseModel):
    """Store selection and InfluxDB connection fields, shared by the gateway and the API
    settings (which add their own env prefix)."""

    store: StoreKind = Field(default="sqlite", description="sqlite (embedded) or influxdb")
    influx_url: str = "http://127.0.0.1:8086"
    influx_db: str = Field(
        default="karkhana",
        min_length=1,
        max_length=255,
        description="database (1.x) or bucket (2.x, 3.x)",
    )
    influx_org: str | None = Field(default=None, min_length=1)
    influx_token: SecretStr | None = None
    influx_password: SecretStr | None = None
    # The credential checks sit on the two fields below (validated after the secrets, which
    # they read from ``info.data``), so that an error message never echoes a secret.
    influx_username: str | None = Field(default=None, validate_default=True)
    influx_api: InfluxApi = Field(
        default="v2",
        validate_default=True,
        description="v2: /api/v2/write (InfluxDB 2.x, 3.x); v1: /write (InfluxDB 1.x)",
    )
    influx_timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("influx_url")
    @classmethod
    def _check_influx_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError(
                f"InfluxDB URL {value!r} must start with http:// or https:// "
                "(e.g. http://127.0.0.1:8086)"
            )
        if not parts.hostname:
            raise ValueError(f"InfluxDB URL {value!r} has no host")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"InfluxDB URL {value!r} has an invalid port") from exc
        if parts.query or parts.fragment:
            raise ValueError(f"InfluxDB URL {value!r} must not have a query or fragment")
        if parts.username or parts.password:
            raise ValueError(
                "put InfluxDB credentials in influx_token (or influx_username/influx_password "
                "for 1.x), not in the URL"
            )
        return value.rstrip("/")

    @field_validator("influx_username")
    @classmethod
    def _check_user_password(cls, value: str | None, info: ValidationInfo) -> str | None:
        has_password = info.data.get("influx_password") is not None
        if value is None and has_password:
            raise ValueError("influx_password is set but influx_username is not")
        if value is not None and not has_password:
            raise ValueError("influx_username is set but influx_password is not")
        return value

    @field_validator("influx_api")
    @classmethod
    def _check_api_credentials(cls, value: str, info: ValidationInfo) -> str:
        if value == "v1" and info.data.get("influx_token") is not None:
            raise ValueError(
                "influx_token is for influx_api v2 (InfluxDB 2.x/3.x); "
                "InfluxDB 1.x uses influx_username and influx_password"
            )
        if value == "v2" and (
            info.data.get("influx_username") is not None
            or info.data.get("influx_password") is not None
        ):
            raise ValueError(
                "influx_api v2 (InfluxDB 2.x/3.x) authenticates with influx_token; "
                "influx_username/influx_password are for influx_api v1"
            )
        return value

    def influx_target(self) -> InfluxTarget:
        return InfluxTarget(
            url=self.influx_url,
            api=self.influx_api,
            database=self.influx_db,
            org=self.influx_org,
            token=self.influx_token.get_secret_value() if self.influx_token else None,
            username=self.influx_username,
            password=self.influx_password.get_secret_value() if self.influx_password else None,
            timeout_s=self.influx_timeout_s,
        )


# --- HTTP -------------------------------------------------------------------------------


class DatabaseNotFound(StoreError):
    """The database (or, on 2.x, the DBRP mapping of the bucket) does not exist."""


_RETENTION_DROPPED = re.compile(r"partial write: points beyond retention policy dropped=(\d+)$")


def retention_dropped(message: str) -> int | None:
    """How many points a write lost to the retention policy, when that is its only problem."""
    match = _RETENTION_DROPPED.search(message.strip())
    return int(match.group(1)) if match else None


def error_text(body: bytes | str) -> str:
    """The message of an InfluxDB error body (1.x ``error``, 2.x ``message``)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        parsed = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(parsed, dict):
        for key in ("error", "message"):
            if isinstance(parsed.get(key), str):
                return str(parsed[key])
    return text.strip()[:500]


class PointsRejected(StoreError):
    """The server refused this request's points for good (HTTP 400, 413, 422): sending the
    same body again gets the same answer."""

    def __init__(self, text: str, server_message: str) -> None:
        super().__init__(text)
        self.server_message = server_message


def http_error(target: InfluxTarget, action: str, status: int, body: bytes | str) -> StoreError:
    """A readable StoreError for an HTTP error answer of the server."""
    message = error_text(body)
    where = f"InfluxDB at {target.url}"
    if status in (401, 403):
        return StoreError(
            f"{where} refused {action} (HTTP {status}: {message}); {target.credentials_hint}"
        )
    if status == 404:
        if "not found" in message and ("database" in message or "bucket" in message):
            kind = "database" if target.api == "v1" else "bucket"
            return DatabaseNotFound(
                f"{where}: {action} failed: {kind} {target.database!r} not found ({message})"
            )
        return StoreError(
            f"{where}: {action} failed (HTTP 404: {message}); is it an InfluxDB with the "
            f"{target.api} API? (set influx_api)"
        )
    if status == 413:
        return PointsRejected(
            f"{where}: {action} failed: request too large (HTTP 413: {message})", message
        )
    if status in (400, 422):
        return PointsRejected(f"{where}: {action} failed (HTTP {status}: {message})", message)
    return StoreError(f"{where}: {action} failed (HTTP {status}: {message})")


class InfluxHttp:
    """The HTTP calls both sides need. Thread-safe (one pooled ``httpx.Client``)."""

    def __init__(self, target: InfluxTarget, *, connect_retries: int = 2) -> None:
        self.target = target
        headers = {"Accept": "application/json"}
        auth: httpx.BasicAuth | None = None
        if target.token is not None:
            headers["Authorization"] = f"Token {target.token}"
        elif target.username is not None:
            auth = httpx.BasicAuth(target.username, target.password or "")
        self._client = httpx.Client(
            base_url=target.url,
            headers=headers,
            auth=auth,
            timeout=target.timeout_s,
            transport=httpx.HTTPTransport(retries=connect_retries),
        )

    def close(self) -> None:
        self._client.close()

    def _request(self, action: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            raise StoreError(
                f"cannot reach InfluxDB at {self.target.url} ({action}): {reason}"
            ) from exc

    def _send(self, action: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._request(action, method, path, **kwargs)
        if response.status_code >= 300:
            raise http_error(self.target, action, response.status_code, response.content)
        return response

    def ping(self) -> str:
        """The server's version ('' when it does not say); raises StoreError when down."""
        response = self._send("ping", "GET", "/ping")
        return response.headers.get("X-Influxdb-Version", "")

    def query(self, q: str, *, write: bool = False) -> list[Series]:
        """The series of a single-statement InfluxQL query on the target database.

        Raises :class:`DatabaseNotFound` when the database (1.x) or the bucket's DBRP
        mapping (2.x) is missing, StoreError for every other problem.
        """
        params = {"db": self.target.database, "q": q, "epoch": "ns"}
        if write:
            response = self._send("an InfluxQL statement", "POST", "/query", params=params)
        else:
            response = self._send("a query", "GET", "/query", params=params)
        try:
            body = response.json()
        except ValueError as exc:
            raise StoreError(
                f"InfluxDB at {self.target.url} answered /query with something other than "
                f"JSON: {response.text[:200]!r}"
            ) from exc
        return parse_query_result(self.target, body)

    def write_v1(self, body: bytes) -> int:
        """POST line protocol to the 1.x ``/write`` (gzip); returns how many points the
        server dropped for being older than the retention policy."""
        response = self._request(
            "a write",
            "POST",
            "/write",
            params={"db": self.target.database, "precision": "ns"},
            content=gzip.compress(body, compresslevel=1),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"},
        )
        if response.status_code < 300:
            return 0
        dropped = retention_dropped(error_text(response.content))
        if dropped is not None and response.status_code in (400, 422):
            return dropped
        raise http_error(self.target, "a write", response.status_code, response.content)

    def ensure_database(self) -> None:
        """1.x: create the database when it does not exist (needs an admin user)."""
        db = self.target.database
        names: set[str] = set()
        for series in self.query("SHOW DATABASES"):
            names.update(str(row[0]) for row in series.values if row)
        if db in names:
            return
        log.info("creating InfluxDB database %r on %s", db, self.target.url)
        self.query(f"CREATE DATABASE {ql_ident(db)}", write=True)

    def ensure_bucket_and_dbrp(self) -> None:
        """2.x: the bucket must exist; map database ``db`` to it for InfluxQL when no DBRP
        mapping exists yet (needs a token with write access to the bucket)."""
        target = self.target
        org_params = {"org": target.org} if target.org else {}
        buckets = self._send(
            "looking up the bucket",
            "GET",
            "/api/v2/buckets",
            params={"name": target.database, **org_params},
        ).json()
        found = buckets.get("buckets") or []
        if not found:
            org = f" in org {target.org!r}" if target.org else ""
            raise StoreError(
                f"InfluxDB at {target.url}: bucket {target.database!r} not found{org} "
                f"(create it, e.g. influx bucket create -n {target.database})"
            )
        bucket = found[0]
        dbrps = self._send(
            "looking up DBRP mappings",
            "GET",
            "/api/v2/dbrps",
            params={"orgID": bucket["orgID"], "db": target.database},
        ).json()
        if dbrps.get("content"):
            return
        log.info("mapping InfluxQL database %r to bucket %r", target.database, target.database)
        self._send(
            "creating the DBRP mapping",
            "POST",
            "/api/v2/dbrps",
            json={
                "bucketID": bucket["id"],
                "orgID": bucket["orgID"],
                "database": target.database,
                "retention_policy": "autogen",
                "default": True,
            },
        )


def parse_query_result(target: InfluxTarget, body: Any) -> list[Series]:
    if not isinstance(body, dict):
        raise StoreError(f"InfluxDB at {target.url}: unexpected /query answer {body!r:.200}")
    if isinstance(body.get("error"), str):
        raise StoreError(f"InfluxDB at {target.url}: query failed: {body['error']}")
    results: Sequence[Any] = body.get("results") or []
    out: list[Series] = []
    for result in results:
        error = result.get("error") if isinstance(result, dict) else None
        if isinstance(error, str):
            if error.startswith("database not found"):
                raise DatabaseNotFound(f"InfluxDB at {target.url}: {error}")
            raise StoreError(f"InfluxDB at {target.url}: query failed: {error}")
        for series in (result.get("series") or []) if isinstance(result, dict) else []:
            out.append(
                Series(
                    name=str(series.get("name", "")),
                    columns=list(series.get("columns") or []),
                    values=list(series.get("values") or []),
                    tags=dict(series.get("tags") or {}),
                )
            )
    return out
