"""Secure OPC UA sessions: security policy and mode, server trust, user identity.

Every server here is a real in-process asyncua server; certificates are generated with
``cryptography`` into the test's tmp dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from asyncua import Node, Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_server import InternalServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge import EdgeAgent, EdgeConfig
from edge.config import OpcUaSourceConfig, load_edge_config
from edge.sources.base import DeadLetter
from edge.sources.opcua import OpcUaSource
from edge.sources.opcua_security import ClientOptions, SecurityRejected, build_client
from karkhana.errors import ConfigError
from karkhana.models import Sample
from karkhana.topics import EDGE_SAMPLES_FILTER
from tests.helpers.servers import Mosquitto, async_wait_until, free_port
from tests.integration.test_edge_agent import collecting

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T0 = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
LOOM = "lahore/weaving/line-1/loom-01"
SERVER_URI = "urn:karkhana:test:plc"
CLIENT_URI = "urn:karkhana:test:edge"
USERS = {"operator": "s3cret-pass"}


# --- certificates -------------------------------------------------------------------


@dataclass(frozen=True)
class CertPair:
    cert: Path  # DER
    key: Path  # PEM
    der: bytes

    @property
    def sha1(self) -> str:
        return hashlib.sha1(self.der).hexdigest().upper()


def make_cert(directory: Path, name: str, uri: str) -> CertPair:
    """A self-signed application instance certificate with ``uri`` in its subjectAltName."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(uri),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    cert_path = directory / f"{name}.der"
    key_path = directory / f"{name}-key.pem"
    cert_path.write_bytes(der)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return CertPair(cert_path, key_path, der)


# --- servers ------------------------------------------------------------------------


class PasswordUsers:
    """asyncua user manager: the users of USERS, nobody else."""

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is not None and USERS.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


@dataclass
class SecurePlc:
    endpoint: str
    cert: CertPair | None
    state: Node


@contextlib.asynccontextmanager
async def secure_plc(
    certs: Path | None,
    policies: list[ua.SecurityPolicyType],
    *,
    users: bool = False,
) -> AsyncIterator[SecurePlc]:
    """A PLC (ns=2 'urn:karkhana:sim', object loom-01, variable StateCode) offering only
    ``policies``; with a certificate when ``certs`` is given."""
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/karkhana/sim/"
    server = Server(user_manager=PasswordUsers()) if users else Server()  # type: ignore[arg-type]
    await server.init()
    server.set_endpoint(endpoint)
    await server.set_application_uri(SERVER_URI)
    pair = None
    if certs is not None:
        pair = make_cert(certs, "plc", SERVER_URI)
        await server.load_certificate(pair.cert)
        await server.load_private_key(pair.key)
    server.set_security_policy(policies)
    if users:
        server.set_security_IDs(["Username"])
    idx = await server.register_namespace("urn:karkhana:sim")
    obj = await server.nodes.objects.add_object(
        ua.NodeId("loom-01", idx), ua.QualifiedName("loom-01", idx)
    )
    state = await obj.add_variable(
        ua.NodeId("loom-01.StateCode", idx),
        ua.QualifiedName("StateCode", idx),
        ua.Variant(0, ua.VariantType.Int32),
    )
    await state.write_value(ua.DataValue(ua.Variant(1, ua.VariantType.Int32), SourceTimestamp=T0))
    await server.start()
    try:
        yield SecurePlc(endpoint, pair, state)
    finally:
        await server.stop()


SIGN_AND_ENCRYPT = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]


