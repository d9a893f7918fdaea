"""Broker URLs: ``mqtt://host[:port]``, and ``mqtts://`` (TLS) where a part supports it.

One parser for every part (edge uplink and sources, simulator, gateway), so a URL that one
accepts the others accept too, with the same messages."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"


def parse_broker_url(url: str, schemes: tuple[str, ...] = ("mqtt",)) -> BrokerUrl:
    """The parts of ``url``; ValueError with a message a user can act on otherwise.

    Credentials are refused in the URL: every part takes them as separate settings, so they
    stay out of logs that print the URL."""
    parts = urlsplit(url)
    if "@" in parts.netloc:  # never echo a password into an error message or a log
        url = parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()
    if parts.scheme not in schemes:
        allowed = " or ".join(f"{s}://" for s in schemes)
        raise ValueError(
            f"broker URL {url!r} must start with {allowed} (e.g. mqtt://127.0.0.1:1883)"
        )
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r} has no host (e.g. mqtt://127.0.0.1:1883)")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"broker URL {url!r} has an invalid port") from exc
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL {url!r} must not have a path, query or fragment")
    if parts.username or parts.password:
        raise ValueError(
            "put broker credentials in the username and password settings, not in the URL"
        )
    return BrokerUrl(parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme])
