"""Secure OPC UA sessions: security policy and mode, server trust, user identity.

Every server here is a real in-process asyncua server; certificates are generated once per
module with ``cryptography``. What the server saw (channel policy and mode, session user)
is read from the server's own connection state, not from the agent.
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
from asyncua.server.user_managers import CertificateUserManager
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge import EdgeAgent, EdgeConfig
from edge.config import OpcUaSourceConfig, load_edge_config
from edge.sources.base import DeadLetter
from edge.sources.opcua import OpcUaSource
from edge.sources.opcua_security import (
    ClientOptions,
    IdentityRejected,
    SecurityRejected,
    build_client,
    connect_client,
)
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
CERT_USER = "edge-reader"  # the name the server gives the known user certificate


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


@dataclass(frozen=True)
class Pki:
    """The certificates of this module: the agent's application instance certificate, the
    PLC's, a user certificate the PLC knows and one it does not."""

    edge: CertPair
    plc: CertPair
    user: CertPair
    stranger: CertPair


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    return Pki(
        edge=make_cert(base / "edge", "edge", CLIENT_URI),
        plc=make_cert(base / "plc", "plc", SERVER_URI),
        user=make_cert(base / "users", "edge-reader", "urn:karkhana:test:user:edge-reader"),
        stranger=make_cert(base / "users", "stranger", "urn:karkhana:test:user:stranger"),
    )


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


@dataclass(frozen=True)
class Channel:
    """A secured session as the server sees it."""

    policy: str  # the policy URI's fragment, e.g. "Basic256Sha256"
    mode: str  # "Sign" or "SignAndEncrypt"
    user: str | None


@dataclass
class SecurePlc:
    endpoint: str
    cert: CertPair | None
    state: Node
    server: Server

    def sessions(self) -> list[Channel]:
        """The activated sessions of the clients connected right now."""
        assert self.server.bserver is not None
        found = []
        for protocol in self.server.bserver.clients:
            processor = protocol.processor
            session = processor.session if processor is not None else None
            if processor is None or session is None or session.user is None:
                continue
            policy = processor._connection.security_policy
            found.append(
                Channel(policy.URI.rsplit("#", 1)[-1], policy.Mode.name, session.user.name)
            )
        return found


@contextlib.asynccontextmanager
async def secure_plc(
    cert: CertPair | Path | None,
    policies: list[ua.SecurityPolicyType],
    *,
    users: PasswordUsers | CertificateUserManager | bool | None = None,
) -> AsyncIterator[SecurePlc]:
    """A PLC (ns=2 'urn:karkhana:sim', object loom-01, variable StateCode) offering only
    ``policies``, with ``cert`` as its certificate (a directory: a new one made there);
    with ``users``, only their kind of identity token (user name or certificate) is
    accepted, and only for them (``True``: the password users of USERS)."""
    if isinstance(cert, Path):
        cert = make_cert(cert, "plc", SERVER_URI)
    if users is True:
        users = PasswordUsers()
    elif users is False:
        users = None
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/karkhana/sim/"
    server = Server(user_manager=users) if users is not None else Server()  # type: ignore[arg-type]
    await server.init()
    server.set_endpoint(endpoint)
    await server.set_application_uri(SERVER_URI)
    if cert is not None:
        await server.load_certificate(cert.cert)
        await server.load_private_key(cert.key)
    server.set_security_policy(policies)
    if isinstance(users, PasswordUsers):
        server.set_identity_tokens([ua.UserNameIdentityToken])
    elif isinstance(users, CertificateUserManager):
        server.set_identity_tokens([ua.X509IdentityToken])
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
        yield SecurePlc(endpoint, cert, state, server)
    finally:
        await server.stop()


async def certificate_users(known: CertPair) -> CertificateUserManager:
    """asyncua's user manager that accepts exactly one user certificate, as CERT_USER."""
    users = CertificateUserManager()
    await users.add_user(known.cert, name=CERT_USER, format=".der")
    return users


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

    def ticket(self) -> int:
        return len(self.samples)

    async def wait_stored(self, ticket: int) -> None:
        pass  # a list holds what it is given at once


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


def trusting(tmp_path: Path, plc: CertPair) -> Path:
    """A trust dir holding the PLC's certificate (DER, as copied from the PLC)."""
    trust = tmp_path / "trusted"
    trust.mkdir()
    (trust / "plc.der").write_bytes(plc.der)
    return trust


async def write_state(plc: SecurePlc, value: int, ts: datetime) -> None:
    await plc.state.write_value(
        ua.DataValue(ua.Variant(value, ua.VariantType.Int32), SourceTimestamp=ts)
    )


