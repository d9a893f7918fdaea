"""Andon sessions: a browser's ``EventSource`` cannot send an API key header, so the andon
page exchanges a key once for a signed session cookie.

The cookie (``karkhana_andon``, HttpOnly, SameSite=Strict, Path=/andon, Secure over HTTPS)
holds ``<key id>.<expiry>.<HMAC-SHA256(secret, key id and expiry)>``: never the key itself.
It is accepted only by the andon's own read-only routes under ``/andon/``; each use checks
that the key still exists, is not revoked and has the viewer role or higher, so revoking
the key ends its sessions. The secret (32 random bytes) lives in a file next to the API
keys file, so sessions survive a restart and every API process sharing the keys shares it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request, status

from karkhana.errors import StoreError
from services.api.auth import TokenBuckets
from services.keys import ApiKey, KeyStore, Role

COOKIE = "karkhana_andon"
COOKIE_PATH = "/andon"
LIFETIME_S = 30 * 86_400  # renewed at each connection of the page
_SECRET_BYTES = 32


def secret_path(keys_path: Path) -> Path:
    """Where the session secret of the keys file ``keys_path`` is kept."""
    return keys_path.with_name(keys_path.name + ".andon-secret")


def load_secret(path: Path) -> bytes:
    """The secret in ``path``; created (owner read/write only) when missing or damaged."""
    try:
        data = path.read_bytes()
        if len(data) == _SECRET_BYTES:
            return data
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot read the andon session secret {path}: {exc}") from exc
    fresh = secrets.token_bytes(_SECRET_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(fresh)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write the andon session secret {path}: {exc}") from exc
    return fresh


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class SessionSigner:
    secret: bytes

    def _mac(self, key_id: str, expires: int) -> str:
        message = f"andon|{key_id}|{expires}".encode()
        return _b64(hmac.new(self.secret, message, hashlib.sha256).digest())

    def issue(self, key_id: str, now: float | None = None) -> tuple[str, int]:
        """A session token for ``key_id`` and its expiry (Unix seconds)."""
        expires = math.floor((time.time() if now is None else now) + LIFETIME_S)
        return f"{key_id}.{expires}.{self._mac(key_id, expires)}", expires

    def verify(self, token: str, now: float | None = None) -> str | None:
        """The key id of a valid, unexpired token; None otherwise."""
        parts = token.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        key_id, expires_text, mac = parts
        expires = int(expires_text)
        if not hmac.compare_digest(self._mac(key_id, expires), mac):
            return None
        return key_id if expires > (time.time() if now is None else now) else None


def signer(request: Request) -> SessionSigner:
    """The app's signer, loaded on first use (kept in ``app.state``)."""
    found: SessionSigner | None = getattr(request.app.state, "andon_signer", None)
    if found is None:
        keys: KeyStore = request.app.state.keys
        found = SessionSigner(load_secret(secret_path(keys.path)))
        request.app.state.andon_signer = found
    return found


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": 'Bearer realm="karkhana"'},
    )


def session_key(request: Request) -> ApiKey:
    """The key behind the request's andon cookie: 401 without a valid one, 429 over the
    key's rate limit (the same buckets as its API requests)."""
    buckets: TokenBuckets = request.app.state.rate_limits
    token = request.cookies.get(COOKIE)
    key_id = signer(request).verify(token) if token else None
    keys: KeyStore = request.app.state.keys
    key = keys.get(key_id) if key_id else None
    if key is None or not key.active or not key.role.allows(Role.VIEWER):
        address = request.client.host if request.client else "unknown"
        client = f"address:{address}"
        detail = (
            "no andon session: open /andon and enter an API key (viewer role or higher)"
            if not token
            else "the andon session is invalid, expired or its key was revoked"
        )
    else:
        client, detail = f"key:{key.id}", ""
    wait = buckets.take(client)
    if wait > 0:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"too many requests; retry after {math.ceil(wait)} s",
            headers={"Retry-After": str(math.ceil(wait))},
        )
    if key is None or detail:
        raise _unauthorized(detail)
    return key
