"""Process settings of ``karkhana edge`` (environment variables ``KARKHANA_EDGE_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class EdgeSettings(BaseSettings):
    """``KARKHANA_EDGE_CONFIG`` overrides the ``-c/--config`` path;
    ``KARKHANA_EDGE_SHUTDOWN_TIMEOUT_S`` bounds the flush at shutdown."""

    model_config = SettingsConfigDict(env_prefix="KARKHANA_EDGE_", extra="ignore")

    config: Path | None = None
    shutdown_timeout_s: float = 3.0
