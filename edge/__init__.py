"""karkhana edge agent: read PLCs (OPC UA) and sensors (MQTT), buffer on disk, forward."""

from __future__ import annotations

from edge.agent import EdgeAgent, EdgeStats
from edge.config import EdgeConfig, load_edge_config

__all__ = ["EdgeAgent", "EdgeConfig", "EdgeStats", "load_edge_config"]