async def test_sign_and_encrypt_session_with_trusted_server_delivers_values(
    mosquitto: Mosquitto, tmp_path: Path, pki: Pki
) -> None:
    trust = tmp_path / "trusted"
    trust.mkdir()
    async with secure_plc(pki.plc, SIGN_AND_ENCRYPT) as plc:
        # Trusted as a PEM file, as an integrator would copy it.
        pem = x509.load_der_x509_certificate(pki.plc.der).public_bytes(serialization.Encoding.PEM)
        (trust / "plc.pem").write_bytes(pem)
        cfg = EdgeConfig.model_validate(
            {
                "agent_id": "test-edge",
                "uplink": {"broker": mosquitto.url},
                "buffer": {"path": str(tmp_path / "b.sqlite"), "flush_interval_s": 0.05},
                "sources": [source_config(plc.endpoint, security=security(pki.edge, trust))],
            }
        )
        async with collecting(mosquitto, EDGE_SAMPLES_FILTER) as col, EdgeAgent(cfg) as agent:
            await async_wait_until(lambda: col.samples(LOOM, "state") == [(T0, 1)], 15, "first")
            await write_state(plc, 3, T0 + timedelta(seconds=5))
            await async_wait_until(
                lambda: len(col.samples(LOOM, "state")) == 2, 15, "the secured change"
            )
            assert col.samples(LOOM, "state") == [(T0, 1), (T0 + timedelta(seconds=5), 3)]
            assert agent.stats.sources["loom-01"].connected
    assert sorted(p.name for p in trust.iterdir()) == ["plc.pem"]  # nothing added


@pytest.mark.parametrize(
    ("offered", "policy", "mode"),
    [
        # The server offers both modes of the policy: the agent must take the one configured.
        (
            [
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ua.SecurityPolicyType.Basic256Sha256_Sign,
            ],
            "Basic256Sha256",
            "Sign",
        ),
        (
            [
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
            ],
            "Aes128_Sha256_RsaOaep",
            "SignAndEncrypt",
        ),
    ],
    ids=["Basic256Sha256-Sign", "Aes128_Sha256_RsaOaep-SignAndEncrypt"],
)
async def test_session_uses_the_configured_policy_and_mode(
    tmp_path: Path, pki: Pki, offered: list[ua.SecurityPolicyType], policy: str, mode: str
) -> None:
    async with secure_plc(pki.plc, offered) as plc:
        cfg = OpcUaSourceConfig.model_validate(
            source_config(
                plc.endpoint,
                security=security(pki.edge, trusting(tmp_path, pki.plc), policy=policy, mode=mode),
            )
        )
        sink = ListSink()
        async with OpcUaSource(cfg, sink) as source:
            await async_wait_until(lambda: len(sink.samples) == 1, 15, "first value")
            await write_state(plc, 3, T0 + timedelta(seconds=5))
            await async_wait_until(lambda: len(sink.samples) == 2, 15, "the change")
            assert source.stats.connected
            assert [(c.policy, c.mode) for c in plc.sessions()] == [(policy, mode)]
        assert [(s.ts, s.value) for s in sink.samples] == [
            (T0, 1),
            (T0 + timedelta(seconds=5), 3),
        ]


async def test_a_mode_the_server_does_not_offer_is_refused_listing_what_it_offers(
    tmp_path: Path, pki: Pki
) -> None:
    async with secure_plc(pki.plc, SIGN_AND_ENCRYPT) as plc:
        cfg = OpcUaSourceConfig.model_validate(
            source_config(
                plc.endpoint, security=security(pki.edge, trusting(tmp_path, pki.plc), mode="Sign")
            )
        )
        with pytest.raises(SecurityRejected) as caught:
            await build_client(ClientOptions(endpoint=plc.endpoint, security=cfg.security))
        assert "does not offer security Basic256Sha256/Sign" in str(caught.value)
        assert "Basic256Sha256/SignAndEncrypt" in str(caught.value)
        assert plc.sessions() == []


async def test_untrusted_server_certificate_is_refused_naming_thumbprint_and_trust_dir(
    tmp_path: Path, pki: Pki
) -> None:
    trust = tmp_path / "trusted"
    trust.mkdir()
    async with secure_plc(pki.plc, SIGN_AND_ENCRYPT) as plc:
        cfg = OpcUaSourceConfig.model_validate(
            source_config(plc.endpoint, security=security(pki.edge, trust))
        )
        with pytest.raises(SecurityRejected) as caught:
            await build_client(
                ClientOptions(endpoint=plc.endpoint, security=cfg.security, auth=None)
            )
        message = str(caught.value)
        assert pki.plc.sha1 in message
        assert str(trust) in message
        assert "not trusted" in message
        # The running source refuses too, keeps saying why and reads nothing.
        sink = ListSink()
        async with OpcUaSource(cfg, sink) as source:
            await async_wait_until(
                lambda: source.stats.connect_failures >= 2, 15, "two refused attempts"
            )
            assert source.last_error is not None and pki.plc.sha1 in source.last_error
            assert not source.stats.connected
        assert sink.samples == []
        assert list(trust.iterdir()) == []


