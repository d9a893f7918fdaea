"""API keys: random secrets shown once, stored as salted HMAC-SHA256 digests in SQLite.

A key reads ``kk_<id>_<secret>``: ``id`` finds the row, ``secret`` (32 random bytes,
URL-safe base64) is checked against the stored digest. Why a fast HMAC and not a slow
password hash: the secret has 256 bits of entropy, so a stolen keys file cannot be brute
forced whatever the hash costs; a slow KDF would only make every request slower. The
per-key salt keeps two digests of the same secret different and defeats precomputed tables.

Roles form a hierarchy (see ``Role``): a key may do what its role and every lower role may.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from karkhana.errors import KarkhanaError, StoreError

PREFIX = "kk_"
_ID_BYTES = 6  # 12 hex characters: enough to never collide in a key table
_SECRET_BYTES = 32
# last_used is written at most this often per key, so reads do not turn into writes.
LAST_USED_RESOLUTION_S = 60.0


class Role(StrEnum):
    """Lowest to highest; each role includes everything the roles before it may do."""

    VIEWER = "viewer"  # read KPIs, assets, downtime, health
    OPERATOR = "operator"  # + code downtime reasons and comments
    MANAGER = "manager"  # + reports
    INTEGRATOR = "integrator"  # + dead letters, edge and gateway administration
    ADMIN = "admin"  # + API keys

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


class InvalidKeyRequest(KarkhanaError):
    """A key operation was asked with bad input (unknown id, bad role, empty name)."""


@dataclass(frozen=True)
class ApiKey:
    """A key's record; never the secret."""

    id: str
    name: str
    role: Role
    created: float  # Unix seconds
    last_used: float | None
    revoked: float | None

    @property
    def active(self) -> bool:
        return self.revoked is None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id        TEXT PRIMARY KEY,
    name      TEXT NOT NULL,
    role      TEXT NOT NULL,
    salt      BLOB NOT NULL,
    digest    BLOB NOT NULL,
    created   REAL NOT NULL,
    last_used REAL,
    revoked   REAL
)
"""


def parse_role(text: str) -> Role:
    try:
        return Role(text.strip().lower())
    except ValueError as exc:
        raise InvalidKeyRequest(
            f"unknown role {text!r}; choose one of {', '.join(r.value for r in Role)}"
        ) from exc


def _digest(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def _split(key: str) -> tuple[str, str] | None:
    if not key.startswith(PREFIX):
        return None
    key_id, sep, secret = key[len(PREFIX) :].partition("_")
    if not sep or not key_id or not secret:
        return None
    return key_id, secret


class KeyStore:
    """The keys table in one SQLite file; safe to share between the API's worker threads.

    Each operation commits at once, so a key revoked from the CLI (another process) is
    refused on the API's next request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Digests only, but still nobody else's business: owner read/write.
            path.touch(mode=0o600, exist_ok=True)
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA busy_timeout = 5000")
            self._conn.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the API keys file {path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"the API keys file {self.path} failed: {exc}") from exc

    def create(self, name: str, role: Role | str) -> tuple[ApiKey, str]:
        """A new key and its secret; the secret is not stored and cannot be shown again."""
        role = role if isinstance(role, Role) else parse_role(role)
        name = name.strip()
        if not name:
            raise InvalidKeyRequest("a key needs a name (who or what uses it)")
        key_id = secrets.token_hex(_ID_BYTES)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        salt = secrets.token_bytes(16)
        now = time.time()
        self._run(
            "INSERT INTO api_keys (id, name, role, salt, digest, created) VALUES (?,?,?,?,?,?)",
            (key_id, name, role.value, salt, _digest(salt, secret), now),
        )
        return ApiKey(key_id, name, role, now, None, None), f"{PREFIX}{key_id}_{secret}"

    def list(self) -> list[ApiKey]:
        rows = self._run(
            "SELECT id, name, role, created, last_used, revoked FROM api_keys ORDER BY created"
        )
        return [_key(row) for row in rows]

    def get(self, key_id: str) -> ApiKey | None:
        rows = self._run(
            "SELECT id, name, role, created, last_used, revoked FROM api_keys WHERE id = ?",
            (key_id,),
        )
        return _key(rows[0]) if rows else None

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke ``key_id`` (revoking twice keeps the first time); unknown ids raise."""
        self._run(
            "UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL",
            (time.time(), key_id),
        )
        key = self.get(key_id)
        if key is None:
            raise InvalidKeyRequest(f"no API key with id {key_id!r} (see 'karkhana api keys list')")
        return key

    def authenticate(self, presented: str) -> ApiKey | None:
        """The active key ``presented`` belongs to, or None (unknown, wrong or revoked)."""
        parts = _split(presented)
        if parts is None:
            return None
        key_id, secret = parts
        rows = self._run(
            "SELECT id, name, role, created, last_used, revoked, salt, digest "
            "FROM api_keys WHERE id = ?",
            (key_id,),
        )
        if not rows:
            return None
        *fields, salt, digest = rows[0]
        assert isinstance(salt, bytes) and isinstance(digest, bytes)
        if not hmac.compare_digest(_digest(salt, secret), digest):
            return None
        key = _key(tuple(fields))
        if not key.active:
            return None
        now = time.time()
        if key.last_used is None or now - key.last_used >= LAST_USED_RESOLUTION_S:
            self._run("UPDATE api_keys SET last_used = ? WHERE id = ?", (now, key_id))
        return key


def _key(row: tuple[object, ...]) -> ApiKey:
    key_id, name, role, created, last_used, revoked = row
    return ApiKey(
        id=str(key_id),
        name=str(name),
        role=Role(str(role)),
        created=float(created),  # type: ignore[arg-type]
        last_used=None if last_used is None else float(last_used),  # type: ignore[arg-type]
        revoked=None if revoked is None else float(revoked),  # type: ignore[arg-type]
    )
