"""MQTT topic names of the wire contract (see ARCHITECTURE.md)."""

from __future__ import annotations

PREFIX = "karkhana/v1"
EDGE_SAMPLES_FILTER = f"{PREFIX}/edge/+/samples"
DEADLETTER = f"{PREFIX}/deadletter"


def edge_samples(agent_id: str) -> str:
    return f"{PREFIX}/edge/{agent_id}/samples"


def edge_status(agent_id: str) -> str:
    return f"{PREFIX}/edge/{agent_id}/status"


def agent_from_samples_topic(topic: str) -> str | None:
    """The agent id in ``karkhana/v1/edge/{agent}/samples``, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[:3] == ["karkhana", "v1", "edge"] and parts[4] == "samples":
        return parts[3] or None
    return None


def shared(filter_: str, group: str) -> str:
    """MQTT v5 shared-subscription form of a topic filter."""
    return f"$share/{group}/{filter_}"
