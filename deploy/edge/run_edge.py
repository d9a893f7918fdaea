"""Start ``karkhana edge run`` in the docker-compose deployment.

edge.yaml keeps the uplink's credentials in the file itself; a repository must not. This
reads the mounted edge.yaml, sets the uplink broker and the agent's MQTT login from the
environment, writes the result to a private file on a tmpfs and runs the agent on it.

Environment:
  EDGE_CONFIG_SOURCE      edge.yaml to start from (default /etc/karkhana/edge.yaml)
  EDGE_CONFIG_TARGET      where the completed file goes (default /tmp/karkhana/edge.yaml, a tmpfs)
  EDGE_UPLINK_BROKER      broker URL, e.g. mqtt://mosquitto:1883
  KARKHANA_EDGE_AGENT_ID  must equal the file's agent_id: the broker's ACL lets a user
                          publish only under karkhana/v1/edge/{its user name}/
  MQTT_EDGE_PASSWORD      the agent's broker password
  EDGE_SENSOR_BROKER      optional: broker for the MQTT sources that read the uplink broker
                          (``broker: null``), e.g. the demo's local sensor bus
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml


def _required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"error: {name} is not set (see .env.example)")
    return value


def render(config: dict[str, Any], env: dict[str, str], source: str) -> dict[str, Any]:
    """``config`` with the uplink (and optionally the sensors' broker) taken from ``env``."""
    agent_id = env["KARKHANA_EDGE_AGENT_ID"]
    if config.get("agent_id") != agent_id:
        raise SystemExit(
            f"error: {source}: agent_id: {config.get('agent_id')!r} differs from "
            f"KARKHANA_EDGE_AGENT_ID {agent_id!r} (the agent's broker user name)"
        )
    uplink = dict(config.get("uplink") or {})
    uplink.update(
        broker=env["EDGE_UPLINK_BROKER"], username=agent_id, password=env["MQTT_EDGE_PASSWORD"]
    )
    rendered = {**config, "uplink": uplink}
    sensor_broker = env.get("EDGE_SENSOR_BROKER")
    if sensor_broker:
        rendered["sources"] = [
            {**s, "broker": sensor_broker}
            if s.get("type") == "mqtt" and s.get("broker") is None
            else s
            for s in config.get("sources") or []
        ]
    return rendered


def main() -> None:
    source = Path(os.environ.get("EDGE_CONFIG_SOURCE", "/etc/karkhana/edge.yaml"))
    target = Path(os.environ.get("EDGE_CONFIG_TARGET", "/tmp/karkhana/edge.yaml"))
    env = {
        name: _required(name)
        for name in ("EDGE_UPLINK_BROKER", "KARKHANA_EDGE_AGENT_ID", "MQTT_EDGE_PASSWORD")
    }
    env["EDGE_SENSOR_BROKER"] = os.environ.get("EDGE_SENSOR_BROKER", "")
    try:
        config = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"error: {source}: {exc}") from exc
    if not isinstance(config, dict):
        raise SystemExit(f"error: {source}: expected a mapping at the top level")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        yaml.safe_dump(render(config, env, str(source)), out, sort_keys=False)
    sys.stdout.flush()
    os.execvp("karkhana", ["karkhana", "edge", "run", "-c", str(target)])


if __name__ == "__main__":
    main()
