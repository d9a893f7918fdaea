"""Who is calling: API keys, roles and rate limits as FastAPI dependencies.

A request sends its key as ``Authorization: Bearer kk_...`` or ``X-API-Key: kk_...``.
No key or an unknown/revoked one is 401 (with ``WWW-Authenticate``); a key whose role is
too low is 403 naming the role needed; too many requests is 429 with ``Retry-After``.

Routes declare the lowest role they need::

    @router.put("/downtime/{id}", dependencies=[Depends(require_role("operator"))])

or take the caller as a parameter: ``key: Annotated[ApiKey, Depends(require_role("operator"))]``.
``authenticate`` runs once per request however many role checks a route stacks, so a
request costs one token of its key's bucket.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from services.keys import ApiKey, KeyStore, Role, parse_role

__all__ = [
    "AdminDep",
    "ApiKey",
    "IntegratorDep",
    "ManagerDep",
    "OperatorDep",
    "Role",
    "TokenBuckets",
    "ViewerDep",
    "authenticate",
    "require_role",
    "unprotected_routes",
]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="karkhana"'}

_bearer = HTTPBearer(auto_error=False, description="an API key: 'Authorization: Bearer kk_...'")
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="an API key, instead of the bearer header"
)


class TokenBuckets:
    """One token bucket per client, in memory: ``burst`` requests at once, refilled at
    ``rate_per_s``. The table keeps at most ``max_clients`` buckets; the least recently
    seen go first (a forgotten client just starts again with a full bucket)."""

    def __init__(self, rate_per_s: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str, now: float | None = None) -> float:
        """Take a token for ``client``: 0.0 if allowed, else seconds until one is free."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate_per_s)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate_per_s
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait


def _throttle(request: Request, client: str) -> None:
    buckets: TokenBuckets = request.app.state.rate_limits
    wait = buckets.take(client)
    if wait > 0:
        raise HTTPException(
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            detail=(
                f"too many requests: at most {buckets.burst} at once and "
                f"{buckets.rate_per_s:g} per second; retry after {math.ceil(wait)} s"
            ),
            headers={"Retry-After": str(math.ceil(wait))},
        )


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers=_CHALLENGE)


def authenticate(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key_header)],
) -> ApiKey:
    """The caller's active key (rate limited per key); 401 without one.

    Requests without a valid key are rate limited per client address, which also slows
    down anyone guessing keys."""
    presented = bearer.credentials if bearer is not None else header_key
    keys: KeyStore = request.app.state.keys
    key = keys.authenticate(presented.strip()) if presented else None
    if key is None:
        address = request.client.host if request.client else "unknown"
        _throttle(request, f"address:{address}")
        if not presented:
            raise _unauthorized(
                "an API key is needed: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
                "(create one with 'karkhana api keys create')"
            )
        raise _unauthorized("the API key is unknown or revoked")
    _throttle(request, f"key:{key.id}")
    return key


def require_role(role: Role | str) -> Callable[[ApiKey], ApiKey]:
    """A dependency that lets through keys of ``role`` or a higher one (403 otherwise)."""
    needed = role if isinstance(role, Role) else parse_role(role)

    def check_role(key: Annotated[ApiKey, Depends(authenticate)]) -> ApiKey:
        if not key.role.allows(needed):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=(
                    f"this needs the '{needed.value}' role or higher; the key "
                    f"'{key.name}' has the role '{key.role.value}'"
                ),
            )
        return key

    check_role.__name__ = f"require_{needed.value}"
    return check_role


ViewerDep = Annotated[ApiKey, Depends(require_role(Role.VIEWER))]
OperatorDep = Annotated[ApiKey, Depends(require_role(Role.OPERATOR))]
ManagerDep = Annotated[ApiKey, Depends(require_role(Role.MANAGER))]
IntegratorDep = Annotated[ApiKey, Depends(require_role(Role.INTEGRATOR))]
AdminDep = Annotated[ApiKey, Depends(require_role(Role.ADMIN))]


def unprotected_routes(app: FastAPI, prefix: str = "/api/") -> list[str]:
    """Routes under ``prefix`` that do not run ``authenticate``: the app refuses to start
    with any, so a new router cannot be served without keys by mistake."""

    def calls(dependant: object) -> set[object]:
        found: set[object] = set()
        for sub in getattr(dependant, "dependencies", []):
            found.add(sub.call)
            found |= calls(sub)
        return found

    return [
        f"{','.join(sorted(route.methods or ()))} {route.path}"
        for route in app.routes
        if isinstance(route, APIRoute)
        and route.path.startswith(prefix)
        and authenticate not in calls(route.dependant)
    ]
