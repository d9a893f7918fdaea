"""karkhana edge agent: read PLCs (OPC UA, Modbus TCP) and sensors (MQTT JSON, Sparkplug B),
buffer on disk, forward to the broker."""

from __future__ import annotations

from edge.agent import EdgeAgent, EdgeStats
from edge.buffer import DropCounts
from edge.check import CheckResult, check_connections
from edge.config import EdgeConfig, load_edge_config
from edge.metrics import MetricsServer

__all__ = [
    "CheckResult",
    "DropCounts",
    "EdgeAgent",
    "EdgeConfig",
    "EdgeStats",
    "MetricsServer",
    "check_connections",
    "load_edge_config",
]
