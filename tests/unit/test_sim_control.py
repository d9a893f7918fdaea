"""The simulator's control hook: a forced stop state replaces the scenario over its span,
leaves what came before untouched, and bad requests get a clear answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from devices.control import SimControlError, handle_request
from devices.scenario import MachineScenario, ScenarioParams
from devices.timeutil import US, from_us, to_us
from karkhana.config.factory import Site
from karkhana.models import MachineState as S

START = datetime(2024, 5, 6, 6, 0, tzinfo=UTC)  # a Monday, shift start (site in UTC)
RUNNING_ONLY = ScenarioParams(
    ideal_cycle_s=1.0,
    speed_factor=1.0,
    breakdowns_per_hour=0,
    short_stops_per_hour=0,
    changeovers_per_shift=0,
    idle_per_shift=0,
    slow_periods_per_shift=0,
    reject_rate=0,
    reject_bursts_per_shift=0,
)


def _site() -> Site:
    return Site.model_validate(
        {
            "id": "s",
            "timezone": "UTC",
            "calendar": {"shifts": [{"name": "a", "start": "06:00", "end": "14:00"}]},
            "areas": [
                {"id": "a", "lines": [{"id": "l", "machines": [{"id": "m", "ideal_cycle_s": 1}]}]}
            ],
        }
    )


def test_forced_fault_replaces_the_scenario_over_its_span_only() -> None:
    t0 = to_us(START)
    sc = MachineScenario("s/a/l/m", _site(), RUNNING_ONLY, seed=1, origin=t0)
    minute = 60 * US
    before = sc.counts_before(t0 + 10 * minute)
    sc.force(t0 + 10 * minute, t0 + 20 * minute, S.FAULT)

    assert sc.state_at(t0 + 10 * minute - 1) is S.RUNNING
    assert sc.state_at(t0 + 10 * minute) is S.FAULT
    assert sc.state_at(t0 + 20 * minute - 1) is S.FAULT
    assert sc.state_at(t0 + 20 * minute) is S.RUNNING
    assert sc.state_changes(t0 + 5 * minute, t0 + 25 * minute) == [
        (t0 + 10 * minute, S.FAULT),
        (t0 + 20 * minute, S.RUNNING),
    ]
    # A unit every second, strictly inside a running stretch (docs/simulator.md): 599 in
    # the 10 minutes before the fault, none during it, 599 in the 10 minutes after it.
    assert sc.counts_before(t0 + 10 * minute) == before
    assert before[0] == 599
    assert sc.counts_before(t0 + 20 * minute)[0] == 599
    assert sc.counts_before(t0 + 30 * minute)[0] == 599 + 599
    assert sc.spans(t0 + 30 * minute) == [
        (t0, t0 + 10 * minute, S.RUNNING),
        (t0 + 10 * minute, t0 + 20 * minute, S.FAULT),
        (t0 + 20 * minute, t0 + 30 * minute, S.RUNNING),
    ]
    with pytest.raises(ValueError, match="stop state"):
        sc.force(t0 + 40 * minute, t0 + 50 * minute, S.RUNNING)


class _Target:
    def __init__(self) -> None:
        self.calls: list[tuple[str, S, float]] = []

    def force_state(self, machine: str, state: S, duration_s: float) -> tuple[datetime, datetime]:
        if machine != "s/a/l/m":
            raise SimControlError(f"unknown machine {machine!r}")
        self.calls.append((machine, state, duration_s))
        return from_us(0), from_us(int(duration_s * US))


def test_requests_are_answered_and_bad_ones_refused_with_a_reason() -> None:
    target = _Target()
    ok = {"id": "r1", "command": "force_state", "machine": "s/a/l/m", "state": "fault"}
    answer = handle_request(target, json.dumps({**ok, "duration_s": 60}).encode())
    assert answer == {
        "id": "r1",
        "ok": True,
        "machine": "s/a/l/m",
        "state": "fault",
        "from": "1970-01-01T00:00:00Z",
        "to": "1970-01-01T00:01:00Z",
    }
    assert target.calls == [("s/a/l/m", S.FAULT, 60.0)]

    for payload, problem in [
        (b"\xff not json", "payload"),
        (json.dumps({**ok, "duration_s": 0}).encode(), "duration_s"),
        (json.dumps({**ok, "state": "exploded", "duration_s": 1}).encode(), "state"),
        (json.dumps({**ok, "command": "reboot", "duration_s": 1}).encode(), "command"),
        (json.dumps({**ok, "machine": "x/y/z/w", "duration_s": 1}).encode(), "unknown machine"),
    ]:
        answer = handle_request(target, payload)
        assert answer["ok"] is False, payload
        assert problem in answer["error"], answer
    assert len(target.calls) == 1
