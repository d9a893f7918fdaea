"""Value mapping (edge.transform): scaling, deadbands, state maps and their config checks.

Expected values are worked out by hand in the comments, not computed by the code under test.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge import EdgeConfig, load_edge_config
from edge.transform import MappingKeys, Transform, TransformSpec, build_transforms
from karkhana.errors import ConfigError
from karkhana.models import Quality, Sample, SampleValue

T0 = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
LOOM = "lahore/weaving/line-1/loom-01"


def sample(value: SampleValue, quality: Quality = Quality.GOOD, i: int = 0) -> Sample:
    return Sample(LOOM, "speed", T0 + timedelta(seconds=i), value, quality, "rpm")


def run(transform: Transform, values: list[Any]) -> list[Any]:
    """Feed values (or (value, quality) pairs); return the forwarded values."""
    out: list[Any] = []
    for i, item in enumerate(values):
        value, quality = item if isinstance(item, tuple) else (item, Quality.GOOD)
        result = transform.apply(sample(value, quality, i))
        if result is not None:
            out.append(result.value if quality is Quality.GOOD else (result.value, quality))
    return out


# --- scaling --------------------------------------------------------------------------


def test_scale_and_offset() -> None:
    t = Transform(TransformSpec(scale=0.1, offset=-40.0))
    # 655 * 0.1 - 40 = 25.5 ; 400 * 0.1 - 40 = 0.0 ; 2.5 * 0.1 - 40 = -39.75
    assert run(t, [655, 400, 2.5]) == pytest.approx([25.5, 0.0, -39.75])


def test_scaled_ints_become_floats_and_unscaled_ints_stay_ints() -> None:
    scaled = Transform(TransformSpec(scale=2.0))
    out = scaled.apply(sample(21))
    assert out is not None and out.value == 42.0 and isinstance(out.value, float)
    plain = Transform(TransformSpec(deadband=1.0))
    out = plain.apply(sample(21))
    assert out is not None and out.value == 21 and type(out.value) is int


def test_non_numbers_are_not_scaled() -> None:
    t = Transform(TransformSpec(scale=10.0, offset=1.0))
    assert run(t, [True, "RUN"]) == [True, "RUN"]


def test_sample_keeps_everything_but_the_value() -> None:
    t = Transform(TransformSpec(scale=0.5))
    src = Sample(LOOM, "speed", T0, 10, Quality.UNCERTAIN, "rpm")
    assert t.apply(src) == Sample(LOOM, "speed", T0, 5.0, Quality.UNCERTAIN, "rpm")


# --- absolute deadband ----------------------------------------------------------------


def test_absolute_deadband() -> None:
    t = Transform(TransformSpec(deadband=0.5))
    # first 10 passes; 10.3 (|0.3|<=0.5) held; 10.5 (|0.5|<=0.5, boundary) held;
    # 10.6 (0.6) passes; 10.2 (0.4 from 10.6) held; 9.9 (0.7 from 10.6) passes
    assert run(t, [10, 10.3, 10.5, 10.6, 10.2, 9.9]) == [10, 10.6, 9.9]
    assert t.suppressed == 3


def test_deadband_applies_after_scaling() -> None:
    t = Transform(TransformSpec(scale=0.1, deadband=1.0))
    # raw 200 -> 20.0 passes; 209 -> 20.9 held (0.9); 211 -> 21.1 passes (1.1)
    assert run(t, [200, 209, 211]) == pytest.approx([20.0, 21.1])


def test_zero_deadband_drops_exact_repeats_only() -> None:
    t = Transform(TransformSpec(deadband=0.0))
    assert run(t, [5, 5, 5, 6, 6, 5]) == [5, 6, 5]


def test_quality_change_passes_the_deadband() -> None:
    t = Transform(TransformSpec(deadband=5.0))
    # 100 passes; 101 held; 101 bad: quality changed -> passes; 101 bad again: held;
    # 102 good: quality changed back -> passes
    values = [100, 101, (101, Quality.BAD), (101, Quality.BAD), 102]
    assert run(t, values) == [100, (101, Quality.BAD), 102]
    assert t.suppressed == 2


def test_non_numeric_values_always_pass_and_reset_the_reference() -> None:
    t = Transform(TransformSpec(deadband=5.0))
    # 1 passes; "x" (string) passes; 2 passes (no numeric reference after a string);
    # True (bool, not a number here) passes twice; 3 passes (reference reset again)
    assert run(t, [1, "x", 2, True, True, 3]) == [1, "x", 2, True, True, 3]


# --- percent deadband -----------------------------------------------------------------


def test_percent_deadband_of_last_forwarded_value() -> None:
    t = Transform(TransformSpec(deadband_percent=10.0))
    # 100 passes (band 10 % of 100 = 10); 109 held (9 <= 10); 111 passes (11 > 10);
    # band now 10 % of 111 = 11.1: 122 held (11 <= 11.1); 123 passes (12 > 11.1)
    assert run(t, [100, 109, 111, 122, 123]) == [100, 111, 123]


def test_percent_deadband_of_negative_values_uses_the_magnitude() -> None:
    t = Transform(TransformSpec(deadband_percent=50.0))
    # -20 passes (band 10); -29 held (9); -31 passes (11); band 15.5: -16 held (15)
    assert run(t, [-20, -29, -31, -16]) == [-20, -31]


def test_percent_deadband_of_configured_range() -> None:
    t = Transform(TransformSpec(deadband_percent=1.0, range=(0.0, 500.0)))
    # band = 1 % of (500 - 0) = 5, whatever the last value:
    # 0 passes; 4 held; 5.5 passes; 10 held (4.5); 11 passes (5.5 from 5.5)
    assert run(t, [0, 4, 5.5, 10, 11]) == [0, 5.5, 11]


def test_percent_deadband_after_zero_without_range_passes_any_change() -> None:
    t = Transform(TransformSpec(deadband_percent=10.0))
    # band of 0 is 0: repeats of 0 are held, any change passes
    assert run(t, [0, 0, 0.001]) == [0, 0.001]


# --- state maps -----------------------------------------------------------------------


def test_state_map_maps_codes_and_passes_unmapped_values() -> None:
    t = Transform(TransformSpec(state_map={1: "running", 3: "fault", "RUN": 1}))
    assert run(t, [1, 3, "RUN", 7, "STOP"]) == ["running", "fault", 1, 7, "STOP"]
    assert t.unmapped == 2


def test_state_map_finds_integer_codes_delivered_as_floats() -> None:
    t = Transform(TransformSpec(state_map={3: "fault"}))
    assert run(t, [3.0]) == ["fault"]


def test_state_map_has_no_deadband_by_default() -> None:
    t = Transform(TransformSpec(state_map={1: 10, 2: 20}))
    assert run(t, [1, 1, 1, 2, 2]) == [10, 10, 10, 20, 20]
    assert t.suppressed == 0


def test_state_map_with_deadband_filters_the_mapped_value() -> None:
    t = Transform(TransformSpec(state_map={1: 10, 2: 11, 3: 30}, deadband=2.0))
    # 1 -> 10 passes; 2 -> 11 held (1 <= 2); 3 -> 30 passes
    assert run(t, [1, 2, 3]) == [10, 30]


# --- config ---------------------------------------------------------------------------

CONFIG: dict[str, Any] = {
    "agent_id": "edge-1",
    "uplink": {"broker": "mqtt://127.0.0.1:1883"},
    "sources": [
        {
            "type": "opcua",
            "name": "loom-01",
            "endpoint": "opc.tcp://127.0.0.1:4841/",
            "nodes": [
                {"node_id": "ns=2;s=Speed", "asset": LOOM, "signal": "speed"},
                {"node_id": "ns=2;s=Count", "asset": LOOM, "signal": "count_total"},
            ],
        },
        {
            "type": "mqtt",
            "name": "sensors",
            "topics": [
                {
                    "topic": "sensors/{machine}/temp",
                    "asset": "lahore/dyeing/line-1/{machine}",
                    "signal": "temperature",
                    "format": "number",
                }
            ],
        },
        {
            "type": "modbus",
            "name": "stenter",
            "host": "127.0.0.1",
            "registers": [
                {
                    "asset": "lahore/dyeing/line-1/stenter-01",
                    "signal": "state",
                    "table": "holding",
                    "address": 0,
                }
            ],
        },
    ],
}


def with_keys(path: tuple[int, str, int], **keys: Any) -> dict[str, Any]:
    data = copy.deepcopy(CONFIG)
    source, listing, index = path
    data["sources"][source][listing][index].update(keys)
    return data


NODE = (0, "nodes", 0)
TOPIC = (1, "topics", 0)
REGISTER = (2, "registers", 0)


def load(tmp_path: Path, data: dict[str, Any]) -> EdgeConfig:
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_edge_config(path)


def test_no_mapping_keys_means_no_transforms(tmp_path: Path) -> None:
    assert build_transforms(load(tmp_path, CONFIG)).empty


def test_counters_are_never_deadbanded_by_default(tmp_path: Path) -> None:
    cfg = load(tmp_path, with_keys(NODE, deadband=1.0))
    table = build_transforms(cfg)
    assert table.lookup(LOOM, "speed") is not None
    assert table.lookup(LOOM, "count_total") is None


def test_yaml_state_map_keys_keep_their_types(tmp_path: Path) -> None:
    data = with_keys(REGISTER, state_map={1: "running", 3: "fault", "RUN": 1})
    table = build_transforms(load(tmp_path, data))
    transform = table.lookup("lahore/dyeing/line-1/stenter-01", "state")
    assert transform is not None
    assert transform.spec.state_map == {1: "running", 3: "fault", "RUN": 1}


def test_modbus_register_scale_is_left_to_the_source(tmp_path: Path) -> None:
    data = with_keys(REGISTER, scale=0.1, deadband=0.5)
    transform = build_transforms(load(tmp_path, data)).lookup(
        "lahore/dyeing/line-1/stenter-01", "state"
    )
    assert transform is not None
    assert (transform.spec.scale, transform.spec.offset, transform.spec.deadband) == (
        1.0,
        0.0,
        0.5,
    )


def test_modbus_register_with_only_scale_has_no_agent_transform(tmp_path: Path) -> None:
    assert build_transforms(load(tmp_path, with_keys(REGISTER, scale=0.1))).empty


def test_mqtt_template_topic_transform_is_found_per_machine(tmp_path: Path) -> None:
    table = build_transforms(load(tmp_path, with_keys(TOPIC, deadband=0.5)))
    a = table.lookup("lahore/dyeing/line-1/jet-01", "temperature")
    b = table.lookup("lahore/dyeing/line-1/jet-02", "temperature")
    assert a is not None and b is not None and a is not b  # separate deadband state
    assert table.lookup("lahore/dyeing/line-1/jet-01", "temperature") is a
    assert table.lookup("lahore/dyeing/line-1/jet-01", "pressure") is None
    assert table.lookup("karachi/dyeing/line-1/jet-01", "temperature") is None


def test_mqtt_multi_level_capture_spans_asset_segments(tmp_path: Path) -> None:
    topic = {"topic": "plant/{path+}", "asset": "{path}", "signal": "level", "scale": 2.0}
    data = copy.deepcopy(CONFIG)
    data["sources"][1]["topics"] = [topic]
    table = build_transforms(load(tmp_path, data))
    assert table.lookup("lahore/dyeing/line-1/tank-01", "level") is not None
    assert table.lookup("lahore/dyeing/line-1/tank-01", "volume") is None


@pytest.mark.parametrize(
    ("where", "keys", "key_path", "problem"),
    [
        (NODE, {"deadband": -1}, "sources[0].nodes[0].deadband", "greater than or equal to 0"),
        (NODE, {"deadband_percent": 0}, "sources[0].nodes[0].deadband_percent", "greater than 0"),
        (
            NODE,
            {"deadband_percent": 150},
            "sources[0].nodes[0].deadband_percent",
            "less than or equal to 100",
        ),
        (NODE, {"scale": 0}, "sources[0].nodes[0].scale", "must not be 0"),
        (TOPIC, {"scale": 0}, "sources[1].topics[0].scale", "must not be 0"),
        (REGISTER, {"scale": 0}, "sources[2].registers[0].scale", "must not be 0"),
        (REGISTER, {"deadband": -0.5}, "sources[2].registers[0].deadband", "greater than"),
        (NODE, {"deadband": 1, "deadband_percent": 5}, "sources[0].nodes[0]", "not both"),
        (NODE, {"range": [0, 100]}, "sources[0].nodes[0]", "only used with deadband_percent"),
        (
            NODE,
            {"deadband_percent": 5, "range": [10, 0]},
            "sources[0].nodes[0].range",
            "low < high",
        ),
        (NODE, {"state_map": {1: "run"}, "scale": 2}, "sources[0].nodes[0]", "state_map cannot"),
        (NODE, {"state_map": {}}, "sources[0].nodes[0].state_map", "empty"),
        (NODE, {"deadbnd": 1}, "sources[0].nodes[0].deadbnd", "unknown key"),
    ],
)
def test_bad_mapping_keys_name_the_key(
    tmp_path: Path, where: tuple[int, str, int], keys: dict[str, Any], key_path: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, with_keys(where, **keys))
    assert caught.value.key_path == key_path
    assert problem in caught.value.problem
    assert "edge.yaml" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_sparkplug_topics_refuse_mapping_keys() -> None:
    from pydantic import ValidationError

    from edge.config import MqttTopic

    with pytest.raises(ValidationError, match="not supported with format: sparkplug_b"):
        MqttTopic(
            topic="spBv1.0/{group}/#",
            format="sparkplug_b",
            asset="plant/{group}/line/{edge_node}",
            signal="{metric}",
            deadband=1.0,
        )


def test_mapping_keys_defaults_change_nothing() -> None:
    assert not MappingKeys().has_mapping
