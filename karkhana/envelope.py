"""Edge -> gateway envelope: ``{"v":1,"agent":..,"seq":N,"sent":..,"samples":[..]}``.

Encoding lives here so every producer writes the same bytes; decoding with full validation
belongs to the gateway, which must turn every malformed payload into a dead letter.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from karkhana.models import Quality, Sample, SampleValue, iso_utc

ENVELOPE_VERSION = 1


class WireSample(msgspec.Struct, omit_defaults=True):
    asset: str
    signal: str
    ts: str
    value: SampleValue
    quality: str = "good"
    unit: str | None = None


class WireEnvelope(msgspec.Struct):
    v: int
    agent: str
    seq: int
    sent: str
    samples: list[WireSample]


_encoder = msgspec.json.Encoder()


def sample_to_wire(sample: Sample) -> WireSample:
    return WireSample(
        asset=sample.asset,
        signal=sample.signal,
        ts=iso_utc(sample.ts),
        value=sample.value,
        quality=str(sample.quality),
        unit=sample.unit,
    )


def encode_envelope(agent: str, seq: int, sent: datetime, samples: list[WireSample]) -> bytes:
    return _encoder.encode(
        WireEnvelope(v=ENVELOPE_VERSION, agent=agent, seq=seq, sent=iso_utc(sent), samples=samples)
    )


def encode_samples(samples: list[Sample]) -> list[WireSample]:
    return [sample_to_wire(s) for s in samples]


__all__ = [
    "ENVELOPE_VERSION",
    "Quality",
    "WireEnvelope",
    "WireSample",
    "encode_envelope",
    "encode_samples",
    "sample_to_wire",
]
