"""Settings of the API deployable (env prefix ``KARKHANA_API_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from karkhana.config.loading import validation_to_config_error
from karkhana.storage.influx_schema import InfluxSettings


class ApiSettings(InfluxSettings, BaseSettings):
    """The store is chosen by ``store``: ``sqlite`` reads ``db``, ``influxdb`` the
    ``influx_*`` fields (env ``KARKHANA_API_STORE``, ``KARKHANA_API_INFLUX_URL``, ...)."""

    model_config = SettingsConfigDict(env_prefix="KARKHANA_API_", extra="forbid")

    factory: Path = Field(description="factory.yaml describing the assets and calendars")
    db: Path = Field(
        default=Path("karkhana-data/karkhana.sqlite"), description="SQLite store to read"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_gap_s: float = Field(default=300.0, gt=0, description="coverage: max freshness per sample")
    max_window_days: float = Field(default=93, gt=0, description="longest KPI window accepted")
    keys_db: Path | None = Field(
        default=None,
        description="SQLite file of the API keys; default keys.sqlite next to the store 'db'",
    )
    reasons_db: Path | None = Field(
        default=None,
        description="SQLite file of downtime reason codings; default reasons.sqlite next to 'db'",
    )
    rate_limit_per_s: float = Field(
        default=20.0, gt=0, description="requests per second each key (or address) may make"
    )
    rate_limit_burst: int = Field(
        default=100, ge=1, description="requests a key (or address) may make at once"
    )
    andon_clock: Literal["wall", "data"] = Field(
        default="wall",
        description="the andon's 'now': the wall clock, or the newest sample (simulations "
        "whose clock differs from the wall clock, as in 'karkhana demo')",
    )
    kpi_publish_s: float = Field(
        default=60.0,
        ge=0,
        description="InfluxDB store: write new or changed KPI buckets, downtime events and "
        "machine states for Grafana this often (seconds); 0 disables",
    )

    @property
    def keys_path(self) -> Path:
        """Where the API keys are kept."""
        return self.keys_db if self.keys_db is not None else self.db.parent / "keys.sqlite"

    @property
    def reasons_path(self) -> Path:
        """Where operators' downtime codings are kept."""
        if self.reasons_db is not None:
            return self.reasons_db
        return self.db.parent / "reasons.sqlite"

    @property
    def store_location(self) -> str:
        """The store, as health checks and logs show it."""
        if self.store == "influxdb":
            return f"InfluxDB {self.influx_target().location}"
        return str(self.db)


def load_settings(**overrides: Any) -> ApiSettings:
    """Settings from the environment plus explicit overrides; problems raise ConfigError."""
    try:
        return ApiSettings(**overrides)
    except ValidationError as exc:
        raise validation_to_config_error("API settings (KARKHANA_API_* / options)", exc) from exc
