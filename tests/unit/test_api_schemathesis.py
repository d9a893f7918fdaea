"""Schemathesis over the API's own OpenAPI spec, with an admin key: whatever valid or invalid
request it generates, the API answers with a 2xx or a 4xx, never a server error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, GenerationMode

from gateway.deadletters import DeadLetter
from gateway.stores import Batch, SqliteStore
from services.api import ApiSettings, create_app
from tests.helpers.api import auth_headers, create_key
from tests.helpers.store_builders import Row, write_factory, write_samples

M1 = "plant/assembly/line-1/m1"
M2 = "plant/assembly/line-2/m2"
EXAMPLES_PER_OPERATION = 100  # bounded so the run stays well under a minute


def _store(db: Path) -> None:
    t = datetime(2024, 5, 6, 6, tzinfo=UTC)
    rows: list[Row] = [
        (M1, "state", t, "running"),
        (M1, "state", t + timedelta(hours=2), "fault"),
        (M1, "count_total", t, 0),
        (M1, "count_total", t + timedelta(hours=1), 3000),
        (M2, "state", t, "planned_stop"),
    ]
    write_samples(db, rows)
    store = SqliteStore.open(db)
    try:
        letter = DeadLetter(
            received_ns=1_714_521_600_000_000_000,
            topic="karkhana/v1/edge/e/samples",
            reason="not JSON",
            payload=b"\xff\xfe",
            payload_size=2,
        )
        store.write(Batch(dead_letters=[letter]))
    finally:
        store.close()


def test_no_request_makes_the_api_fail(tmp_path: Path) -> None:
    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={M1: {"ideal_cycle_s": 1.0}, M2: {"ideal_cycle_s": 2.0}},
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )
    db = tmp_path / "store.sqlite"
    _store(db)
    api = ApiSettings(factory=factory, db=db, rate_limit_burst=1_000_000)
    app = create_app(api)
    headers = auth_headers(create_key(api.keys_path, "admin"))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    for operation in operations:
        _fuzz(operation, headers)


def _fuzz(operation: APIOperation, headers: dict[str, str]) -> None:
    """Valid and invalid requests for one operation: never a 5xx."""
    cases = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def no_server_error(case: schemathesis.Case) -> None:
        response = case.call(headers=headers)
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: "
            f"{response.text[:500]}\n{case.as_curl_command(headers=headers)}"
        )

    no_server_error()
