"""Settings of the gateway deployable (environment variables ``KARKHANA_GATEWAY_*``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.retention import DEFAULT_KEEP_RAW, RetentionPolicy
from karkhana.config.loading import validation_to_config_error
from karkhana.mqtt_url import BrokerUrl, parse_broker_url
from karkhana.storage.influx_schema import InfluxSettings

SETTINGS_SOURCE = "gateway settings (KARKHANA_GATEWAY_* environment / command-line options)"

BROKER_SCHEMES = ("mqtt", "mqtts")
_TOPIC_FORBIDDEN = set("/+#")


class GatewaySettings(InfluxSettings, BaseSettings):
    """Everything one gateway process needs; built once in ``main()`` and passed down.

    The store is chosen by ``store`` (``sqlite``: ``db``; ``influxdb``: the ``influx_*``
    fields of :class:`~karkhana.storage.influx_schema.InfluxSettings`).
    """

    model_config = SettingsConfigDict(
        env_prefix="KARKHANA_GATEWAY_", extra="forbid", validate_default=True
    )

    broker: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretStr | None = None
    client_id: str = Field(default="karkhana-gateway", min_length=1, max_length=128)
    db: Path = Path("karkhana-data/karkhana.sqlite")
    share_group: str | None = None
    keepalive_s: int = Field(default=30, ge=5, le=65535)
    session_expiry_s: int = Field(default=7 * 86400, ge=0, le=0xFFFFFFFF)
    batch_max_samples: int = Field(default=100_000, ge=1, le=1_000_000)
    batch_max_delay_s: float = Field(default=0.2, gt=0, le=60)
    queue_max_messages: int = Field(default=10_000, ge=1, le=10_000_000)
    queue_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1, le=2**40)
    receive_maximum: int = Field(default=1000, ge=1, le=65_535)
    max_payload_bytes: int = Field(default=1_000_000, ge=64)
    max_future_s: float = Field(default=86400 * 2, ge=0)
    min_ts: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    deadletter_payload_max: int = Field(default=4096, ge=0)
    # Retention and downsampling of the SQLite store (docs/gateway.md); None: keep all.
    retention_days: float | None = Field(default=None, gt=0)
    downsample_after_days: float | None = Field(default=None, gt=0)
    downsample_bucket_s: float = Field(default=60.0, gt=0, le=86400)
    downsample_keep_raw: list[str] = Field(default_factory=lambda: list(DEFAULT_KEEP_RAW))
    deadletter_retention_days: float | None = Field(default=None, gt=0)
    retention_interval_s: float = Field(default=600.0, ge=1)
    compact_after_s: float = Field(default=3600.0, ge=0)
    """Merge each series' chunks of windows older than this (SQLite); 0 turns it off."""
    uns_mirror: bool = False
    metrics_port: int | None = Field(default=None, ge=0, le=65_535)
    metrics_host: str = "127.0.0.1"
    # InfluxDB store: the gateway's own health series (docs/dashboards.md); 0 disables.
    platform_stats_s: float = Field(default=10.0, ge=0, le=3600)

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        parse_broker_url(value, BROKER_SCHEMES)
        return value

    @field_validator("share_group")
    @classmethod
    def _check_share_group(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value or _TOPIC_FORBIDDEN & set(value):
            raise ValueError(
                f"share group {value!r} must be a non-empty name without '/', '+' or '#'"
            )
        return value

    @field_validator("client_id")
    @classmethod
    def _check_client_id(cls, value: str) -> str:
        if _TOPIC_FORBIDDEN & set(value) or any(c.isspace() for c in value):
            raise ValueError(f"client id {value!r} must not contain '/', '+', '#' or spaces")
        return value

    @field_validator("downsample_after_days")
    @classmethod
    def _check_downsample_after(cls, value: float | None, info: ValidationInfo) -> float | None:
        retention = info.data.get("retention_days")
        if value is not None and retention is not None and value >= retention:
            raise ValueError(
                f"downsample_after_days ({value:g}) must be less than retention_days "
                f"({retention:g}); samples are deleted before they would be downsampled"
            )
        return value

    @field_validator("min_ts")
    @classmethod
    def _check_min_ts(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("min_ts must have a timezone (e.g. 2000-01-01T00:00:00Z)")
        return value.astimezone(UTC)

    @property
    def broker_url(self) -> BrokerUrl:
        return parse_broker_url(self.broker, BROKER_SCHEMES)

    @property
    def broker_host(self) -> str:
        return self.broker_url.host

    @property
    def broker_port(self) -> int:
        return self.broker_url.port

    @property
    def broker_tls(self) -> bool:
        return self.broker_url.tls

    def retention_policy(self) -> RetentionPolicy:
        return RetentionPolicy(
            retention_days=self.retention_days,
            downsample_after_days=self.downsample_after_days,
            downsample_bucket_s=self.downsample_bucket_s,
            keep_raw=tuple(self.downsample_keep_raw),
            deadletter_retention_days=self.deadletter_retention_days,
            compact_after_s=self.compact_after_s or None,
        )

    @property
    def mqtt_v5(self) -> bool:
        """Shared subscriptions need MQTT v5; otherwise 3.1.1 (which every broker speaks)."""
        return self.share_group is not None


def load_settings(**overrides: Any) -> GatewaySettings:
    """Settings from the environment with explicit ``overrides`` (None values are ignored).

    Raises :class:`karkhana.errors.ConfigError` naming the key and the problem.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return GatewaySettings(**given)
    except ValidationError as exc:
        raise validation_to_config_error(SETTINGS_SOURCE, exc) from exc
