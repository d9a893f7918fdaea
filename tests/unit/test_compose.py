"""docker-compose.yml and its files: valid against the Compose Specification, every mounted
file present, and no credential committed or defaulted anywhere."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DEPLOY = ROOT / "deploy"
# Grafana's data source and dashboard provider, kept with the dashboards they load.
GRAFANA_PROVISIONING = ROOT / "dashboards" / "provisioning"
# The Compose Specification's own JSON Schema (compose-spec project), kept beside the repo.
COMPOSE_SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|PASSPHRASE|API_?KEY|_USER(NAME)?$")
# Admin logins that must come from .env, not a built-in default such as admin/admin.
ADMIN_LOGINS = ("GF_SECURITY_ADMIN_USER", "DOCKER_INFLUXDB_INIT_USERNAME")
WEAK = {"admin", "password", "secret", "changeme", "change-me", "karkhana", "root", "test"}


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not NAME=value"
            values[name.strip()] = value.strip()
    return values


def resolve_default(text: str) -> str:
    """A compose value with every ${VAR:-default} replaced by its default (what a mount
    points at when .env leaves the variable unset)."""

    def default(match: re.Match[str]) -> str:
        op = match.group("op") or ""
        assert op in (":-", "-"), f"{text!r}: a mounted path must have a default"
        return match.group("arg")

    return INTERPOLATION.sub(default, text)


def environment_items(service: dict[str, Any]) -> list[tuple[str, str]]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = [item.partition("=") for item in env]
        return [(name, value) for name, _, value in pairs]
    return [(str(k), "" if v is None else str(v)) for k, v in env.items()]


def credential_problems(compose_text: str, env_values: dict[str, str]) -> list[str]:
    """Every way a credential could be committed or defaulted; empty when there is none."""
    problems: list[str] = []
    for match in INTERPOLATION.finditer(compose_text):
        name, op = match.group("name"), match.group("op") or ""
        if SECRET_NAME.search(name) and op != ":?":
            problems.append(f"${{{name}{op}{match.group('arg')}}}: a credential must be ${{X:?}}")
    compose = yaml.safe_load(compose_text)
    for service_name, service in (compose.get("services") or {}).items():
        for key, value in environment_items(service):
            whole = INTERPOLATION.fullmatch(value)
            needs_env = SECRET_NAME.search(key) and not key.endswith(("_USERNAME", "_USER"))
            if (needs_env or key in ADMIN_LOGINS) and not (whole and whole.group("op") == ":?"):
                problems.append(f"{service_name}.environment.{key}: literal or default {value!r}")
    for name, value in env_values.items():
        if SECRET_NAME.search(name) and value:
            problems.append(f".env.example: {name} has a value; leave credentials empty")
    return problems


def test_compose_validates_against_the_compose_spec() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(load_compose()), key=str)
    assert errors == [], [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def test_schema_check_catches_an_invalid_compose() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    broken = load_compose()
    broken["services"]["gateway"]["restart"] = ["always"]  # must be a string
    broken["services"]["api"]["no_such_key"] = 1
    assert len(list(jsonschema.Draft7Validator(schema).iter_errors(broken))) >= 2


def test_every_mounted_file_exists() -> None:
    compose = load_compose()
    declared = set(compose.get("volumes") or {})
    mounts = 0
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict):
                kind, source = volume.get("type"), resolve_default(volume.get("source", ""))
            else:  # short syntax SOURCE:TARGET[:MODE], with ${VAR:-default} in SOURCE
                source = resolve_default(volume).split(":", 1)[0]
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            if kind == "volume":
                assert source in declared, f"{name}: named volume {source!r} is not declared"
                continue
            path = (ROOT / source).resolve()
            assert path.exists(), f"{name}: mounted {source} -> {path} does not exist"
            mounts += 1
    for section in ("configs", "secrets"):
        for entry_name, entry in (compose.get(section) or {}).items():
            if "file" in entry:
                path = ROOT / resolve_default(entry["file"])
                assert path.exists(), f"{section}.{entry_name}: {path} does not exist"
    assert mounts >= 10  # the broker, database, Grafana and karkhana files are all checked


def test_no_credential_is_committed_or_defaulted() -> None:
    problems = credential_problems(COMPOSE.read_text(encoding="utf-8"), env_example())
    assert problems == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD in .env (see .env.example)}",
            "${GRAFANA_ADMIN_PASSWORD:-admin}",
        ),
        ("${MQTT_GATEWAY_PASSWORD:?set MQTT_GATEWAY_PASSWORD in .env (see .env.example)}", "x1"),
        ("${INFLUXDB_TOKEN:?set INFLUXDB_TOKEN in .env (see .env.example)}", "${INFLUXDB_TOKEN}"),
        (
            "${GRAFANA_ADMIN_USER:?set GRAFANA_ADMIN_USER in .env (see .env.example)}",
            "admin",
        ),
        ("      GF_USERS_ALLOW_SIGN_UP:", '      GF_SECURITY_ADMIN_PASSWORD: ""\n      X:'),
    ],
)
def test_credential_check_catches_defaults_literals_and_empties(old: str, new: str) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    assert old in text
    assert credential_problems(text.replace(old, new, 1), env_example()) != []


def test_credential_check_catches_a_value_in_env_example() -> None:
    values = env_example()
    assert credential_problems(COMPOSE.read_text(encoding="utf-8"), values) == []
    values["INFLUXDB_TOKEN"] = "my-token"
    assert credential_problems(COMPOSE.read_text(encoding="utf-8"), values) != []


def test_env_example_documents_every_variable() -> None:
    used = {m.group("name") for m in INTERPOLATION.finditer(COMPOSE.read_text(encoding="utf-8"))}
    documented = env_example()
    assert used - set(documented) == set()
    assert set(documented) - used == set()  # nothing documented that compose ignores
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    for name in documented:  # each has a comment within the lines above it
        block = text.split(f"\n{name}=")[0].rsplit("\n\n", 1)[-1]
        assert "#" in block, f"{name} has no explanation in .env.example"


def test_required_secrets_stop_compose_with_a_message() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    required = {
        m.group("name"): m.group("arg")
        for m in INTERPOLATION.finditer(text)
        if (m.group("op") or "") == ":?"
    }
    assert {
        "MQTT_GATEWAY_PASSWORD",
        "MQTT_EDGE_PASSWORD",
        "INFLUXDB_ADMIN_PASSWORD",
        "INFLUXDB_TOKEN",
        "GRAFANA_ADMIN_PASSWORD",
    } <= set(required)
    assert all(".env" in message for message in required.values())


@pytest.mark.parametrize(
    "path",
    [
        *sorted(GRAFANA_PROVISIONING.rglob("*.yaml")),
        *sorted((DEPLOY / "mosquitto").glob("*.conf")),
        DEPLOY / "mosquitto" / "acl",
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_provisioning_and_broker_files_hold_no_credential(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        match = re.search(
            r"(password|token|secret|httpHeaderValue\d*)\w*\s*[:= ]\s*(\S.*)?$",
            code,
            re.IGNORECASE,
        )
        if not match:
            continue
        value = (match.group(2) or "").strip().strip("'\"")
        if code.strip().startswith(("password_file", "acl_file")):
            continue  # a path to the generated file, not a password
        env_only = re.sub(r"\$\{[A-Z_][A-Z0-9_]*\}", "", value).strip()
        assert env_only in ("", "Token"), f"{path.name}: {line.strip()!r} holds a credential"
        assert value, f"{path.name}: {line.strip()!r} is an empty credential"
    assert not any(f"{w}:{w}" in text or f"{w}/{w}" in text for w in WEAK)


def grafana_mounts() -> dict[str, Path]:
    """Container path -> repository path of Grafana's bind mounts."""
    mounts = {}
    for volume in load_compose()["services"]["grafana"]["volumes"]:
        source, target = resolve_default(volume).split(":")[:2]
        if source.startswith("."):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def test_grafana_provisioning_gets_every_variable_from_compose() -> None:
    mounts = grafana_mounts()
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == GRAFANA_PROVISIONING.resolve()
    grafana_env = dict(environment_items(load_compose()["services"]["grafana"]))
    files = sorted(provisioning.rglob("*.yaml"))
    assert files
    for path in files:
        for match in re.finditer(r"\$\{?([A-Z_][A-Z0-9_]*)", path.read_text(encoding="utf-8")):
            assert match.group(1) in grafana_env, f"{path.name}: ${match.group(1)} is not set"
    sources = yaml.safe_load((provisioning / "datasources" / "influxdb.yaml").read_text())
    (source,) = sources["datasources"]
    assert source["jsonData"]["version"] == "InfluxQL"
    assert source["secureJsonData"]["httpHeaderValue1"] == "Token ${KARKHANA_INFLUX_TOKEN}"
    assert grafana_env["KARKHANA_INFLUX_TOKEN"].startswith("${INFLUXDB_TOKEN:?")
    assert grafana_env["KARKHANA_INFLUX_URL"] == "http://influxdb:8086"


