"""``GET /api/v1/deadletters`` over a real SQLite store written by the gateway's store adapter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.deadletters import DeadLetter
from gateway.stores import Batch, SqliteStore
from services.api import ApiSettings, create_app
from tests.helpers.api import api_client
from tests.helpers.store_builders import write_factory

TOPIC = "karkhana/v1/edge/edge-1/samples"
# 2024-05-01T10:00:00Z = 1714521600 s (2024-05-01T00:00Z) + 10 h.
T10_NS = (1_714_521_600 + 10 * 3600) * 1_000_000_000


def store_dead_letters(db: Path, letters: list[DeadLetter]) -> None:
    store = SqliteStore.open(db)
    try:
        store.write(Batch(dead_letters=letters))
    finally:
        store.close()


def letter(n: int, payload: bytes = b"{}", size: int | None = None) -> DeadLetter:
    return DeadLetter(
        received_ns=T10_NS + n * 1_000_000_000,
        topic=TOPIC,
        reason=f"reason {n}",
        payload=payload,
        payload_size=len(payload) if size is None else size,
    )


@pytest.fixture
def factory(tmp_path: Path) -> Path:
    return write_factory(
        tmp_path / "factory.yaml",
        machines={"plant/a/l/m1": {"ideal_cycle_s": 1.0}},
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite"


@pytest.fixture
def client(factory: Path, db: Path) -> Iterator[TestClient]:
    with api_client(create_app(ApiSettings(factory=factory, db=db)), "integrator") as c:
        yield c


def get(client: TestClient, **params: object) -> dict[str, object]:
    response = client.get("/api/v1/deadletters", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_no_store_yet_is_an_empty_page(client: TestClient) -> None:
    assert get(client) == {"items": [], "total": 0, "next_before": None}


def test_pages_walk_every_dead_letter_newest_first(client: TestClient, db: Path) -> None:
    store_dead_letters(db, [letter(n) for n in range(1, 131)])
    store_dead_letters(db, [letter(n) for n in range(131, 251)])
    reasons: list[str] = []
    first = get(client)
    assert first["total"] == 250
    assert len(first["items"]) == 100  # type: ignore[arg-type]
    page = first
    pages = 1
    while True:
        reasons.extend(item["reason"] for item in page["items"])  # type: ignore[attr-defined]
        if page["next_before"] is None:
            break
        page = get(client, limit=100, before=page["next_before"])
        pages += 1
    assert pages == 3
    assert reasons == [f"reason {n}" for n in range(250, 0, -1)]


def test_exactly_one_full_page_has_no_next_page(client: TestClient, db: Path) -> None:
    store_dead_letters(db, [letter(n) for n in range(1, 6)])
    page = get(client, limit=5)
    assert [item["reason"] for item in page["items"]] == [  # type: ignore[attr-defined]
        "reason 5",
        "reason 4",
        "reason 3",
        "reason 2",
        "reason 1",
    ]
    assert page["next_before"] is None
    smaller = get(client, limit=2)
    assert smaller["next_before"] == smaller["items"][-1]["id"]  # type: ignore[index]


def test_item_fields(client: TestClient, db: Path) -> None:
    cut = "h\u00e9llo".encode()[:2]  # the gateway cut inside the two-byte 'é'
    store_dead_letters(
        db,
        [
            letter(1, b"not json"),
            letter(2, b"a\xffb\x00", size=4),
            letter(3, cut, size=6),
            letter(4, b"", size=0),
        ],
    )
    items = get(client)["items"]
    assert isinstance(items, list)
    plain, bad_utf8, truncated, empty = reversed(items)
    assert plain == {
        "id": plain["id"],
        "received": "2024-05-01T10:00:01Z",
        "topic": TOPIC,
        "reason": "reason 1",
        "payload": "not json",
        "payload_escaped": False,
        "truncated": False,
        "payload_size": 8,
    }
    assert (bad_utf8["payload"], bad_utf8["payload_escaped"]) == ("a\\xffb\x00", True)
    assert (truncated["payload"], truncated["truncated"], truncated["payload_escaped"]) == (
        "h",
        True,
        False,
    )
    assert truncated["payload_size"] == 6
    assert (empty["payload"], empty["truncated"]) == ("", False)


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"before": 0}, "before"),
        ({"before": "x"}, "before"),
    ],
)
def test_bad_parameters_are_422_naming_them(
    client: TestClient, params: dict[str, object], name: str
) -> None:
    response = client.get("/api/v1/deadletters", params=params)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["query", name]]
