"""Opening an OPC UA client with the configured security, trust and user identity.

The server certificate is checked *before* the secure channel is used for anything: the
endpoints are listed over an unsecured discovery channel, the endpoint with the configured
policy and mode is picked, and its certificate must be in ``trust_dir`` (compared by
SHA-1 thumbprint, as OPC UA does) — or, with ``trust_on_first_use``, it is saved there.
Only then are the client certificate, the server certificate and the user identity handed
to asyncua. A server that refuses the user identity (user name and password, or a user
certificate) is reported naming that identity. Browse paths are resolved here too, on
every (re)connect.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from karkhana.errors import ConnectionFailed

if TYPE_CHECKING:
    from asyncua import Client, Node

    from edge.config import OpcUaAuth, OpcUaSecurity

log = logging.getLogger(__name__)

CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")
_QUALIFIED_NAME_RE = re.compile(r"^(?:(\d+):)?(.+)$")


class SecurityRejected(ConnectionFailed):
    """The server does not offer the required security, or its certificate is not trusted."""


class IdentityRejected(SecurityRejected):
    """The server refused the configured user identity when activating the session."""


# ActivateSession results that mean "not this user" rather than "try again later".
IDENTITY_REFUSALS = frozenset(
    {
        "BadUserAccessDenied",
        "BadIdentityTokenInvalid",
        "BadIdentityTokenRejected",
        "BadUserSignatureInvalid",
    }
)


# --- browse paths ---------------------------------------------------------------------


def parse_browse_path(value: str | Sequence[str]) -> list[str]:
    """``"Objects/2:loom-01/2:StateCode"`` or a list of qualified names -> ``["0:Objects",
    "2:loom-01", "2:StateCode"]`` (a name without ``ns:`` is in namespace 0)."""
    if isinstance(value, str):
        parts = value.strip("/").split("/")
    elif isinstance(value, Sequence) and all(isinstance(p, str) for p in value):
        parts = list(value)
    else:
        raise ValueError("a browse path is a string 'Objects/2:Name/...' or a list of names")
    if not parts or any(not p.strip() for p in parts):
        raise ValueError(f"browse path {value!r} has an empty element")
    names = []
    for part in parts:
        match = _QUALIFIED_NAME_RE.match(part.strip())
        assert match is not None  # the pattern matches every non-empty string
        ns, name = match.group(1), match.group(2)
        names.append(f"{int(ns) if ns else 0}:{name}")
    return names


async def resolve_browse_path(client: Client, path: Sequence[str]) -> Node:
    """The node at ``path`` below the Root folder; ConnectionFailed naming the path if not
    found (asyncua raises BadNoMatch)."""
    from asyncua import ua

    try:
        return await client.nodes.root.get_child(list(path))
    except ua.UaStatusCodeError as exc:
        raise ConnectionFailed(f"browse path {'/'.join(path)!r} not found: {exc}") from exc


# --- certificates ---------------------------------------------------------------------


def thumbprint(cert: x509.Certificate) -> str:
    """The OPC UA thumbprint of a certificate: SHA-1 of its DER form, upper-case hex."""
    return hashlib.sha1(cert.public_bytes(Encoding.DER), usedforsecurity=False).hexdigest().upper()


def load_certificate_file(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def application_uri_of(cert: x509.Certificate) -> str | None:
    """The first URI in the certificate's subjectAltName (the OPC UA application URI)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


