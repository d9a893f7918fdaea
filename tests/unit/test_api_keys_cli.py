"""``karkhana api keys create/list/revoke`` against a real keys file, and the API honouring
what the CLI did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from karkhana.cli import app as cli
from services.api import ApiSettings, create_app
from tests.helpers.api import auth_headers
from tests.helpers.store_builders import write_factory

runner = CliRunner()


def keys(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(cli, ["api", "keys", *args], env=env)


@pytest.fixture
def keys_db(tmp_path: Path) -> Path:
    return tmp_path / "keys.sqlite"


def _create(keys_db: Path, role: str, name: str) -> str:
    result = keys("create", "--role", role, "--name", name, "--keys-db", str(keys_db))
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_create_prints_only_the_secret_on_stdout(keys_db: Path) -> None:
    result = keys(
        "create", "--role", "manager", "--name", "plant manager", "--keys-db", str(keys_db)
    )
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert secret.startswith("kk_") and "\n" not in secret
    assert "not shown again" in result.stderr
    assert secret.encode() not in keys_db.read_bytes()


def test_list_shows_keys_without_secrets(keys_db: Path) -> None:
    first = _create(keys_db, "viewer", "grafana")
    second = _create(keys_db, "INTEGRATOR", "commissioning laptop")
    result = keys("list", "--keys-db", str(keys_db))
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.strip().splitlines()
    assert header.split()[:2] == ["id", "role"]
    assert [(row.split()[0], row.split()[1]) for row in rows] == [
        (first.split("_")[1], "viewer"),
        (second.split("_")[1], "integrator"),
    ]
    assert rows[0].endswith("grafana") and rows[1].endswith("commissioning laptop")
    assert first not in result.stdout and second not in result.stdout


def test_revoked_key_is_refused_by_the_api(tmp_path: Path, keys_db: Path) -> None:
    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={"plant/a/l/m1": {"ideal_cycle_s": 1.0}},
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )
    secret = _create(keys_db, "viewer", "andon")
    key_id = secret.split("_")[1]
    app = create_app(ApiSettings(factory=factory, db=tmp_path / "s.sqlite", keys_db=keys_db))
    with TestClient(app, headers=auth_headers(secret)) as client:
        assert client.get("/api/v1/assets").status_code == 200
        result = keys("revoke", key_id, "--keys-db", str(keys_db))
        assert result.exit_code == 0, result.output
        assert f"revoked key {key_id}" in result.stdout
        assert client.get("/api/v1/assets").status_code == 401
    listed = keys("list", "--keys-db", str(keys_db)).stdout
    revoked_at = listed.splitlines()[1].split()[4]
    assert revoked_at != "-" and revoked_at.endswith("Z")


def test_keys_file_defaults_next_to_the_store(tmp_path: Path) -> None:
    db = tmp_path / "data" / "karkhana.sqlite"
    assert keys("create", "--role", "viewer", "--name", "x", "--db", str(db)).exit_code == 0
    assert (tmp_path / "data" / "keys.sqlite").exists()
    env_db = tmp_path / "env-keys.sqlite"
    result = keys(
        "create", "--role", "viewer", "--name", "y", env={"KARKHANA_API_KEYS_DB": str(env_db)}
    )
    assert result.exit_code == 0 and env_db.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "--role", "boss", "--name", "x"], "boss"),
        (["create", "--role", "viewer", "--name", "  "], "needs a name"),
        (["create", "--name", "x"], "--role"),
        (["revoke", "000000000000"], "no API key with id '000000000000'"),
    ],
)
def test_bad_input_exits_2_with_a_message(keys_db: Path, args: list[str], message: str) -> None:
    result = keys(*args, "--keys-db", str(keys_db))
    assert result.exit_code == 2
    assert message in result.stderr


def test_real_entry_point_exit_code(keys_db: Path) -> None:
    cmd = [sys.executable, "-m", "karkhana", "api", "keys", "revoke", "nope"]
    result = subprocess.run(
        [*cmd, "--keys-db", str(keys_db)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "error: no API key with id 'nope' (see 'karkhana api keys list')"
    )