@dataclass
class ListSink:
    samples: list[Sample] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)

    async def put(self, sample: Sample) -> None:
        self.samples.append(sample)

    async def dead_letter(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def source_state_changed(self) -> None:
        pass


def source_config(endpoint: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "opcua",
        "name": "loom-01",
        "endpoint": endpoint,
        "publishing_interval_ms": 50,
        "nodes": [
            {"browse_path": "Objects/2:loom-01/2:StateCode", "asset": LOOM, "signal": "state"}
        ],
        **extra,
    }


def security(client: CertPair, trust_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "policy": "Basic256Sha256",
        "mode": "SignAndEncrypt",
        "certificate": str(client.cert),
        "private_key": str(client.key),
        "trust_dir": str(trust_dir),
        **extra,
    }


# --- tests --------------------------------------------------------------------------


async def test_sign_and_encrypt_session_with_trusted_server_delivers_values(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    client = make_cert(tmp_path / "edge-pki", "edge", CLIENT_URI)
    trust = tmp_path / "trusted"
    trust.mkdir()
    async with secure_plc(tmp_path / "plc-pki", SIGN_AND_ENCRYPT) as plc:
        assert plc.cert is not None
        # Trusted as a PEM file, as an integrator would copy it.
        pem = x509.load_der_x509_certificate(plc.cert.der).public_bytes(serialization.Encoding.PEM)
        (trust / "plc.pem").write_bytes(pem)
        cfg = EdgeConfig.model_validate(
            {
                "agent_id": "test-edge",
                "uplink": {"broker": mosquitto.url},
                "buffer": {"path": str(tmp_path / "b.sqlite"), "flush_interval_s": 0.05},
                "sources": [source_config(plc.endpoint, security=security(client, trust))],
            }
        )
        async with collecting(mosquitto, EDGE_SAMPLES_FILTER) as col, EdgeAgent(cfg) as agent:
            await async_wait_until(lambda: col.samples(LOOM, "state") == [(T0, 1)], 15, "first")
            await plc.state.write_value(
                ua.DataValue(
                    ua.Variant(3, ua.VariantType.Int32), SourceTimestamp=T0 + timedelta(seconds=5)
                )
            )
            await async_wait_until(
                lambda: len(col.samples(LOOM, "state")) == 2, 15, "the secured change"
            )
            assert col.samples(LOOM, "state") == [(T0, 1), (T0 + timedelta(seconds=5), 3)]
            assert agent.stats.sources["loom-01"].connected
    assert sorted(p.name for p in trust.iterdir()) == ["plc.pem"]  # nothing added


async def test_untrusted_server_certificate_is_refused_naming_thumbprint_and_trust_dir(
    tmp_path: Path,
) -> None:
    client = make_cert(tmp_path / "edge-pki", "edge", CLIENT_URI)
    trust = tmp_path / "trusted"
    trust.mkdir()
    async with secure_plc(tmp_path / "plc-pki", SIGN_AND_ENCRYPT) as plc:
        assert plc.cert is not None
        cfg = OpcUaSourceConfig.model_validate(
            source_config(plc.endpoint, security=security(client, trust))
        )
        with pytest.raises(SecurityRejected) as caught:
            await build_client(
                ClientOptions(endpoint=plc.endpoint, security=cfg.security, auth=None)
            )
        message = str(caught.value)
        assert plc.cert.sha1 in message
        assert str(trust) in message
        assert "not trusted" in message
        # The running source refuses too, keeps saying why and reads nothing.
        sink = ListSink()
        async with OpcUaSource(cfg, sink) as source:
            await async_wait_until(
                lambda: source.stats.connect_failures >= 2, 15, "two refused attempts"
            )
            assert source.last_error is not None and plc.cert.sha1 in source.last_error
            assert not source.stats.connected
        assert sink.samples == []
        assert list(trust.iterdir()) == []


async def test_trust_on_first_use_saves_the_server_certificate(tmp_path: Path) -> None:
    client = make_cert(tmp_path / "edge-pki", "edge", CLIENT_URI)
    trust = tmp_path / "trusted"  # does not exist yet
    async with secure_plc(tmp_path / "plc-pki", SIGN_AND_ENCRYPT) as plc:
        assert plc.cert is not None
        cfg = OpcUaSourceConfig.model_validate(
            source_config(plc.endpoint, security=security(client, trust, trust_on_first_use=True))
        )
        sink = ListSink()
        async with OpcUaSource(cfg, sink) as source:
            await async_wait_until(lambda: len(sink.samples) == 1, 15, "first value")
            assert source.stats.connected
        assert [(s.ts, s.value) for s in sink.samples] == [(T0, 1)]
        saved = list(trust.iterdir())
        assert [p.name for p in saved] == [f"{plc.cert.sha1}.der"]
        assert saved[0].read_bytes() == plc.cert.der


async def test_server_offering_only_none_is_refused_when_security_is_required(
    tmp_path: Path,
) -> None:
    client = make_cert(tmp_path / "edge-pki", "edge", CLIENT_URI)
    trust = tmp_path / "trusted"
    trust.mkdir()
    async with secure_plc(None, [ua.SecurityPolicyType.NoSecurity]) as plc:
        cfg = OpcUaSourceConfig.model_validate(
            source_config(plc.endpoint, security=security(client, trust))
        )
        with pytest.raises(SecurityRejected, match="offers only security None"):
            await build_client(ClientOptions(endpoint=plc.endpoint, security=cfg.security))
        sink = ListSink()
        async with OpcUaSource(cfg, sink) as source:
            await async_wait_until(lambda: source.stats.connect_failures >= 1, 15, "refusal")
            assert source.last_error is not None
            assert "offers only security None" in source.last_error
            assert "Basic256Sha256/SignAndEncrypt" in source.last_error
        assert sink.samples == []


@pytest.mark.parametrize(("password", "accepted"), [("s3cret-pass", True), ("wrong", False)])
async def test_username_and_password(tmp_path: Path, password: str, accepted: bool) -> None:
    client = make_cert(tmp_path / "edge-pki", "edge", CLIENT_URI)
    trust = tmp_path / "trusted"
    password_file = tmp_path / "password.txt"
    password_file.write_text(password + "\n")
    async with secure_plc(tmp_path / "plc-pki", SIGN_AND_ENCRYPT, users=True) as plc:
        assert plc.cert is not None
        trust.mkdir()
        (trust / "plc.der").write_bytes(plc.cert.der)
        cfg = OpcUaSourceConfig.model_validate(
            source_config(
                plc.endpoint,
                security=security(client, trust),
                auth={"username": "operator", "password_file": str(password_file)},
            )
        )
        sink = ListSink()
        async with OpcUaSource(cfg, sink) as source:
            if accepted:
                await async_wait_until(lambda: len(sink.samples) == 1, 15, "first value")
                assert source.stats.connected
            else:
                await async_wait_until(
                    lambda: source.stats.connect_failures >= 2, 15, "refused logins"
                )
                assert source.last_error is not None
                assert "BadUserAccessDenied" in source.last_error
                assert source.stats.connections == 0
        assert [(s.ts, s.value) for s in sink.samples] == ([(T0, 1)] if accepted else [])


# --- config errors ------------------------------------------------------------------


def _edge_yaml(tmp_path: Path, source: dict[str, Any]) -> Path:
    path = tmp_path / "edge.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "agent_id": "edge-1",
                "uplink": {"broker": "mqtt://127.0.0.1:1883"},
                "sources": [
                    {"type": "opcua", "name": "plc", "endpoint": "opc.tcp://h:4840", **source}
                ],
            }
        )
    )
    return path


