"""Test clients for the HTTP API: every client sends a real key of the role it asks for."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.api.settings import ApiSettings
from services.keys import KeyStore, Role


def create_key(keys_db: Path, role: Role | str = Role.ADMIN, name: str | None = None) -> str:
    """A new key of ``role`` in the keys file ``keys_db``; returns the secret to send."""
    with KeyStore(keys_db) as store:
        _, secret = store.create(name or f"test-{Role(role).value}", role)
    return secret


def auth_headers(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def api_client(app: FastAPI, role: Role | str = Role.ADMIN) -> TestClient:
    """A client for ``app`` that calls the API with a new key of ``role``, created in the
    keys file of the app's settings.

    Use it as a context manager (``with api_client(app) as client:``) so the app's
    lifespan runs."""
    settings: ApiSettings = app.state.settings
    secret = create_key(settings.keys_path, role)
    return TestClient(app, headers=auth_headers(secret))
