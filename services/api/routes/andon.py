"""The shop-floor andon (docs/andon.md).

Two routers:

- ``router`` (under ``/api/v1``, viewer role, API key header): ``GET /andon`` is the
  snapshot as JSON, ``GET /andon/stream`` the live server-sent events.
- ``page_router``: the page itself (``GET /andon`` and its script and style), the session
  exchange (``POST /andon/session`` with an API key header sets the session cookie;
  ``GET`` tells who is signed in; ``DELETE`` signs out) and ``GET /andon/stream``, the same
  events for the browser, authenticated by the session cookie because ``EventSource``
  cannot send headers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import FileResponse, StreamingResponse

from services.api.andon_session import (
    COOKIE,
    COOKIE_PATH,
    LIFETIME_S,
    session_key,
    signer,
)
from services.api.andon_stream import current_snapshot, event_stream, hub_of
from services.api.auth import ApiKey, ViewerDep
from services.keys import KeyStore, Role

router = APIRouter(tags=["andon"])
page_router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static" / "andon"
_ASSETS = {"andon.js": "text/javascript", "andon.css": "text/css"}
_PAGE_HEADERS = {
    # The page loads only its own script and style and talks only to its own server.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


@router.get("/andon")
def andon_snapshot(request: Request) -> dict[str, Any]:
    """Every machine's state and the current shift's OEE with its hourly trend, grouped by
    site and line (docs/andon.md)."""
    return current_snapshot(request.app.state)


def _stream(request: Request, key: ApiKey) -> StreamingResponse:
    keys: KeyStore = request.app.state.keys

    def still_allowed() -> bool:
        found = keys.get(key.id)
        return found is not None and found.active and found.role.allows(Role.VIEWER)

    return StreamingResponse(
        event_stream(hub_of(request.app.state), still_allowed),
        media_type="text/event-stream",
        headers=_SSE_HEADERS,
    )


# Out of the OpenAPI schema: an endless event stream is no request/response operation.
@router.get("/andon/stream", include_in_schema=False)
def andon_stream_api(request: Request, key: ViewerDep) -> StreamingResponse:
    return _stream(request, key)


@page_router.get("/andon")
def andon_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=_PAGE_HEADERS)


@page_router.get("/andon/static/{asset}")
def andon_asset(asset: str) -> FileResponse:
    media_type = _ASSETS.get(asset)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no andon file {asset!r}")
    return FileResponse(STATIC / asset, media_type=media_type, headers=_PAGE_HEADERS)


def _set_cookie(request: Request, response: Response, key_id: str) -> int:
    token, expires = signer(request).issue(key_id)
    response.set_cookie(
        COOKIE,
        token,
        max_age=LIFETIME_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return expires


@page_router.post("/andon/session")
def andon_sign_in(request: Request, response: Response, key: ViewerDep) -> dict[str, Any]:
    """Exchange the API key sent in the header for the andon's session cookie."""
    expires = _set_cookie(request, response, key.id)
    return {"key": key.name, "role": key.role.value, "expires": expires}


SessionDep = Annotated[ApiKey, Depends(session_key)]


@page_router.get("/andon/session")
def andon_session(key: SessionDep) -> dict[str, Any]:
    """Who the page is signed in as (401 without a valid session)."""
    return {"key": key.name, "role": key.role.value}


@page_router.delete("/andon/session", status_code=status.HTTP_204_NO_CONTENT)
def andon_sign_out(response: Response) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")


@page_router.get("/andon/stream")
def andon_stream_page(request: Request, key: SessionDep) -> StreamingResponse:
    """The live events for the page (session cookie); each connection renews the cookie."""
    response = _stream(request, key)
    _set_cookie(request, response, key.id)
    return response