def test_grafana_loads_the_dashboards_directory() -> None:
    mounts = grafana_mounts()
    providers = yaml.safe_load(
        (GRAFANA_PROVISIONING / "dashboards" / "karkhana.yaml").read_text(encoding="utf-8")
    )
    for provider in providers["providers"]:
        path = provider["options"]["path"]
        assert mounts.get(path) == (ROOT / "dashboards").resolve(), f"nothing mounted at {path}"


def test_broker_refuses_anonymous_clients() -> None:
    settings = [
        line.split(None, 1)
        for line in (DEPLOY / "mosquitto" / "mosquitto.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    options = {key: value.strip() for key, value in settings}
    assert options["allow_anonymous"] == "false"
    assert options["per_listener_settings"] == "false"  # the setting holds for every listener
    assert options["password_file"] and options["acl_file"]
    sensors = (DEPLOY / "mosquitto" / "demo-sensors.conf").read_text()
    assert "listener 1883 127.0.0.1" in sensors  # the demo's anonymous bus is loopback only


def test_env_file_is_ignored_by_git() -> None:
    git = shutil.which("git")
    assert git is not None
    for path in (".env", "deploy/.env"):
        result = subprocess.run(
            [git, "check-ignore", "-q", path], cwd=ROOT, capture_output=True, check=False
        )
        assert result.returncode == 0, f"{path} is not ignored by .gitignore"
    tracked = subprocess.run(
        [git, "ls-files", "--", ".env"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert tracked.stdout == ""


INIT = DEPLOY / "mosquitto" / "init.sh"


def run_init(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "KARKHANA_"))}
    return subprocess.run(
        ["sh", str(INIT)],
        env={**clean, "MQTT_PASSWD_FILE": str(tmp_path / "passwd"), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MQTT_EDGE_PASSWORD": "edge-password-1234"}, "MQTT_GATEWAY_PASSWORD is empty"),
        (
            {"MQTT_GATEWAY_PASSWORD": "", "MQTT_EDGE_PASSWORD": "edge-password-1234"},
            "MQTT_GATEWAY_PASSWORD is empty",
        ),
        (
            {"MQTT_GATEWAY_PASSWORD": "short", "MQTT_EDGE_PASSWORD": "edge-password-1234"},
            "shorter than 12",
        ),
        (
            {
                "MQTT_GATEWAY_PASSWORD": "same-password-1234",
                "MQTT_EDGE_PASSWORD": "same-password-1234",
            },
            "must differ",
        ),
        (
            {
                "KARKHANA_EDGE_AGENT_ID": "Bad/Id",
                "MQTT_GATEWAY_PASSWORD": "gw-password-12345",
                "MQTT_EDGE_PASSWORD": "edge-password-1234",
            },
            "is not [a-z0-9]",
        ),
    ],
)
def test_broker_init_refuses_missing_or_weak_passwords(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd is required (apt-get install mosquitto)")
    result = run_init(tmp_path, **{"KARKHANA_EDGE_AGENT_ID": "edge-a", **env})
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "passwd").exists()
