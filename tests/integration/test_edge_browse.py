"""``karkhana edge browse`` as a process against an in-process asyncua server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from asyncua import Server, ua

from edge.browse import snake_case
from edge.config import load_edge_config
from tests.helpers.servers import free_port
from tests.integration.test_edge_opcua_security import (
    CLIENT_URI,
    SIGN_AND_ENCRYPT,
    USERS,
    make_cert,
    secure_plc,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

KARKHANA = Path(sys.executable).parent / "karkhana"
LOOM = "lahore/weaving/line-1/loom-01"


@contextlib.asynccontextmanager
async def loom_server() -> AsyncIterator[str]:
    """Objects/2:loom-01 with StateCode (Int32 3), Temperature (Double 21.5) and a folder
    2:Drive holding SpeedRPM (Float 1200.0) and MotorTemperature (Double 48.25)."""
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/karkhana/sim/"
    server = Server()
    await server.init()
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace("urn:karkhana:sim")
    loom = await server.nodes.objects.add_object(
        ua.NodeId("loom-01", idx), ua.QualifiedName("loom-01", idx)
    )
    await loom.add_variable(
        ua.NodeId("loom-01.StateCode", idx),
        ua.QualifiedName("StateCode", idx),
        ua.Variant(3, ua.VariantType.Int32),
    )
    await loom.add_variable(
        ua.NodeId("loom-01.Temperature", idx),
        ua.QualifiedName("Temperature", idx),
        ua.Variant(21.5, ua.VariantType.Double),
    )
    drive = await loom.add_folder(ua.NodeId("loom-01.Drive", idx), ua.QualifiedName("Drive", idx))
    await drive.add_variable(
        ua.NodeId("loom-01.Drive.SpeedRPM", idx),
        ua.QualifiedName("SpeedRPM", idx),
        ua.Variant(1200.0, ua.VariantType.Float),
    )
    await drive.add_variable(
        ua.NodeId(4711, idx),
        ua.QualifiedName("MotorTemperature", idx),
        ua.Variant(48.25, ua.VariantType.Double),
    )
    await server.start()
    try:
        yield endpoint
    finally:
        await server.stop()


async def karkhana(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(KARKHANA),
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_browse_prints_the_tree_with_ids_types_and_values(tmp_path: Path) -> None:
    async with loom_server() as endpoint:
        code, out, err = await karkhana("edge", "browse", endpoint, "--depth", "3", cwd=tmp_path)
    assert code == 0, err
    lines = out.splitlines()

    def line_of(text: str) -> str:
        found = [line for line in lines if text in line]
        assert len(found) == 1, (text, out)
        return found[0]

    assert "ns=2;s=loom-01" in line_of("2:loom-01 ")
    state = line_of("2:StateCode")
    assert "ns=2;s=loom-01.StateCode" in state and "Int32 = 3" in state
    assert "Double = 21.5" in line_of("2:Temperature ")
    assert "Float = 1200.0" in line_of("2:SpeedRPM")
    motor = line_of("2:MotorTemperature")
    assert "ns=2;i=4711" in motor and "Double = 48.25" in motor
    # Tree structure: the drive's variables are indented below the drive folder.
    indent = {name: line_of(name).index(name) for name in ("2:loom-01 ", "2:Drive", "2:SpeedRPM")}
    assert indent["2:loom-01 "] < indent["2:Drive"] < indent["2:SpeedRPM"]
    assert "2:Server " not in out  # the server's own object is left out


async def test_browse_filter_and_depth(tmp_path: Path) -> None:
    async with loom_server() as endpoint:
        code, out, err = await karkhana(
            "edge", "browse", endpoint, "--filter", "temperature", cwd=tmp_path
        )
        assert code == 0, err
        assert "2:Temperature " in out and "2:MotorTemperature" in out
        assert "2:StateCode" not in out and "2:SpeedRPM" not in out
        code, out, err = await karkhana("edge", "browse", endpoint, "--depth", "1", cwd=tmp_path)
    assert code == 0, err
    assert "2:loom-01" in out and "2:StateCode" not in out


async def test_browse_writes_a_config_the_agent_accepts(tmp_path: Path) -> None:
    target = tmp_path / "edge.yaml"
    async with loom_server() as endpoint:
        code, out, err = await karkhana(
            "edge",
            "browse",
            endpoint,
            "--write-config",
            str(target),
            "--asset",
            LOOM,
            "--name",
            "loom-01",
            cwd=tmp_path,
        )
        assert code == 0, err
        assert "wrote source 'loom-01' (4 nodes)" in out
        cfg = load_edge_config(target)
        (source,) = cfg.sources
        assert source.type == "opcua" and source.endpoint == endpoint
        nodes = sorted((n.node_id, n.asset, n.signal) for n in source.nodes)  # type: ignore[union-attr]
        assert nodes == sorted(
            [
                ("ns=2;s=loom-01.StateCode", LOOM, "state_code"),
                ("ns=2;s=loom-01.Temperature", LOOM, "temperature"),
                ("ns=2;s=loom-01.Drive.SpeedRPM", LOOM, "speed_rpm"),
                ("ns=2;i=4711", LOOM, "motor_temperature"),
            ]
        )
        # A second source goes into the same file; a name used twice is refused.
        code, _, err = await karkhana(
            "edge",
            "browse",
            endpoint,
            "--filter",
            "Speed",
            "--write-config",
            str(target),
            "--asset",
            "lahore/weaving/line-1/loom-02",
            "--name",
            "loom-02",
            cwd=tmp_path,
        )
        assert code == 0, err
        code, _, err = await karkhana(
            "edge",
            "browse",
            endpoint,
            "--write-config",
            str(target),
            "--asset",
            LOOM,
            "--name",
            "loom-01",
            cwd=tmp_path,
        )
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {target}: sources: a source named 'loom-01' exists already"
    ]
    cfg = load_edge_config(target)
    assert [s.name for s in cfg.sources] == ["loom-01", "loom-02"]
    second = cfg.sources[1]
    assert [(n.node_id, n.signal) for n in second.nodes] == [  # type: ignore[union-attr]
        ("ns=2;s=loom-01.Drive.SpeedRPM", "speed_rpm")
    ]
    assert yaml.safe_load(target.read_text())["agent_id"] == "edge-1"


async def test_browse_refuses_a_none_only_server_when_security_is_asked(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    cert = tmp_path / "cert.der"
    key.write_text("not used: refused before the key is loaded")
    cert.write_text("not used")
    async with loom_server() as endpoint:
        code, _, err = await karkhana(
            "edge",
            "browse",
            endpoint,
            "--policy",
            "Basic256Sha256",
            "--mode",
            "SignAndEncrypt",
            "--certificate",
            str(cert),
            "--private-key",
            str(key),
            "--trust-dir",
            str(tmp_path),
            cwd=tmp_path,
        )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "offers only security None" in lines[0], err


@pytest.mark.parametrize(
    ("name", "signal"),
    [
        ("StateCode", "state_code"),
        ("SpeedRPM", "speed_rpm"),
        ("PV.Temp 1", "pv_temp_1"),
        ("HTTPServer", "http_server"),
        ("1stStage", "s_1st_stage"),
    ],
)
def test_snake_case(name: str, signal: str) -> None:
    assert snake_case(name) == signal


async def test_browse_a_secure_server_and_write_its_security_into_the_config(
    tmp_path: Path,
) -> None:
    client = make_cert(tmp_path / "edge-pki", "edge", CLIENT_URI)
    trust = tmp_path / "trusted"
    trust.mkdir()
    password_file = tmp_path / "password.txt"
    password_file.write_text(USERS["operator"] + "\n")
    target = tmp_path / "edge.yaml"
    async with secure_plc(tmp_path / "plc-pki", SIGN_AND_ENCRYPT, users=True) as plc:
        assert plc.cert is not None
        secure = [
            "--policy",
            "Basic256Sha256",
            "--mode",
            "SignAndEncrypt",
            "--certificate",
            str(client.cert),
            "--private-key",
            str(client.key),
            "--trust-dir",
            str(trust),
            "--username",
            "operator",
            "--password-file",
            str(password_file),
        ]
        code, _, err = await karkhana("edge", "browse", plc.endpoint, *secure, cwd=tmp_path)
        assert code == 1
        assert plc.cert.sha1 in err and str(trust) in err and "not trusted" in err
        code, out, err = await karkhana(
            "edge",
            "browse",
            plc.endpoint,
            *secure,
            "--trust-on-first-use",
            "--write-config",
            str(target),
            "--asset",
            LOOM,
            cwd=tmp_path,
        )
    assert code == 0, err
    assert "ns=2;s=loom-01.StateCode" in out and "Int32 = 1" in out
    assert [p.name for p in trust.iterdir()] == [f"{plc.cert.sha1}.der"]
    (source,) = load_edge_config(target).sources
    assert source.security.policy == "Basic256Sha256"  # type: ignore[union-attr]
    assert source.security.mode == "SignAndEncrypt"  # type: ignore[union-attr]
    assert source.security.certificate == client.cert  # type: ignore[union-attr]
    assert source.security.trust_dir == trust  # type: ignore[union-attr]
    assert source.auth is not None and source.auth.username == "operator"  # type: ignore[union-attr]
    assert source.auth.password_file == password_file  # type: ignore[union-attr]
    assert [(n.node_id, n.signal) for n in source.nodes] == [  # type: ignore[union-attr]
        ("ns=2;s=loom-01.StateCode", "state_code")
    ]
