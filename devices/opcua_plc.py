"""A simulated PLC: an in-process asyncua OPC UA server exposing one machine's variables."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import cast

from asyncua import Server, ua

from devices.updates import SignalUpdate, numeric_value
from karkhana.errors import ConnectionFailed
from karkhana.models import MachineState

log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:karkhana:sim"
ENDPOINT_PATH = "/karkhana/sim/"

# Variable name, edge signal name, OPC UA type, unit.
VARIABLES: tuple[tuple[str, str, ua.VariantType, str | None], ...] = (
    ("StateCode", "state", ua.VariantType.Int32, None),
    ("Mode", "mode", ua.VariantType.Int32, None),
    ("TotalCount", "count_total", ua.VariantType.Int64, None),
    ("RejectCount", "count_reject", ua.VariantType.Int64, None),
    ("Speed", "speed", ua.VariantType.Double, "units/min"),
    ("Temperature", "temperature", ua.VariantType.Double, "degC"),
    ("Power", "power", ua.VariantType.Double, "kW"),
    ("Energy", "energy", ua.VariantType.Double, "kWh"),
)


def endpoint_url(host: str, port: int) -> str:
    return f"opc.tcp://{host}:{port}{ENDPOINT_PATH}"


def node_id(machine_id: str, name: str) -> str:
    return f"ns=2;s={machine_id}.{name}"


class OpcUaPlc:
    """One OPC UA server per machine; every write carries the simulated SourceTimestamp."""

    def __init__(
        self,
        machine_id: str,
        host: str,
        port: int,
        state_codes: dict[MachineState, int | str],
        mode_codes: dict[str, int],
        initial_ts: datetime | None = None,
    ) -> None:
        self.machine_id = machine_id
        self._host = host
        self._port = port
        self._state_codes = state_codes
        self._mode_codes = mode_codes
        self._server: Server | None = None
        self._nodes: dict[str, tuple[ua.NodeId, ua.VariantType]] = {}
        # Placeholder values carry the simulated start time, so a client that subscribes
        # before the first real values are written never sees a wall-clock timestamp.
        self._initial_ts = initial_ts

    @property
    def endpoint(self) -> str:
        return endpoint_url(self._host, self._port)

    async def __aenter__(self) -> OpcUaPlc:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"karkhana simulated PLC {self.machine_id}")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(NAMESPACE_URI)
        if idx != 2:
            raise RuntimeError(f"namespace {NAMESPACE_URI} got index {idx}, expected 2")
        obj = await server.nodes.objects.add_object(
            ua.NodeId.from_string(f"ns={idx};s={self.machine_id}"),
            ua.QualifiedName(self.machine_id, idx),
        )
        for name, signal, vtype, _unit in VARIABLES:
            nid = ua.NodeId.from_string(node_id(self.machine_id, name))
            initial: int | float = 0.0 if vtype is ua.VariantType.Double else 0
            await obj.add_variable(nid, ua.QualifiedName(name, idx), ua.Variant(initial, vtype))
            if self._initial_ts is not None:
                await server.write_attribute_value(
                    nid,
                    ua.DataValue(
                        ua.Variant(initial, vtype),
                        SourceTimestamp=cast(ua.DateTime, self._initial_ts),
                        ServerTimestamp=cast(ua.DateTime, self._initial_ts),
                    ),
                )
            self._nodes[signal] = (nid, vtype)
        try:
            await server.start()
        except OSError as exc:
            raise ConnectionFailed(
                f"cannot start the OPC UA server for {self.machine_id} on {self.endpoint}: {exc}"
            ) from exc
        self._server = server
        log.info("simulated PLC %s listening on %s", self.machine_id, self.endpoint)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    async def publish(self, updates: Sequence[SignalUpdate]) -> None:
        server = self._server
        if server is None:
            raise RuntimeError("the PLC server is not running")
        for update in updates:
            target = self._nodes.get(update.signal)
            if target is None:
                continue
            nid, vtype = target
            value = numeric_value(update, self._state_codes, self._mode_codes)
            if vtype is ua.VariantType.Double:
                value = float(value)
            ts = cast(ua.DateTime, update.ts)
            dv = ua.DataValue(ua.Variant(value, vtype), SourceTimestamp=ts, ServerTimestamp=ts)
            await server.write_attribute_value(nid, dv)


class PlcGroup:
    """Starts and stops several PLC servers concurrently (stopping one takes about a second)."""

    def __init__(self, plcs: Sequence[OpcUaPlc]) -> None:
        self.plcs = list(plcs)

    async def __aenter__(self) -> PlcGroup:
        results = await asyncio.gather(
            *(plc.__aenter__() for plc in self.plcs), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            started = [p for p, r in zip(self.plcs, results, strict=True) if r is p]
            await asyncio.gather(*(p.__aexit__(None, None, None) for p in started))
            raise errors[0]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.gather(*(p.__aexit__(exc_type, exc, tb) for p in self.plcs))