async def test_trust_on_first_use_saves_the_server_certificate(tmp_path: Path, pki: Pki) -> None:
    trust = tmp_path / "trusted"  # does not exist yet
    async with secure_plc(pki.plc, SIGN_AND_ENCRYPT) as plc:
        cfg = OpcUaSourceConfig.model_validate(
            source_config(plc.endpoint, security=security(pki.edge, trust, trust_on_first_use=True))
        )
        sink = ListSink()
        async with OpcUaSource(cfg, sink) as source:
            await async_wait_until(lambda: len(sink.samples) == 1, 15, "first value")
            assert source.stats.connected
        assert [(s.ts, s.value) for s in sink.samples] == [(T0, 1)]
        saved = list(trust.iterdir())
        assert [p.name for p in saved] == [f"{pki.plc.sha1}.der"]
        assert saved[0].read_bytes() == pki.plc.der


async def test_server_offering_only_none_is_refused_when_security_is_required(
    tmp_path: Path, pki: Pki
) -> None:
    trust = tmp_path / "trusted"
    trust.mkdir()
    async with secure_plc(None, [ua.SecurityPolicyType.NoSecurity]) as plc:
        cfg = OpcUaSourceConfig.model_validate(
            source_config(plc.endpoint, security=security(pki.edge, trust))
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
async def test_username_and_password(
    tmp_path: Path, pki: Pki, password: str, accepted: bool
) -> None:
    password_file = tmp_path / "password.txt"
    password_file.write_text(password + "\n")
    async with secure_plc(pki.plc, SIGN_AND_ENCRYPT, users=PasswordUsers()) as plc:
        cfg = OpcUaSourceConfig.model_validate(
            source_config(
                plc.endpoint,
                security=security(pki.edge, trusting(tmp_path, pki.plc)),
                auth={"username": "operator", "password_file": str(password_file)},
            )
        )
        sink = ListSink()
        async with OpcUaSource(cfg, sink) as source:
            if accepted:
                await async_wait_until(lambda: len(sink.samples) == 1, 15, "first value")
                assert source.stats.connected
                assert [c.user for c in plc.sessions()] == ["operator"]
            else:
                await async_wait_until(
                    lambda: source.stats.connect_failures >= 2, 15, "refused logins"
                )
                assert source.last_error is not None
                assert "BadUserAccessDenied" in source.last_error
                assert "user 'operator'" in source.last_error
                assert source.stats.connections == 0
        assert [(s.ts, s.value) for s in sink.samples] == ([(T0, 1)] if accepted else [])


async def test_user_certificate_known_to_the_server_is_the_session_user(
    tmp_path: Path, pki: Pki
) -> None:
    users = await certificate_users(pki.user)
    async with secure_plc(pki.plc, SIGN_AND_ENCRYPT, users=users) as plc:
        cfg = OpcUaSourceConfig.model_validate(
            source_config(
                plc.endpoint,
                security=security(pki.edge, trusting(tmp_path, pki.plc)),
                auth={"certificate": str(pki.user.cert), "private_key": str(pki.user.key)},
            )
        )
        sink = ListSink()
        async with OpcUaSource(cfg, sink) as source:
            await async_wait_until(lambda: len(sink.samples) == 1, 15, "first value")
            await write_state(plc, 2, T0 + timedelta(seconds=1))
            await async_wait_until(lambda: len(sink.samples) == 2, 15, "the change")
            assert source.stats.connected
            assert plc.sessions() == [Channel("Basic256Sha256", "SignAndEncrypt", CERT_USER)]
        assert [(s.ts, s.value) for s in sink.samples] == [(T0, 1), (T0 + timedelta(seconds=1), 2)]


async def test_user_certificate_unknown_to_the_server_is_refused_naming_it(
    tmp_path: Path, pki: Pki
) -> None:
    users = await certificate_users(pki.user)
    async with secure_plc(pki.plc, SIGN_AND_ENCRYPT, users=users) as plc:
        cfg = OpcUaSourceConfig.model_validate(
            source_config(
                plc.endpoint,
                security=security(pki.edge, trusting(tmp_path, pki.plc)),
                auth={"certificate": str(pki.stranger.cert), "private_key": str(pki.stranger.key)},
            )
        )
        sink = ListSink()
        async with OpcUaSource(cfg, sink) as source:
            await async_wait_until(lambda: source.stats.connect_failures >= 2, 15, "refusals")
            error = source.last_error
            assert error is not None
            assert f"{plc.endpoint} refused user certificate {pki.stranger.cert}" in error
            assert "CN=stranger" in error and pki.stranger.sha1 in error
            assert "BadUserAccessDenied" in error
            assert source.stats.connections == 0 and not source.stats.connected
        assert sink.samples == []
        assert plc.sessions() == []
        # The same refusal, as the exception a caller of the client helpers gets.
        options = ClientOptions(endpoint=plc.endpoint, security=cfg.security, auth=cfg.auth)
        client = await build_client(options)
        with pytest.raises(IdentityRejected, match="BadUserAccessDenied"):
            await connect_client(client, options)


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
