"""Simulated devices: OPC UA PLCs and MQTT sensors driven by seeded scenarios, with exact
ground truth of the KPIs they should produce."""

from devices.config import MachineSimConfig, SimulationConfig, load_simulation
from devices.edge_config import edge_config_for
from devices.scenario import MachineScenario, ScenarioParams, Segment, generate_shift
from devices.simulator import FactorySimulator, MachineStatus, SimSettings
from devices.truth import GroundTruth, KpiComponents, time_components

__all__ = [
    "FactorySimulator",
    "GroundTruth",
    "KpiComponents",
    "MachineScenario",
    "MachineSimConfig",
    "MachineStatus",
    "ScenarioParams",
    "Segment",
    "SimSettings",
    "SimulationConfig",
    "edge_config_for",
    "generate_shift",
    "load_simulation",
    "time_components",
]
