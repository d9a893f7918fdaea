from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from karkhana.envelope import encode_envelope, encode_samples
from karkhana.models import AssetPath, Quality, Sample, from_ns, iso_utc, to_ns
from karkhana.topics import agent_from_samples_topic, edge_samples


def test_asset_path_parse() -> None:
    p = AssetPath.parse("lahore/weaving/line-1/loom-03")
    assert (p.site, p.area, p.line, p.machine) == ("lahore", "weaving", "line-1", "loom-03")
    assert p.line_path == "lahore/weaving/line-1"
    for bad in ("lahore/weaving/line-1", "Lahore/a/b/c", "a/b/c/d/e", "a//b/c"):
        with pytest.raises(ValueError):
            AssetPath.parse(bad)


def test_ns_round_trip_is_exact_to_the_microsecond() -> None:
    ts = datetime(2026, 11, 23, 1, 2, 3, 456789, tzinfo=UTC)
    assert to_ns(ts) == 1_795_395_723_456_789_000
    assert from_ns(to_ns(ts)) == ts
    assert iso_utc(ts) == "2026-11-23T01:02:03.456789Z"


def test_envelope_wire_format() -> None:
    ts = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
    samples = [
        Sample("a/b/c/d", "state", ts, 1),
        Sample("a/b/c/d", "temperature", ts, 41.5, Quality.UNCERTAIN, "degC"),
    ]
    raw = encode_envelope("edge-1", 7, ts, encode_samples(samples))
    decoded = msgspec.json.decode(raw)
    assert decoded == {
        "v": 1,
        "agent": "edge-1",
        "seq": 7,
        "sent": "2026-11-23T01:00:00Z",
        "samples": [
            {
                "asset": "a/b/c/d",
                "signal": "state",
                "ts": "2026-11-23T01:00:00Z",
                "value": 1,
                "quality": "good",
            },
            {
                "asset": "a/b/c/d",
                "signal": "temperature",
                "ts": "2026-11-23T01:00:00Z",
                "value": 41.5,
                "quality": "uncertain",
                "unit": "degC",
            },
        ],
    }


def test_topics() -> None:
    assert edge_samples("edge-1") == "karkhana/v1/edge/edge-1/samples"
    assert agent_from_samples_topic("karkhana/v1/edge/edge-1/samples") == "edge-1"
    assert agent_from_samples_topic("karkhana/v1/edge//samples") is None
    assert agent_from_samples_topic("karkhana/v1/edge/edge-1/status") is None
