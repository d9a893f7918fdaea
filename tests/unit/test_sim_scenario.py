"""The scenario engine: calendar, determinism, units only while running."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devices.config import load_simulation, scenario_params
from devices.scenario import MachineScenario, ScenarioParams, generate_shift
from devices.timeutil import US, from_us, to_us
from karkhana.calendar import shift_instances
from karkhana.config.factory import FactoryConfig, Site, load_factory
from karkhana.models import MachineState as S

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "factory.yaml"
# Monday 2024-05-06 06:00 in Asia/Karachi (UTC+5, no daylight saving time).
MONDAY_0600 = datetime(2024, 5, 6, 1, 0, tzinfo=UTC)
QUIET = ScenarioParams(
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


def _scenarios(
    factory: FactoryConfig, origin: datetime, seed: int | None = None
) -> dict[str, MachineScenario]:
    sim = load_simulation(factory, EXAMPLE)
    out = {}
    for ref in factory.machines():
        params = scenario_params(
            sim.machines[ref.path], ref.machine.ideal_cycle_s, sim.power_outages
        )
        out[ref.path] = MachineScenario(
            ref.path, ref.site, params, sim.seed if seed is None else seed, to_us(origin)
        )
    return out


def test_hand_made_shift_frame_and_units() -> None:
    # One hour: break [20, 30) min, planned stop [48:20, 50) min, outage [50, 55) min
    # overlapping the planned stop's end; nothing random (all rates zero), cycle 1 s.
    t0 = to_us(MONDAY_0600)
    s = lambda minutes: t0 + round(minutes * 60 * US)  # noqa: E731
    segments = generate_shift(
        QUIET,
        random.Random(1),
        (s(0), s(60)),
        breaks=[(s(20), s(30))],
        planned_stops=[(s(48 + 1 / 3), s(51))],
        outages=[(s(50), s(55))],
    )
    got = [(seg.start, seg.end, seg.state) for seg in segments]
    assert got == [
        (s(0), s(20), S.RUNNING),
        (s(20), s(30), S.IDLE),
        (s(30), s(48 + 1 / 3), S.RUNNING),
        (s(48 + 1 / 3), s(50), S.PLANNED_STOP),
        (s(50), s(55), S.OFF),  # the outage wins over the planned stop
        (s(55), s(60), S.RUNNING),
    ]
    # Units complete strictly inside running segments every second: 1199 + 1099 + 299.
    units = [seg.units_before(seg.end)[0] for seg in segments]
    assert units == [1199, 0, 1099, 0, 0, 299]
    for seg in segments:
        for ts, _ in seg.unit_times():
            assert seg.state is S.RUNNING and seg.start < ts < seg.end


def test_cycle_time_follows_speed_factor() -> None:
    params = replace(QUIET, speed_factor=0.8)
    t0 = to_us(MONDAY_0600)
    (seg,) = generate_shift(params, random.Random(1), (t0, t0 + 100 * US), [], [], [])
    assert seg.cycle_us == 1_250_000  # ideal 1 s / 0.8
    assert seg.units_before(seg.end)[0] == 79  # 100 s / 1.25 s = 80, the 80th at the end


def test_same_seed_same_timeline_different_seed_different() -> None:
    factory = load_factory(EXAMPLE)
    a = _scenarios(factory, MONDAY_0600)
    b = _scenarios(factory, MONDAY_0600)
    c = _scenarios(factory, MONDAY_0600, seed=8)
    until = to_us(MONDAY_0600 + timedelta(days=2))
    for path in a:
        a[path].extend_to(until)
        # Generated in small steps instead of one go: still the same timeline.
        t = to_us(MONDAY_0600)
        while t < until:
            t += 3600 * US
            b[path].extend_to(t)
        assert a[path].spans(until) == b[path].spans(until)
        assert a[path].counts_before(until) == b[path].counts_before(until)
        assert a[path].spans(until) != c[path].spans(until)
    # Machines differ from one another (the machine path is part of the seed).
    spans = [s.spans(until) for s in a.values()]
    assert spans[0] != spans[1]


def test_timeline_does_not_depend_on_where_the_simulation_starts() -> None:
    factory = load_factory(EXAMPLE)
    early = _scenarios(factory, MONDAY_0600)
    late = _scenarios(factory, MONDAY_0600 + timedelta(hours=3))
    probe = to_us(MONDAY_0600 + timedelta(hours=3))
    for path in early:
        for k in range(0, 20 * 3600, 97):
            t = probe + k * US
            assert early[path].state_at(t) is late[path].state_at(t)


def _all_breaks(site: Site, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    return [b for inst in shift_instances(site, start, end) for b in inst.breaks]


def test_breaks_idle_outages_off_and_off_outside_shifts() -> None:
    factory = load_factory(EXAMPLE)
    site = factory.sites[0]
    start = MONDAY_0600 - timedelta(days=1)  # Sunday 06:00 local
    end = start + timedelta(days=3)
    tz = site.tz
    for scenario in _scenarios(factory, start).values():
        spans = scenario.spans(to_us(end))

        def states_during(a: datetime, b: datetime) -> set[S]:
            lo, hi = to_us(a), to_us(b)
            return {st for x, y, st in spans if x < hi and y > lo}  # noqa: B023

        # Breaks (none overlaps the 11:40 outage in this factory): idle for the whole break,
        # and the machine runs again right after it.
        for b_start, b_end in _all_breaks(site, start, end):
            assert states_during(b_start, b_end) == {S.IDLE}, (scenario.path, b_start)
            assert scenario.state_at(to_us(b_end)) is S.RUNNING
        # Site-wide outage 11:40 local for 12 min, every day: off for every machine.
        day = start.astimezone(tz).date()
        for d in range(3):
            local = datetime.combine(day + timedelta(days=d), datetime.min.time(), tzinfo=tz)
            a = (local + timedelta(hours=11, minutes=40)).astimezone(UTC)
            assert states_during(a, a + timedelta(minutes=12)) == {S.OFF}, scenario.path
        # Sunday night has no shift c: off from Sunday 22:00 to Monday 06:00 local.
        sunday_22 = MONDAY_0600 - timedelta(hours=8)
        assert states_during(sunday_22, MONDAY_0600) == {S.OFF}
        assert scenario.state_at(to_us(MONDAY_0600)) is S.RUNNING


def test_units_only_while_running_and_counts_match_unit_times() -> None:
    factory = load_factory(EXAMPLE)
    until = MONDAY_0600 + timedelta(hours=16)
    for scenario in _scenarios(factory, MONDAY_0600).values():
        u = to_us(until)
        scenario.extend_to(u)
        units: list[tuple[int, bool]] = []
        for seg in scenario.segments_between(to_us(MONDAY_0600), u):
            times = seg.unit_times()
            if seg.state is not S.RUNNING:
                assert times == []
            units += [(ts, rej) for ts, rej in times if ts < u]
        assert units == sorted(units)
        assert all(ts > to_us(MONDAY_0600) for ts, _ in units)
        for probe in (u, u - 777_777_777, to_us(MONDAY_0600) + 12_345_678_901):
            before = [(ts, rej) for ts, rej in units if ts < probe]
            n, r, last, last_rej = scenario.counts_before(probe)
            assert n == len(before)
            assert r == sum(rej for _, rej in before)
            assert last == before[-1][0]
            assert last_rej == max(ts for ts, rej in before if rej)


def test_reject_times_are_the_rejects_between_two_instants() -> None:
    factory = load_factory(EXAMPLE)
    start = to_us(MONDAY_0600)
    until = to_us(MONDAY_0600 + timedelta(hours=8))
    for scenario in _scenarios(factory, MONDAY_0600).values():
        scenario.extend_to(until)
        rejects = [
            ts
            for seg in scenario.segments_between(start, until)
            for ts, rej in seg.unit_times()
            if rej and ts < until
        ]
        assert rejects, scenario.path
        # Windows of 48 s (one tick at x480), odd lengths, and bounds on a reject itself.
        bounds = [start + k * 48 * US for k in range(8 * 75 + 1)]
        bounds += [start + k * 7_777_777 for k in range(3000)] + rejects[:50]
        for a, b in zip(sorted(bounds), sorted(bounds)[1:], strict=False):
            expected = [ts for ts in rejects if a <= ts < b]
            assert scenario.reject_times(a, b) == expected
            assert len(expected) == scenario.counts_before(b)[1] - scenario.counts_before(a)[1]


def test_all_incident_kinds_appear_and_short_stops_stay_short() -> None:
    factory = load_factory(EXAMPLE)
    sim = load_simulation(factory, EXAMPLE)
    until = to_us(MONDAY_0600 + timedelta(days=3))
    for ref in factory.machines():
        scenario = _scenarios(factory, MONDAY_0600)[ref.path]
        scenario.extend_to(until)
        states = {seg.state for seg in scenario.segments}
        expected = {S.RUNNING, S.IDLE, S.STOPPED, S.FAULT, S.SETUP, S.OFF}
        if sim.machines[ref.path].short_stops_per_hour == 0:  # the Modbus loom
            expected.discard(S.STOPPED)
            assert S.STOPPED not in states, ref.path
        assert expected <= states, ref.path
        for seg in scenario.segments:
            if seg.state is S.STOPPED:
                assert (seg.end - seg.start) / US < ref.short_stop_threshold_s
        # Reduced speed periods give a longer cycle than the normal one.
        cycles = {seg.cycle_us for seg in scenario.segments if seg.state is S.RUNNING}
        assert len(cycles) >= 2


def test_reject_rate_is_respected_over_many_units() -> None:
    params = replace(QUIET, ideal_cycle_s=0.1, reject_rate=0.05)
    t0 = to_us(MONDAY_0600)
    (seg,) = generate_shift(params, random.Random(3), (t0, t0 + 8 * 3600 * US), [], [], [])
    n, r, _, _ = seg.units_before(seg.end)
    assert n == 287_999
    assert 0.045 < r / n < 0.055
    assert from_us(seg.start) == MONDAY_0600


def test_modbus_loom_states_outlast_two_ticks_in_the_end_to_end_shift() -> None:
    # tests/e2e/test_full_shift.py runs shift "a" of Monday 2026-11-23 at 480x with 10 ticks
    # per second: one tick is 48 simulated seconds. A Modbus register shows only the latest
    # value, so a state shorter than two ticks could be missed (see factory.yaml).
    factory = load_factory(EXAMPLE)
    start = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
    loom = _scenarios(factory, start)["lahore/weaving/line-1/loom-04"]
    spans = loom.spans(to_us(start + timedelta(hours=8)))
    assert len(spans) > 3
    shortest = min(end - begin for begin, end, _ in spans)
    assert shortest >= 2 * 48 * US, [(from_us(a), s, (b - a) / US) for a, b, s in spans]
