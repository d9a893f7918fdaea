"""A control hook of the simulator over MQTT: tests and demos force a machine into a stop
state (a fault, a changeover...) and watch the platform show it.

Request on ``karkhana/v1/sim/control`` (JSON)::

    {"id": "t1", "command": "force_state", "machine": "lahore/weaving/line-1/loom-01",
     "state": "fault", "duration_s": 600}

One answer per request on ``karkhana/v1/sim/control/result``: ``{"id": "t1", "ok": true,
"machine": ..., "state": "fault", "from": "...Z", "to": "...Z"}`` (the forced span in
simulated time), or ``{"id": ..., "ok": false, "error": "..."}`` for a request it cannot
do (also logged). Nothing here touches real devices: only ``karkhana sim`` and
``karkhana demo`` listen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Protocol

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from karkhana.errors import KarkhanaError
from karkhana.models import MachineState, iso_utc
from karkhana.mqtt_url import parse_broker_url
from karkhana.tasks import cancel_and_wait
from karkhana.topics import PREFIX

log = logging.getLogger(__name__)

CONTROL_TOPIC = f"{PREFIX}/sim/control"
RESULT_TOPIC = f"{PREFIX}/sim/control/result"
_RECONNECT_S = 2.0


class SimControlError(KarkhanaError):
    """A control request the simulator cannot carry out (unknown machine, bad state...)."""


class ForceState(BaseModel):
    """``force_state``: the machine goes to ``state`` from the next tick for ``duration_s``
    simulated seconds, then back to its scenario."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    command: Literal["force_state"]
    machine: str
    state: MachineState
    duration_s: float = Field(gt=0, le=7 * 86_400)


class Controllable(Protocol):
    def force_state(
        self, machine: str, state: MachineState, duration_s: float
    ) -> tuple[datetime, datetime]: ...


def handle_request(target: Controllable, payload: bytes) -> dict[str, Any]:
    """The answer to one request payload; never raises for bad input."""
    request_id: object = None
    with contextlib.suppress(ValueError):
        raw = json.loads(payload)
        if isinstance(raw, dict):
            request_id = raw.get("id")
    try:
        request = ForceState.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        return {"id": request_id, "ok": False, "error": f"{where}: {first['msg']}"}
    try:
        start, end = target.force_state(request.machine, request.state, request.duration_s)
    except SimControlError as exc:
        return {"id": request.id, "ok": False, "error": str(exc)}
    return {
        "id": request.id,
        "ok": True,
        "machine": request.machine,
        "state": request.state.value,
        "from": iso_utc(start),
        "to": iso_utc(end),
    }


class SimControl:
    """Listens on the control topic while entered; owns (and cancels) its task. A broker
    that is down is retried every few seconds: the simulator runs on without control."""

    def __init__(self, broker: str, client_id: str, target: Controllable) -> None:
        self.broker = broker
        self._url = parse_broker_url(broker)
        self._client_id = client_id
        self._target = target
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def __aenter__(self) -> SimControl:
        self._task = asyncio.create_task(self._run(), name="sim-control")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            try:
                await self._serve()
            except aiomqtt.MqttError as exc:
                self.subscribed.clear()
                log.warning("simulator control: broker %s: %s; retrying", self.broker, exc)
                await asyncio.sleep(_RECONNECT_S)

    async def _serve(self) -> None:
        async with aiomqtt.Client(
            self._url.host, self._url.port, identifier=self._client_id, keepalive=30
        ) as client:
            await client.subscribe(CONTROL_TOPIC, qos=1)
            self.subscribed.set()
            async for message in client.messages:
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                answer = handle_request(self._target, data)
                if not answer["ok"]:
                    log.warning("simulator control request refused: %s", answer["error"])
                await client.publish(RESULT_TOPIC, json.dumps(answer).encode(), qos=1)