class TrustDir:
    """Server certificates trusted by this agent: the DER/PEM files of one directory,
    re-read on every check so a certificate copied in takes effect at the next connect."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def thumbprints(self) -> set[str]:
        found: set[str] = set()
        if not self.path.is_dir():
            return found
        for file in sorted(self.path.iterdir()):
            if file.suffix.lower() not in CERT_SUFFIXES or not file.is_file():
                continue
            try:
                found.add(thumbprint(load_certificate_file(file)))
            except ValueError as exc:
                log.warning("trust dir %s: %s is not a certificate: %s", self.path, file.name, exc)
        return found

    def is_trusted(self, cert: x509.Certificate) -> bool:
        return thumbprint(cert) in self.thumbprints()

    def add(self, cert: x509.Certificate) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / f"{thumbprint(cert)}.der"
        target.write_bytes(cert.public_bytes(Encoding.DER))
        return target


# --- the client ---------------------------------------------------------------------


@dataclass(frozen=True)
class ClientOptions:
    """Everything needed to open a session (from a source config or browse options)."""

    endpoint: str
    security: OpcUaSecurity
    auth: OpcUaAuth | None = None
    timeout_s: float = 4.0
    keepalive_s: float = 5.0
    session_timeout_ms: float = 60_000


def _policy_class(name: str) -> Any:
    from asyncua.crypto import security_policies

    classes = {
        "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
        "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    }
    return classes[name]


async def _server_certificate(options: ClientOptions, policy_uri: str, mode: Any) -> bytes:
    """List the endpoints over an unsecured channel; the DER certificate of the one with
    the wanted policy and mode. SecurityRejected if the server does not offer it."""
    from asyncua import Client, ua

    probe = Client(url=options.endpoint, timeout=options.timeout_s)
    endpoints = await probe.connect_and_get_server_endpoints()
    offered = [(ep.SecurityPolicyUri.rsplit("#", 1)[-1], ep.SecurityMode.name) for ep in endpoints]
    for ep in endpoints:
        if ep.SecurityPolicyUri == policy_uri and ep.SecurityMode == mode:
            if not ep.ServerCertificate:
                raise SecurityRejected(
                    f"{options.endpoint}: the secure endpoint has no certificate"
                )
            return bytes(ep.ServerCertificate)
    wanted = f"{options.security.policy}/{options.security.mode}"
    if all(m == ua.MessageSecurityMode.None_ for m in (ep.SecurityMode for ep in endpoints)):
        raise SecurityRejected(
            f"{options.endpoint} offers only security None; refusing to connect because "
            f"security {wanted} is required"
        )
    listed = ", ".join(f"{p}/{m}" for p, m in sorted(set(offered)))
    raise SecurityRejected(f"{options.endpoint} does not offer security {wanted} (offers {listed})")


def check_server_certificate(
    cert: x509.Certificate, security: OpcUaSecurity, endpoint: str
) -> None:
    """Accept a trusted certificate; save an unknown one under trust on first use; refuse
    it otherwise with the thumbprint and the trust directory in the message."""
    assert security.trust_dir is not None
    trust = TrustDir(security.trust_dir)
    if trust.is_trusted(cert):
        return
    if security.trust_on_first_use:
        saved = trust.add(cert)
        log.warning(
            "opcua %s: trusting server certificate %s on first use (saved as %s)",
            endpoint,
            thumbprint(cert),
            saved,
        )
        return
    raise SecurityRejected(
        f"{endpoint}: server certificate {thumbprint(cert)} "
        f"({cert.subject.rfc4514_string()}) is not trusted; copy it into trust dir "
        f"{security.trust_dir} to trust it"
    )


async def build_client(options: ClientOptions) -> Client:
    """A configured, not yet connected asyncua client (security, trust, identity).

    Raises SecurityRejected when the server cannot satisfy the security requirements; other
    failures to reach the server surface as the library's own exceptions.
    """
    from asyncua import Client, ua

    client = Client(
        url=options.endpoint,
        timeout=options.timeout_s,
        watchdog_intervall=options.keepalive_s,
    )
    client.session_timeout = int(options.session_timeout_ms)
    security = options.security
    if security.policy != "None":
        assert security.certificate is not None and security.private_key is not None
        policy = _policy_class(security.policy)
        mode = getattr(ua.MessageSecurityMode, security.mode)
        der = await _server_certificate(options, policy.URI, mode)
        server_cert = x509.load_der_x509_certificate(der)
        check_server_certificate(server_cert, security, options.endpoint)
        own_uri = application_uri_of(load_certificate_file(security.certificate))
        if own_uri is None:
            raise SecurityRejected(
                f"client certificate {security.certificate} has no application URI "
                "(subjectAltName URI), which OPC UA requires"
            )
        client.application_uri = own_uri
        await client.set_security(
            policy,
            str(security.certificate),
            str(security.private_key),
            server_certificate=der,
            mode=mode,
        )
    auth = options.auth
    if auth is not None and auth.username is not None:
        client.set_user(auth.username)
        password = auth.resolved_password()
        if password is not None:
            client.set_password(password)
    elif auth is not None:
        assert auth.certificate is not None and auth.private_key is not None
        await client.load_client_certificate(str(auth.certificate))
        await client.load_private_key(auth.private_key)
    return client


def describe_identity(auth: OpcUaAuth | None) -> str:
    """The user identity as an integrator would recognize it in a log line."""
    if auth is None:
        return "the anonymous user"
    if auth.username is not None:
        return f"user {auth.username!r}"
    assert auth.certificate is not None
    try:
        cert = load_certificate_file(auth.certificate)
    except (OSError, ValueError) as exc:
        return f"user certificate {auth.certificate} (unreadable: {exc})"
    return (
        f"user certificate {auth.certificate} ({cert.subject.rfc4514_string()}, "
        f"thumbprint {thumbprint(cert)})"
    )


async def connect_client(client: Client, options: ClientOptions) -> None:
    """Connect a client from :func:`build_client`; IdentityRejected, naming the identity,
    when the server refuses it. Other failures surface as the library's own exceptions."""
    from asyncua import ua
    from asyncua.ua.status_codes import get_name_and_doc

    try:
        await client.connect()
    except ua.UaStatusCodeError as exc:
        name, doc = get_name_and_doc(exc.code)
        if name not in IDENTITY_REFUSALS:
            raise
        raise IdentityRejected(
            f"{options.endpoint} refused {describe_identity(options.auth)}: {name} ({doc})"
        ) from exc


__all__ = [
    "IDENTITY_REFUSALS",
    "ClientOptions",
    "IdentityRejected",
    "SecurityRejected",
    "TrustDir",
    "application_uri_of",
    "build_client",
    "check_server_certificate",
    "connect_client",
    "describe_identity",
    "load_certificate_file",
    "parse_browse_path",
    "resolve_browse_path",
    "thumbprint",
]
