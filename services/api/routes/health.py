"""``GET /health``: liveness and the store's state."""

from __future__ import annotations

from fastapi import APIRouter

from services.api.deps import ReaderDep, SettingsDep
from services.api.schemas import Health, StoreHealth

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(settings: SettingsDep, reader: ReaderDep) -> Health:
    return Health(
        store=StoreHealth(
            path=settings.store_location, exists=reader.exists, samples=reader.sample_count()
        )
    )
