"""``/api/v1/keys``: list, create and revoke API keys (admin role)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request, status
from pydantic import BaseModel, Field

from karkhana.models import iso_utc
from services.api.errors import not_found, unprocessable
from services.keys import ApiKey, InvalidKeyRequest, KeyStore, Role

router = APIRouter(prefix="/keys", tags=["keys"])


class KeyOut(BaseModel):
    id: str
    name: str
    role: Role
    created: str = Field(description="ISO 8601 UTC")
    last_used: str | None = Field(description="ISO 8601 UTC, to the minute; null if never")
    revoked: str | None = Field(description="ISO 8601 UTC; null while the key is active")


class NewKey(BaseModel):
    name: str = Field(min_length=1, max_length=200, pattern=r"\S", description="who uses it")
    role: Role


class CreatedKey(BaseModel):
    key: KeyOut
    secret: str = Field(description="the key to send; shown only in this response")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else iso_utc(datetime.fromtimestamp(ts, UTC))


def _out(key: ApiKey) -> KeyOut:
    created = _iso(key.created)
    assert created is not None
    return KeyOut(
        id=key.id,
        name=key.name,
        role=key.role,
        created=created,
        last_used=_iso(key.last_used),
        revoked=_iso(key.revoked),
    )


def _store(request: Request) -> KeyStore:
    store: KeyStore = request.app.state.keys
    return store


@router.get("", response_model=list[KeyOut])
def list_keys(request: Request) -> list[KeyOut]:
    """Every key, active and revoked, oldest first (never the secrets)."""
    return [_out(key) for key in _store(request).list()]


@router.post("", response_model=CreatedKey, status_code=status.HTTP_201_CREATED)
def create_key(request: Request, body: NewKey) -> CreatedKey:
    """A new key; its secret is in this response only."""
    try:
        key, secret = _store(request).create(body.name, body.role)
    except InvalidKeyRequest as exc:  # e.g. a name of control characters only
        raise unprocessable(str(exc)) from exc
    return CreatedKey(key=_out(key), secret=secret)


@router.delete("/{key_id}", response_model=KeyOut)
def revoke_key(
    request: Request, key_id: Annotated[str, Path(max_length=64, description="the key's id")]
) -> KeyOut:
    """Revoke a key: its next request is refused (401)."""
    store = _store(request)
    if store.get(key_id) is None:
        raise not_found(f"no API key with id {key_id!r}")
    return _out(store.revoke(key_id))
