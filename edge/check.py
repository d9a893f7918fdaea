"""``karkhana edge check``: try every connection an ``edge.yaml`` describes, once.

The uplink broker gets a plain connect. An MQTT source connects and subscribes to each of
its topic filters (a refused subscription is an error). Every other source is started with
its real adapter (so security, credentials and node resolution are exactly those of
``edge run``) and must connect within the timeout; an OPC UA source must also deliver a
value for each configured node. Nothing is forwarded: samples read here are discarded.
Client ids get a ``-check`` suffix so a running agent keeps its own sessions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass

import aiomqtt

from edge.config import EdgeConfig, MqttSourceConfig, OpcUaSourceConfig, broker_host_port
from edge.mapping import TopicMapping
from edge.sources import DeadLetter, Source, build_source
from karkhana.models import Sample

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
_SUBACK_FAILURE = 0x80


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one connection attempt."""

    name: str  # "uplink" or the source name
    kind: str  # "uplink", "opcua", "mqtt", ...
    target: str  # broker URL or endpoint
    ok: bool
    detail: str  # what was verified, or why it failed


class _CheckSink:
    """Records which (asset, signal) pairs delivered a value; forwards nothing."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()
        self.changed = asyncio.Event()
        self.dead_letters = 0

    async def put(self, sample: Sample) -> None:
        self.seen.add((sample.asset, sample.signal))
        self.changed.set()

    async def dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters += 1

    def source_state_changed(self) -> None:
        self.changed.set()

    def ticket(self) -> int:
        return 0

    async def wait_stored(self, ticket: int) -> None:
        return None  # a check stores nothing; its own session's messages are simply acknowledged


def _check_config(config: EdgeConfig) -> EdgeConfig:
    """The same config with ``-check`` client ids (a running agent keeps its sessions)."""
    uplink = config.uplink.model_copy(update={"client_id": f"{config.client_id}-check"})
    return config.model_copy(update={"uplink": uplink})


async def check_uplink(config: EdgeConfig, timeout_s: float = DEFAULT_TIMEOUT_S) -> CheckResult:
    url = config.uplink.broker
    host, port = broker_host_port(url)
    client = aiomqtt.Client(
        host,
        port,
        identifier=f"{config.client_id}-check",
        username=config.uplink.username,
        password=config.uplink.password,
        clean_session=True,
        timeout=timeout_s,
    )
    try:
        async with asyncio.timeout(timeout_s):
            async with client:
                pass
    except TimeoutError:
        return CheckResult("uplink", "uplink", url, False, f"no answer within {timeout_s:g} s")
    except aiomqtt.MqttError as exc:
        return CheckResult("uplink", "uplink", url, False, str(exc) or type(exc).__name__)
    return CheckResult("uplink", "uplink", url, True, "connected")


async def _check_mqtt(
    source: MqttSourceConfig, config: EdgeConfig, timeout_s: float
) -> CheckResult:
    url = source.broker or config.uplink.broker
    own = source.broker is not None
    filters = list(dict.fromkeys(TopicMapping.compile(t).filter for t in source.topics))
    host, port = broker_host_port(url)
    client = aiomqtt.Client(
        host,
        port,
        identifier=f"{config.client_id}-check-{source.name}",
        username=None if own else config.uplink.username,
        password=None if own else config.uplink.password,
        clean_session=True,
        timeout=timeout_s,
    )
    refused: list[str] = []
    try:
        async with asyncio.timeout(timeout_s):
            async with client:
                for topic_filter in filters:
                    granted = await client.subscribe(topic_filter, qos=1)
                    if any(_refused(g) for g in (granted or ())):
                        refused.append(topic_filter)
    except TimeoutError:
        return CheckResult(source.name, "mqtt", url, False, f"no answer within {timeout_s:g} s")
    except aiomqtt.MqttError as exc:
        return CheckResult(source.name, "mqtt", url, False, str(exc) or type(exc).__name__)
    if refused:
        return CheckResult(
            source.name, "mqtt", url, False, "subscription refused: " + ", ".join(refused)
        )
    return CheckResult(source.name, "mqtt", url, True, f"subscribed to {len(filters)} filter(s)")


def _refused(granted: object) -> bool:
    """A SUBACK entry (an int QoS or a paho ReasonCode) that reports a failure."""
    failure = getattr(granted, "is_failure", None)
    if isinstance(failure, bool):
        return failure
    return isinstance(granted, int) and granted >= _SUBACK_FAILURE


def _target(source: object) -> str:
    for attr in ("endpoint", "broker", "host", "url"):
        value = getattr(source, attr, None)
        if value:
            return str(value)
    return "-"


async def _check_adapter(
    source_config: object, config: EdgeConfig, timeout_s: float
) -> CheckResult:
    """Start the real adapter; it must connect (and, for OPC UA, deliver every node)."""
    name = str(getattr(source_config, "name", "?"))
    kind = str(getattr(source_config, "type", "?"))
    target = _target(source_config)
    sink = _CheckSink()
    wanted: set[tuple[str, str]] = set()
    if isinstance(source_config, OpcUaSourceConfig):
        wanted = {(n.asset, n.signal) for n in source_config.nodes}
    source: Source = build_source(source_config, sink, config)  # type: ignore[arg-type]

    def done() -> bool:
        return source.stats.connected and wanted <= sink.seen

    async with source:
        try:
            async with asyncio.timeout(timeout_s):
                while not done():
                    sink.changed.clear()
                    await sink.changed.wait()
        except TimeoutError:
            pass
        # Judge before leaving: stopping the adapter marks it disconnected.
        connected, seen = source.stats.connected, set(sink.seen)
        error = getattr(source, "last_error", None)
    if connected and wanted <= seen:
        detail = f"connected, read {len(wanted)} node(s)" if wanted else "connected"
        return CheckResult(name, kind, target, True, detail)
    if not connected:
        reason = error or f"not connected within {timeout_s:g} s"
        return CheckResult(name, kind, target, False, str(reason))
    missing = sorted(f"{a} {s}" for a, s in wanted - seen)
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return CheckResult(
        name, kind, target, False, f"connected, but no value within {timeout_s:g} s for {shown}"
    )


async def check_connections(
    config: EdgeConfig, timeout_s: float = DEFAULT_TIMEOUT_S
) -> list[CheckResult]:
    """Try the uplink and every source concurrently; one result each, uplink first."""
    cfg = _check_config(config)
    checks: list[Awaitable[CheckResult]] = [check_uplink(config, timeout_s)]
    for source in cfg.sources:
        if isinstance(source, MqttSourceConfig):
            checks.append(_check_mqtt(source, config, timeout_s))
        else:
            checks.append(_check_adapter(source, cfg, timeout_s))
    return list(await asyncio.gather(*checks))


__all__ = ["CheckResult", "check_connections", "check_uplink"]
