"""API keys and roles end to end: real keys in a SQLite keys file, the real app in process."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient

from services.api import ApiSettings, create_app
from services.api.auth import TokenBuckets, require_role, unprotected_routes
from services.keys import InvalidKeyRequest, KeyStore, Role
from tests.helpers.api import api_client, auth_headers, create_key
from tests.helpers.store_builders import write_factory, write_samples

MACHINE = "plant/assembly/line-1/m1"
WINDOW = {"asset": "plant", "from": "2024-05-06T06:00:00Z", "to": "2024-05-06T14:00:00Z"}
ROLES = ["viewer", "operator", "manager", "integrator", "admin"]

# What each endpoint needs, from the issue: viewers read KPIs and assets, integrators also
# dead letters, admins also keys. The operator and manager routes stand in for downtime
# coding and reports, which use the same dependency.
ENDPOINTS: list[tuple[str, str, str]] = [
    ("GET", "/api/v1/assets", "viewer"),
    ("GET", "/api/v1/kpi/oee", "viewer"),
    ("PUT", "/api/v1/probe/operator", "operator"),
    ("GET", "/api/v1/probe/manager", "manager"),
    ("GET", "/api/v1/deadletters", "integrator"),
    ("GET", "/api/v1/keys", "admin"),
]


def _probe_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/probe")

    @router.put("/operator", dependencies=[Depends(require_role("operator"))])
    def operator_only() -> dict[str, str]:
        return {"ok": "operator"}

    @router.get("/manager", dependencies=[Depends(require_role(Role.MANAGER))])
    def manager_only() -> dict[str, str]:
        return {"ok": "manager"}

    return router


@pytest.fixture
def settings(tmp_path: Path) -> ApiSettings:
    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={MACHINE: {"ideal_cycle_s": 1.0}},
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )
    db = tmp_path / "store.sqlite"
    t = datetime(2024, 5, 6, 6, tzinfo=UTC)
    write_samples(db, [(MACHINE, "state", t, "running"), (MACHINE, "count_total", t, 0)])
    return ApiSettings(factory=factory, db=db)


def _app(settings: ApiSettings) -> FastAPI:
    app = create_app(settings)
    app.include_router(_probe_router())
    return app


@pytest.fixture
def app(settings: ApiSettings) -> FastAPI:
    return _app(settings)


@pytest.fixture
def anonymous(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:  # deliberately without a key
        yield client


def _call(client: TestClient, method: str, path: str) -> tuple[int, str]:
    params = WINDOW if path.endswith("/oee") else None
    response = client.request(method, path, params=params)
    detail = response.json().get("detail", "") if response.status_code >= 400 else ""
    return response.status_code, str(detail)


# --- roles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_each_role_may_use_exactly_the_endpoints_at_or_below_it(app: FastAPI, role: str) -> None:
    with api_client(app, role) as client:
        for method, path, needed in ENDPOINTS:
            status, detail = _call(client, method, path)
            if ROLES.index(role) >= ROLES.index(needed):
                assert status == 200, (role, path, detail)
            else:
                assert status == 403, (role, path, status)
                assert f"'{needed}' role" in detail and f"role '{role}'" in detail


def test_health_needs_no_key(anonymous: TestClient) -> None:
    assert anonymous.get("/health").status_code == 200


def test_every_api_route_refuses_a_request_without_key(app: FastAPI, anonymous: TestClient) -> None:
    # Walks the OpenAPI spec, so routes added later are covered too.
    paths = app.openapi()["paths"]
    checked = 0
    for path, operations in paths.items():
        if not path.startswith("/api/"):
            continue
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        for method in operations:
            response = anonymous.request(method.upper(), concrete)
            assert response.status_code == 401, (method, path, response.text)
            checked += 1
    assert checked >= 6


def test_an_app_with_a_route_without_role_is_refused() -> None:
    app = FastAPI()

    @app.get("/api/v1/open")
    def open_route() -> None: ...

    assert unprotected_routes(app) == ["GET /api/v1/open"]


def test_unknown_role_in_require_role_is_an_error() -> None:
    with pytest.raises(InvalidKeyRequest, match="unknown role 'boss'"):
        require_role("boss")


# --- 401 -----------------------------------------------------------------------------------


def test_missing_key_is_401_with_a_challenge(anonymous: TestClient) -> None:
    response = anonymous.get("/api/v1/assets")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in response.json()["detail"]


def test_key_in_x_api_key_header_is_accepted(app: FastAPI, settings: ApiSettings) -> None:
    secret = create_key(settings.keys_path, "viewer")
    with TestClient(app) as client:
        assert client.get("/api/v1/assets", headers={"X-API-Key": secret}).status_code == 200


def test_wrong_unknown_malformed_and_revoked_keys_are_401(
    app: FastAPI, settings: ApiSettings
) -> None:
    secret = create_key(settings.keys_path, "admin")
    key_id = secret.split("_")[1]
    revoked = create_key(settings.keys_path, "admin")
    with KeyStore(settings.keys_path) as store:
        store.revoke(revoked.split("_")[1])
    wrong_secret = f"kk_{key_id}_{'A' * 43}"
    with TestClient(app) as client:
        assert client.get("/api/v1/keys", headers=auth_headers(secret)).status_code == 200
        for bad in (wrong_secret, f"kk_000000000000_{'A' * 43}", "not-a-key", "kk_", revoked):
            response = client.get("/api/v1/keys", headers=auth_headers(bad))
            assert response.status_code == 401, bad
            assert response.json()["detail"] == "the API key is unknown or revoked"
            assert "WWW-Authenticate" in response.headers


def test_basic_auth_is_not_a_key(anonymous: TestClient) -> None:
    response = anonymous.get("/api/v1/assets", headers={"Authorization": "Basic dTpw"})
    assert response.status_code == 401


# --- 429 -----------------------------------------------------------------------------------


def test_flooding_key_gets_429_with_retry_after_and_other_keys_do_not(
    settings: ApiSettings,
) -> None:
    limited = settings.model_copy(update={"rate_limit_burst": 3, "rate_limit_per_s": 0.01})
    app = _app(limited)
    other = create_key(limited.keys_path, "viewer")
    with api_client(app, "viewer") as client:
        statuses = [client.get("/api/v1/assets").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        response = client.get("/api/v1/assets")
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert "too many requests" in response.json()["detail"]
        # Per key: another key still has its own full bucket.
        assert client.get("/api/v1/assets", headers=auth_headers(other)).status_code == 200


def test_requests_without_key_are_limited_per_address(settings: ApiSettings) -> None:
    limited = settings.model_copy(update={"rate_limit_burst": 2, "rate_limit_per_s": 0.01})
    with TestClient(_app(limited)) as client:
        guesses = [
            client.get("/api/v1/assets", headers=auth_headers(f"kk_abc_{n}")).status_code
            for n in range(3)
        ]
        assert guesses == [401, 401, 429]
        assert client.get("/health").status_code == 200  # probes are never limited


def test_token_bucket_refills_at_its_rate() -> None:
    buckets = TokenBuckets(rate_per_s=2.0, burst=2)
    assert [buckets.take("a", now=100.0) for _ in range(2)] == [0.0, 0.0]
    assert buckets.take("a", now=100.0) == pytest.approx(0.5)  # one token takes 0.5 s
    assert buckets.take("a", now=100.5) == 0.0
    assert buckets.take("b", now=100.5) == 0.0  # its own bucket
    assert buckets.take("a", now=200.0) == 0.0  # refilled, but never above the burst
    assert buckets.take("a", now=200.0) == 0.0
    assert buckets.take("a", now=200.0) > 0


def test_bucket_table_is_bounded() -> None:
    buckets = TokenBuckets(rate_per_s=1.0, burst=1, max_clients=3)
    for n in range(10):
        buckets.take(f"client-{n}", now=0.0)
    assert buckets.take("client-0", now=0.0) == 0.0  # forgotten: starts with a full bucket
    assert buckets.take("client-9", now=0.0) > 0


# --- 422 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "2024-01-01T00:00:00Z", "to": "2024-12-31T00:00:00Z"}, "maximum of 93 days"),
        ({"from": "yesterday"}, "not an ISO 8601 timestamp"),
        ({"from": "2024-05-06T06:00:00"}, "no timezone"),
        ({"group_by": "planet"}, "group_by"),
        ({"from": "2024-05-06T14:00:00Z", "to": "2024-05-06T06:00:00Z"}, "must be before"),
    ],
)
def test_bad_parameters_are_422_with_a_message(
    app: FastAPI, params: dict[str, str], message: str
) -> None:
    with api_client(app, "viewer") as client:
        response = client.get("/api/v1/kpi/oee", params={**WINDOW, **params})
    assert response.status_code == 422
    assert message in str(response.json()["detail"])


def test_bad_paging_cursor_is_422_not_a_crash(app: FastAPI) -> None:
    with api_client(app, "integrator") as client:
        for before in (str(2**70), "-1", "x"):
            response = client.get("/api/v1/deadletters", params={"before": before})
            assert response.status_code == 422, (before, response.text)


# --- keys: storage and the admin endpoints -------------------------------------------------


def test_secrets_are_stored_only_hashed(settings: ApiSettings) -> None:
    secret = create_key(settings.keys_path, "viewer", name="grafana")
    key_id, raw = secret.removeprefix("kk_").split("_", 1)
    stored = settings.keys_path.read_bytes()
    assert raw.encode() not in stored and secret.encode() not in stored
    assert key_id.encode() in stored and b"grafana" in stored
    assert settings.keys_path.stat().st_mode & 0o077 == 0  # owner only
    with KeyStore(settings.keys_path) as store:
        (key,) = store.list()
    assert (key.id, key.name, key.role, key.revoked) == (key_id, "grafana", Role.VIEWER, None)


def test_last_used_is_recorded(app: FastAPI, settings: ApiSettings) -> None:
    secret = create_key(settings.keys_path, "viewer")
    with KeyStore(settings.keys_path) as store:
        assert store.list()[0].last_used is None
    with TestClient(app) as client:
        client.get("/api/v1/assets", headers=auth_headers(secret))
    with KeyStore(settings.keys_path) as store:
        assert store.list()[0].last_used is not None


def test_admin_creates_lists_and_revokes_keys_over_http(app: FastAPI) -> None:
    with api_client(app, "admin") as admin:
        created = admin.post("/api/v1/keys", json={"name": "line-1 andon", "role": "operator"})
        assert created.status_code == 201, created.text
        body = created.json()
        secret, key_id = body["secret"], body["key"]["id"]
        assert body["key"]["role"] == "operator" and body["key"]["revoked"] is None

        listed = admin.get("/api/v1/keys").json()
        assert [k["name"] for k in listed] == ["test-admin", "line-1 andon"]
        assert secret not in admin.get("/api/v1/keys").text

        new = auth_headers(secret)
        assert admin.put("/api/v1/probe/operator", headers=new).status_code == 200
        assert admin.get("/api/v1/probe/manager", headers=new).status_code == 403

        revoked = admin.delete(f"/api/v1/keys/{key_id}")
        assert revoked.status_code == 200 and revoked.json()["revoked"] is not None
        assert admin.put("/api/v1/probe/operator", headers=new).status_code == 401

        assert admin.delete("/api/v1/keys/000000000000").status_code == 404
        # Python strips \x1f as whitespace, the schema's pattern does not: still a 422.
        blank = admin.post("/api/v1/keys", json={"name": "\u001f", "role": "viewer"})
        assert blank.status_code == 422 and "needs a name" in blank.text
        bad = admin.post("/api/v1/keys", json={"name": "x", "role": "superuser"})
        assert bad.status_code == 422
        assert admin.post("/api/v1/keys", json={"name": " ", "role": "viewer"}).status_code == 422
