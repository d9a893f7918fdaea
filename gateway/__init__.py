"""Gateway: ingest edge envelopes from MQTT into the time-series store."""

from gateway.decode import DecodeLimits, DecodeResult, EnvelopeDecoder, NormalizedSample
from gateway.service import Gateway
from gateway.settings import GatewaySettings, load_settings
from gateway.stats import GatewayStats

__all__ = [
    "DecodeLimits",
    "DecodeResult",
    "EnvelopeDecoder",
    "Gateway",
    "GatewaySettings",
    "GatewayStats",
    "NormalizedSample",
    "load_settings",
]
