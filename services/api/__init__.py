"""The HTTP API (FastAPI): health, the asset tree and OEE per machine or line."""

from services.api.main import create_app
from services.api.settings import ApiSettings, load_settings

__all__ = ["ApiSettings", "create_app", "load_settings"]
