"""Configuration models and loading (factory.yaml)."""

from karkhana.config.factory import (
    Area,
    Break,
    Calendar,
    FactoryConfig,
    Line,
    Machine,
    MachineSignals,
    Shift,
    Site,
    load_factory,
)
from karkhana.config.loading import load_model, parse_model, read_yaml

__all__ = [
    "Area",
    "Break",
    "Calendar",
    "FactoryConfig",
    "Line",
    "Machine",
    "MachineSignals",
    "Shift",
    "Site",
    "load_factory",
    "load_model",
    "parse_model",
    "read_yaml",
]
