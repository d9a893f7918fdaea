"""Source adapters, one per protocol, all shaped like :class:`edge.sources.base.Source`."""

from __future__ import annotations

from edge.config import EdgeConfig, MqttSourceConfig, OpcUaSourceConfig, SourceConfig
from edge.modbus_config import ModbusSourceConfig
from edge.sources.base import Backoff, DeadLetter, Sink, Source, SourceStats


def build_source(config: SourceConfig, sink: Sink, edge: EdgeConfig) -> Source:
    """The adapter for one ``sources:`` entry (protocol modules are imported lazily)."""
    if isinstance(config, OpcUaSourceConfig):
        from edge.sources.opcua import OpcUaSource

        return OpcUaSource(config, sink)
    if isinstance(config, MqttSourceConfig):
        from edge.sources.mqtt import MqttSource

        own_broker = config.broker is not None
        return MqttSource(
            config,
            sink,
            broker=config.broker or edge.uplink.broker,
            client_id=f"{edge.client_id}-{config.name}",
            username=None if own_broker else edge.uplink.username,
            password=None if own_broker else edge.uplink.password,
            keepalive_s=edge.uplink.keepalive_s,
        )
    if isinstance(config, ModbusSourceConfig):
        from edge.sources.modbus import ModbusSource

        return ModbusSource(config, sink)
    raise TypeError(f"no adapter for source type {type(config).__name__}")


__all__ = ["Backoff", "DeadLetter", "Sink", "Source", "SourceStats", "build_source"]
