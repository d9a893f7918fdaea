"""The andon: snapshot JSON (states, staleness, shift OEE and its hourly trend, computed by
hand below), the page and its session cookie, and 401 without credentials."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api import ApiSettings, create_app
from services.api.andon_session import COOKIE, SessionSigner
from services.keys import KeyStore
from tests.helpers.api import auth_headers, create_key
from tests.helpers.store_builders import Row, write_factory, write_samples

M1 = "plant/assembly/line-1/m1"
M2 = "plant/assembly/line-1/m2"
M3 = "plant/assembly/line-2/m3"
# Far in the future; with andon_clock="data" the andon's clock is the newest sample, so
# these figures do not depend on when the test runs.
DAY = datetime(2100, 1, 4, tzinfo=UTC)


def at(h: int, m: int = 0, s: int = 0) -> datetime:
    return DAY + timedelta(hours=h, minutes=m, seconds=s)


def _rows() -> list[Row]:
    # m1: runs from 06:00, fault 08:00-08:30, runs on; 3000 units (30 rejects) an hour of
    # running; its last sample (power) at 09:30 is the newest of the store.
    rows: list[Row] = [
        (M1, "state", at(6), "running"),
        (M1, "state", at(8), "fault"),
        (M1, "state", at(8, 30), "running"),
        (M1, "count_total", at(6), 0),
        (M1, "count_reject", at(6), 0),
        (M1, "power", at(9, 30), 11.5),
    ]
    for t, total, rejects in [
        (at(6, 59, 59), 3000, 30),
        (at(7, 59, 59), 6000, 60),
        (at(8, 59, 59), 7500, 75),
        (at(9, 29, 59), 9000, 90),
    ]:
        rows += [(M1, "count_total", t, total), (M1, "count_reject", t, rejects)]
    # m2: in fault since 09:00 (two samples of it), nothing after 09:10: stale at 09:30.
    rows += [
        (M2, "state", at(6), "running"),
        (M2, "state", at(9), "fault"),
        (M2, "state", at(9, 10), "fault"),
    ]
    return rows  # m3 never sent anything


@pytest.fixture
def settings(tmp_path: Path) -> ApiSettings:
    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={
            M1: {"ideal_cycle_s": 1.0},
            M2: {"ideal_cycle_s": 1.0},
            M3: {"ideal_cycle_s": 2.0},
        },
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )
    db = tmp_path / "store.sqlite"
    write_samples(db, _rows())
    return ApiSettings(factory=factory, db=db, andon_clock="data")


def _tiles(snap: dict) -> dict[str, dict]:
    return {
        m["path"]: m for site in snap["sites"] for line in site["lines"] for m in line["machines"]
    }


def test_snapshot_states_shift_oee_and_hourly_trend(settings: ApiSettings) -> None:
    headers = auth_headers(create_key(settings.keys_path, "viewer"))
    with TestClient(create_app(settings), headers=headers) as client:
        response = client.get("/api/v1/andon")
    assert response.status_code == 200, response.text
    snap = response.json()
    assert snap["now"] == "2100-01-04T09:30:00Z"
    (site,) = snap["sites"]
    assert site["shift"] == {
        "name": "day",
        "start": "2100-01-04T06:00:00Z",
        "end": "2100-01-04T14:00:00Z",
    }
    assert [(line["path"], [m["id"] for m in line["machines"]]) for line in site["lines"]] == [
        ("plant/assembly/line-1", ["m1", "m2"]),
        ("plant/assembly/line-2", ["m3"]),
    ]
    tiles = _tiles(snap)
    m1, m2, m3 = tiles[M1], tiles[M2], tiles[M3]
    assert (m1["state"], m1["since"], m1["stale"]) == ("running", "2100-01-04T08:30:00Z", False)
    assert m1["last_seen"] == "2100-01-04T09:30:00Z"
    assert (m2["state"], m2["since"], m2["stale"]) == ("fault", "2100-01-04T09:00:00Z", True)
    assert (m3["state"], m3["since"], m3["last_seen"], m3["stale"]) == (None, None, None, True)

    # Shift 06:00-09:30: planned 12600 s, run 10800 s, 9000 units of 1 s, 8910 good.
    kpi = m1["kpi"]
    assert kpi["availability"] == pytest.approx(10800 / 12600)
    assert kpi["performance"] == pytest.approx(9000 / 10800)
    assert kpi["quality"] == pytest.approx(8910 / 9000)
    assert kpi["oee"] == pytest.approx(10800 / 12600 * 9000 / 10800 * 8910 / 9000)
    # One point per hour of the shift so far; 08:00-09:00 lost half an hour to the fault.
    full_hour = 3000 / 3600 * 0.99
    assert [p["from"] for p in m1["trend"]] == [
        "2100-01-04T06:00:00Z",
        "2100-01-04T07:00:00Z",
        "2100-01-04T08:00:00Z",
        "2100-01-04T09:00:00Z",
    ]
    assert [p["oee"] for p in m1["trend"]] == pytest.approx(
        [full_hour, full_hour, 0.5 * (1500 / 1800) * 0.99, (1500 / 1800) * 0.99]
    )
    # A line's figures come from its machines' summed components: m2 ran 06:00-09:00 and
    # counted nothing, so the line's availability is (10800 + 10800) / (2 x 12600).
    line1 = site["lines"][0]["kpi"]
    assert line1["availability"] == pytest.approx(21600 / 25200)
    assert m3["kpi"]["oee"] is None


def test_the_wall_clock_is_the_default_clock(settings: ApiSettings) -> None:
    wall = settings.model_copy(update={"andon_clock": "wall"})
    headers = auth_headers(create_key(wall.keys_path, "viewer"))
    before = datetime.now(UTC)
    with TestClient(create_app(wall), headers=headers) as client:
        snap = client.get("/api/v1/andon").json()
    now = datetime.fromisoformat(snap["now"])
    assert before <= now <= datetime.now(UTC)
    # 06:00-14:00 UTC: a shift only when the test runs in it.
    expected = "day" if 6 <= now.hour < 14 else None
    assert (snap["sites"][0]["shift"] or {}).get("name") == expected


def test_everything_but_the_page_needs_credentials(settings: ApiSettings) -> None:
    with TestClient(create_app(settings)) as client:
        for path in ("/api/v1/andon", "/api/v1/andon/stream", "/andon/stream", "/andon/session"):
            response = client.get(path)
            assert response.status_code == 401, (path, response.text)
            assert "WWW-Authenticate" in response.headers
        assert client.post("/andon/session").status_code == 401
        assert client.post("/andon/session", headers=auth_headers("kk_0_nope")).status_code == 401
        client.cookies.set(COOKIE, "abc.123.forged", path="/andon")
        assert client.get("/andon/stream").status_code == 401
        page = client.get("/andon")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/andon/static/andon.js").status_code == 200
        assert client.get("/andon/static/andon.css").status_code == 200
        assert client.get("/andon/static/other.txt").status_code == 404


def test_session_cookie_is_scoped_signed_and_ends_with_its_key(settings: ApiSettings) -> None:
    secret = create_key(settings.keys_path, "viewer", name="line-1 tv")
    with TestClient(create_app(settings)) as client:
        response = client.post("/andon/session", headers=auth_headers(secret))
        assert response.status_code == 200, response.text
        assert response.json()["key"] == "line-1 tv"
        cookie = response.headers["set-cookie"]
        for attribute in ("HttpOnly", "SameSite=strict", "Path=/andon", "Max-Age="):
            assert attribute.lower() in cookie.lower(), cookie
        assert secret.split("_")[-1] not in cookie  # the key itself stays out of the cookie
        assert client.get("/andon/session").json() == {"key": "line-1 tv", "role": "viewer"}

        # A cookie for another key id, or a later expiry, fails its signature.
        token = client.cookies.get(COOKIE)
        assert token is not None
        key_id, expires, mac = token.split(".")
        for forged in (f"{'0' * 12}.{expires}.{mac}", f"{key_id}.{int(expires) + 1}.{mac}"):
            client.cookies.set(COOKIE, forged, path="/andon")
            assert client.get("/andon/session").status_code == 401
        client.cookies.set(COOKIE, token, path="/andon")
        assert client.get("/andon/session").status_code == 200

        with KeyStore(settings.keys_path) as keys:
            keys.revoke(key_id)
        assert client.get("/andon/session").status_code == 401
        assert client.get("/andon/stream").status_code == 401


def test_session_token_expires() -> None:
    signer = SessionSigner(b"k" * 32)
    token, expires = signer.issue("3f9c0a1b2c4d", now=1_000.0)
    assert signer.verify(token, now=expires - 1) == "3f9c0a1b2c4d"
    assert signer.verify(token, now=expires) is None
    assert SessionSigner(b"x" * 32).verify(token, now=1_000.0) is None
    assert signer.verify("not-a-token") is None


def test_openapi_lists_the_snapshot_but_not_the_endless_streams(settings: ApiSettings) -> None:
    with TestClient(create_app(settings)) as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/andon" in paths
    assert not [p for p in paths if p.endswith("/stream") or p.startswith("/andon")]
