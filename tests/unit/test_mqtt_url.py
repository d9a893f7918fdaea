"""Broker URLs are parsed the same way by every part."""

from __future__ import annotations

import pytest

from karkhana.mqtt_url import BrokerUrl, parse_broker_url


@pytest.mark.parametrize(
    ("url", "schemes", "expected"),
    [
        ("mqtt://127.0.0.1", ("mqtt",), BrokerUrl("mqtt", "127.0.0.1", 1883)),
        ("mqtt://broker.plant:1884/", ("mqtt",), BrokerUrl("mqtt", "broker.plant", 1884)),
        ("mqtts://broker.plant", ("mqtt", "mqtts"), BrokerUrl("mqtts", "broker.plant", 8883)),
        ("mqtt://[::1]:1883", ("mqtt",), BrokerUrl("mqtt", "::1", 1883)),
    ],
)
def test_valid_urls(url: str, schemes: tuple[str, ...], expected: BrokerUrl) -> None:
    assert parse_broker_url(url, schemes) == expected
    assert expected.tls is (expected.scheme == "mqtts")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://host:1883", "must start with mqtt://"),
        ("mqtts://host", "must start with mqtt://"),  # TLS only where the part supports it
        ("mqtt://", "has no host"),
        ("mqtt://host:99999", "has an invalid port"),
        ("mqtt://host:abc", "has an invalid port"),
        ("mqtt://host/topic", "must not have a path, query or fragment"),
        ("mqtt://host?x=1", "must not have a path, query or fragment"),
        ("mqtt://user:secret@host", "not in the URL"),
        ("http://user:secret@host", "must start with mqtt://"),
        ("mqtt://user:secret@host/x", "must not have a path"),
    ],
)
def test_invalid_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_broker_url(url)
    assert "secret" not in str(info.value)
