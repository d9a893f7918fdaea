"""KPI engine: additive OEE components from raw machine data, ratios computed last.

Pure maths: no web framework and no database imports; store access goes through the
``SampleSource`` protocol.
"""

from services.kpi.components import DOWN_CATEGORIES, OeeComponents, sum_components
from services.kpi.counters import BAD_COUNTER_VALUE, COUNTER_RESET, CounterDelta, counter_delta
from services.kpi.coverage import covered_ns
from services.kpi.engine import (
    NO_DATA,
    REJECTS_EXCEED_TOTAL,
    MachineData,
    MachineSpec,
    compute_machine,
    load_machine_data,
    machine_components,
)
from services.kpi.indicators import Indicators, compute_indicators
from services.kpi.losses import LossTree, loss_tree
from services.kpi.modes import ModeTimes, map_mode, mode_times
from services.kpi.planned import PlannedTime, planned_ns
from services.kpi.ratios import PERFORMANCE_CAPPED, OeeRatios, compute_ratios
from services.kpi.source import Point, SampleSource
from services.kpi.timeline import (
    STOP_STATES,
    UNMAPPED_STATE,
    CurrentState,
    StateTimes,
    canonical_state,
    current_state,
    state_times,
    stop_event_bounds,
)

__all__ = [
    "BAD_COUNTER_VALUE",
    "COUNTER_RESET",
    "DOWN_CATEGORIES",
    "NO_DATA",
    "PERFORMANCE_CAPPED",
    "REJECTS_EXCEED_TOTAL",
    "STOP_STATES",
    "UNMAPPED_STATE",
    "CounterDelta",
    "CurrentState",
    "Indicators",
    "LossTree",
    "MachineData",
    "MachineSpec",
    "ModeTimes",
    "OeeComponents",
    "OeeRatios",
    "PlannedTime",
    "Point",
    "SampleSource",
    "StateTimes",
    "canonical_state",
    "compute_indicators",
    "compute_machine",
    "compute_ratios",
    "counter_delta",
    "covered_ns",
    "current_state",
    "load_machine_data",
    "loss_tree",
    "machine_components",
    "map_mode",
    "mode_times",
    "planned_ns",
    "state_times",
    "stop_event_bounds",
    "sum_components",
]
