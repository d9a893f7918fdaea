from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings, load_settings
from karkhana.errors import ConfigError


def test_defaults() -> None:
    s = GatewaySettings()
    assert (s.broker_host, s.broker_port, s.broker_tls, s.mqtt_v5) == (
        "127.0.0.1",
        1883,
        False,
        False,
    )
    assert s.db == Path("karkhana-data/karkhana.sqlite")
    assert s.min_ts == datetime(2000, 1, 1, tzinfo=UTC)
    assert s.max_future_s == 172800


def test_environment_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KARKHANA_GATEWAY_BROKER", "mqtts://broker.example")
    monkeypatch.setenv("KARKHANA_GATEWAY_BATCH_MAX_SAMPLES", "100")
    monkeypatch.setenv("KARKHANA_GATEWAY_MIN_TS", "2020-01-01T05:00:00+05:00")
    s = load_settings(client_id="gw-2", share_group=None)
    assert (s.broker_host, s.broker_port, s.broker_tls) == ("broker.example", 8883, True)
    assert s.batch_max_samples == 100
    assert s.client_id == "gw-2"
    assert s.min_ts == datetime(2020, 1, 1, tzinfo=UTC)


def test_share_group_selects_mqtt_v5() -> None:
    assert load_settings(share_group="ingest").mqtt_v5


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"broker": "http://127.0.0.1:1883"}, "must start with mqtt:// or mqtts://"),
        ({"broker": "mqtt://"}, "has no host"),
        ({"broker": "mqtt://host:99999"}, "invalid port"),
        ({"broker": "mqtt://user:pw@host"}, "not in the URL"),
        ({"broker": "mqtt://host/path"}, "must not have a path"),
        ({"share_group": "a/b"}, "share group"),
        ({"client_id": "a b"}, "client id"),
        ({"batch_max_samples": 0}, "batch_max_samples"),
        ({"queue_max_messages": 0}, "queue_max_messages"),
        ({"min_ts": datetime(2000, 1, 1)}, "must have a timezone"),
        ({"nonsense": 1}, "unknown key"),
    ],
)
def test_invalid_settings_raise_config_error(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**overrides)
    assert fragment in str(info.value)
    assert "gateway settings" in str(info.value)