NODE = {"node_id": "ns=2;s=x", "asset": LOOM, "signal": "state"}


@pytest.mark.parametrize(
    ("source", "key_path", "problem"),
    [
        ({"nodes": [{"asset": LOOM, "signal": "state"}]}, "sources[0].nodes[0]", "exactly one of"),
        (
            {"nodes": [{**NODE, "browse_path": "Objects/2:x"}]},
            "sources[0].nodes[0]",
            "exactly one of",
        ),
        (
            {"nodes": [{"browse_path": "Objects//2:x", "asset": LOOM, "signal": "s"}]},
            "sources[0].nodes[0].browse_path",
            "empty element",
        ),
        (
            {"nodes": [NODE], "security": {"policy": "Basic256Sha256", "mode": "None"}},
            "sources[0].security",
            "both be None or both be set",
        ),
        (
            {"nodes": [NODE], "security": {"policy": "Basic256", "mode": "Sign"}},
            "sources[0].security.policy",
            "Basic256Sha256",
        ),
        (
            {"nodes": [NODE], "security": {"policy": "Basic256Sha256", "mode": "Sign"}},
            "sources[0].security",
            "certificate is required",
        ),
        (
            {
                "nodes": [NODE],
                "security": {
                    "policy": "Basic256Sha256",
                    "mode": "Sign",
                    "certificate": "/nonexistent/c.der",
                    "private_key": "/nonexistent/k.pem",
                    "trust_dir": "/nonexistent",
                },
            },
            "sources[0].security",
            "certificate: no such file '/nonexistent/c.der'",
        ),
        ({"nodes": [NODE], "auth": {"username": "op"}}, "sources[0].auth", "exactly one of"),
        ({"nodes": [NODE], "auth": {"password": "x"}}, "sources[0].auth", "without username"),
        ({"nodes": [NODE], "mode": "push"}, "sources[0].mode", "subscription"),
        ({"nodes": [NODE], "keepalive_ms": 10}, "sources[0].keepalive_ms", "200"),
    ],
)
def test_bad_opcua_settings_name_the_key(
    tmp_path: Path, source: dict[str, Any], key_path: str, problem: str
) -> None:
    path = _edge_yaml(tmp_path, source)
    with pytest.raises(ConfigError) as caught:
        load_edge_config(path)
    assert caught.value.source == str(path)
    assert caught.value.key_path == key_path
    assert problem in caught.value.problem


def test_browse_path_forms_are_equivalent(tmp_path: Path) -> None:
    as_text = {"browse_path": "Objects/2:loom-01/2:StateCode", "asset": LOOM, "signal": "s"}
    as_list = {**as_text, "browse_path": ["0:Objects", "2:loom-01", "2:StateCode"]}
    for node in (as_text, as_list):
        (source,) = load_edge_config(_edge_yaml(tmp_path, {"nodes": [node]})).sources
        assert source.nodes[0].browse_path == ["0:Objects", "2:loom-01", "2:StateCode"]  # type: ignore[union-attr]
