"""Compare the API's OEE items with the simulator's ground truth."""

from __future__ import annotations

import bisect
from datetime import datetime
from pathlib import Path
from typing import Any

from karkhana.config.factory import load_factory
from karkhana.models import to_ns
from services.kpi import SampleSource
from services.store import open_reader

RATIO_TOLERANCE = 0.005  # 0.5 percentage points
TIME_TOLERANCE_S = 1.0
RATIOS = ("availability", "performance", "quality", "oee", "oee_excluding_external", "teep",
          "utilization")  # fmt: skip
# Loss-tree entries: API name -> truth key (seconds).
# The "kpis" block: ratios (0.5 pp), times (1 s), counts (exact) and rates or energies,
# compared relative to the truth (RELATIVE_TOLERANCE): the energy meter is read at the
# simulator's ticks, so the last reading before the window end is up to a tick old.
KPI_RATIOS = ("teep", "utilization", "first_pass_yield", "scrap_ratio", "automation_rate",
              "data_completeness")  # fmt: skip
KPI_TIMES = ("mtbf_s", "mttr_s")
KPI_COUNTS = ("failures", "manual_interventions")
KPI_RELATIVE = ("throughput_per_h", "energy_kwh", "energy_per_good_kwh",
                "manual_interventions_per_h")  # fmt: skip
RELATIVE_TOLERANCE = 0.005
LEVELS = {"machine": "machines", "line": "lines", "site": "sites"}
LOSSES = {
    "breakdowns": "breakdowns_s",
    "setup": "setup_s",
    "small_stops": "small_stops_s",
    "reduced_speed": "reduced_speed_s",
    "other_stops": "other_stops_s",
}


def startup_reject_slack(truth: dict[str, Any], factory: Path, db: Path) -> dict[str, float]:
    """Per machine and line: rejects whose startup-or-production class the stored data
    cannot tell. A reject counter sample carries every reject since the previous sample at
    the time of the last one; when a startup window ends between the two, all but the last
    of the sample's rejects may lie on either side of the end. The simulator publishes each
    reject on its own (slack 0); a polled device (Modbus) can merge several."""
    windows = {r.path: r.startup_window_s for r in load_factory(factory).machines()}
    with open_reader(db) as reader:
        return _slack(truth, reader, windows)


def _slack(
    truth: dict[str, Any], reader: SampleSource, startup_window_s: dict[str, float]
) -> dict[str, float]:
    slack: dict[str, float] = {}
    for path, machine in truth["machines"].items():
        window_ns = round(startup_window_s[path] * 1e9)
        points = reader.points(path, "count_reject", 0, 2**62)
        times = [p.ts_ns for p in points]
        total = 0.0
        for text in machine["startups"]:
            end = to_ns(datetime.fromisoformat(text.replace("Z", "+00:00"))) + window_ns
            k = bisect.bisect_left(times, end)  # first sample at or after the window end
            if 0 < k < len(points) and times[k] > end:
                # The sample's last reject is at its own timestamp, after the end; only the
                # others may lie before it.
                total += float(points[k].value) - float(points[k - 1].value) - 1
        slack[path] = total
        line = path.rsplit("/", 1)[0]
        slack[line] = slack.get(line, 0.0) + total
        site = path.split("/", 1)[0]
        slack[site] = slack.get(site, 0.0) + total
    return slack


def differences(
    items: list[dict[str, Any]],
    truth: dict[str, Any],
    level: str,
    startup_slack: dict[str, float] | None = None,
) -> list[str]:
    """Every way the API's items differ from the truth beyond the tolerance (empty: agree).

    Counts must be exact, times within 1 s, ratios within 0.5 percentage points. Startup
    rejects must lie between the truth minus ``startup_slack`` (the rejects the data cannot
    place on either side of a startup window's end, which the platform counts as
    production rejects) and the truth."""
    expected_all = truth[LEVELS[level]]
    got = {item["asset"]: item for item in items}
    problems: list[str] = []
    if set(got) != set(expected_all):
        problems.append(f"assets {sorted(got)} != truth {sorted(expected_all)}")
    for path, expected in expected_all.items():
        item = got.get(path)
        if item is None:
            continue
        comps = item["components"]
        for count in ("total", "good"):
            if comps[count] != expected[count]:
                problems.append(f"{path}: {count} {comps[count]} != truth {expected[count]}")
        slack = (startup_slack or {}).get(path, 0.0)
        lowest = expected["startup_rejects"] - slack
        if not lowest <= comps["startup_rejects"] <= expected["startup_rejects"]:
            problems.append(
                f"{path}: startup_rejects {comps['startup_rejects']} vs truth "
                f"{expected['startup_rejects']} (rejects the data cannot place: {slack:g})"
            )
        times = {
            "planned_s": (comps["planned_s"], expected["planned_s"]),
            "run_s": (comps["run_s"], expected["run_s"]),
            "window_s": (comps["window_s"], expected["calendar_s"]),
            "maintenance_s": (comps["maintenance_s"], expected["maintenance_s"]),
        }
        for name, key in LOSSES.items():
            times[f"losses.{name}"] = (item["losses"][name]["seconds"], expected["losses"][key])
        causes = set(comps["external_s"]) | set(expected["losses"]["external_s"])
        for cause in causes:
            times[f"external.{cause}"] = (
                comps["external_s"].get(cause),
                expected["losses"]["external_s"].get(cause),
            )
        for name, (value, want) in times.items():
            if value is None or want is None or abs(value - want) > TIME_TOLERANCE_S:
                problems.append(f"{path}: {name} {value} vs truth {want}")
        for ratio in RATIOS:
            value = item[ratio]
            if value is None or abs(value - expected[ratio]) > RATIO_TOLERANCE:
                problems.append(f"{path}: {ratio} {value} vs truth {expected[ratio]:.4f}")
        problems += [f"{path}: {p}" for p in kpi_differences(item["kpis"], expected["kpis"])]
    return problems


def kpi_differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """How an item's ``kpis`` block differs from the truth's beyond the tolerances. A KPI
    that is undefined (null) must be undefined on both sides."""
    problems: list[str] = []
    checks = [(k, RATIO_TOLERANCE, False) for k in KPI_RATIOS]
    checks += [(k, TIME_TOLERANCE_S, False) for k in KPI_TIMES]
    checks += [(k, 0.0, False) for k in KPI_COUNTS]
    checks += [(k, RELATIVE_TOLERANCE, True) for k in KPI_RELATIVE]
    for name, tolerance, relative in checks:
        value, expected = got[name], want[name]
        if value is None or expected is None:
            if value is not expected:
                problems.append(f"kpis.{name} {value} vs truth {expected}")
            continue
        allowed = tolerance * abs(expected) if relative else tolerance
        if abs(value - expected) > allowed:
            problems.append(f"kpis.{name} {value} vs truth {expected}")
    return problems
