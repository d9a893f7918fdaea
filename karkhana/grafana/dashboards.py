"""The Grafana dashboards of karkhana, generated from code (``docs/dashboards.md``).

Every panel queries the InfluxDB store with InfluxQL, against the measurements documented in
``docs/storage.md``: ``samples`` (raw data), ``kpi`` (15-minute OEE components),
``downtime`` and ``machine_state`` (written by the API's KPI publisher), ``platform``,
``edge_agent`` and ``dead_letters`` (written by the gateway). Every selected column is named
(``AS "..."``) and every query filters on the template variables it is given, so the column
names a panel shows are part of this file's contract with the store.

``python -m karkhana.grafana [DIR]`` writes the JSON files (default ``dashboards/``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from karkhana.storage.influx_schema import DEAD_LETTERS, SAMPLES

DATASOURCE_UID = "karkhana-influxdb"
DATASOURCE: dict[str, str] = {"type": "influxdb", "uid": DATASOURCE_UID}
SCHEMA_VERSION = 39
KPI = "kpi"
DOWNTIME = "downtime"
MACHINE_STATE = "machine_state"
PLATFORM = "platform"
EDGE_AGENT = "edge_agent"
BUCKET_INTERVAL = "15m"
"""KPI series are 15-minute buckets: panels over them group by at least that."""

STATE_COLORS = {
    "running": "green",
    "idle": "yellow",
    "stopped": "orange",
    "fault": "red",
    "setup": "blue",
    "planned_stop": "purple",
    "off": "#6e6e6e",
    "unknown": "#2b2b2b",
}

JSON = dict[str, Any]


# --- template variables and filters ------------------------------------------------------------


def _variable(name: str, query: str, *, multi: bool = True, label: str | None = None) -> JSON:
    return {
        "name": name,
        "label": label or name.capitalize(),
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "refresh": 1,
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "current": {},
        "options": [],
        "hide": 0,
    }


ASSET_LEVELS = ("site", "area", "line", "machine")


def asset_variables(levels: Sequence[str], *, single_machine: bool = False) -> list[JSON]:
    """``site``, ``area``, ``line`` (and ``machine``) from the tags of ``samples``, each
    narrowed by the ones before it (line ids repeat across areas, hence ``area``)."""
    out: list[JSON] = []
    for i, level in enumerate(levels):
        where = asset_filter(levels[:i])
        query = f'SHOW TAG VALUES FROM "{SAMPLES}" WITH KEY = "{level}"'
        if where:
            query += f" WHERE {where}"
        multi = not (single_machine and level == "machine")
        out.append(_variable(level, query, multi=multi))
    return out


def asset_filter(levels: Sequence[str]) -> str:
    """``"site" =~ /^$site$/ AND ...``: Grafana expands a variable to a regex alternation."""
    return " AND ".join(f'"{level}" =~ /^${level}$/' for level in levels)


# --- panels ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """One InfluxQL target; ``table`` asks Grafana for a table frame instead of series."""

    text: str
    table: bool = False


@dataclass(slots=True)
class Panel:
    type: str
    title: str
    queries: list[Query]
    w: int = 12
    h: int = 8
    unit: str | None = None
    description: str = ""
    min: float | None = None
    max: float | None = None
    interval: str | None = None
    options: JSON = field(default_factory=dict)
    custom: JSON = field(default_factory=dict)
    mappings: list[JSON] = field(default_factory=list)
    overrides: list[JSON] = field(default_factory=list)
    transformations: list[JSON] = field(default_factory=list)

    def to_json(self, panel_id: int, x: int, y: int) -> JSON:
        defaults: JSON = {"custom": self.custom, "mappings": self.mappings}
        if self.unit is not None:
            defaults["unit"] = self.unit
        if self.min is not None:
            defaults["min"] = self.min
        if self.max is not None:
            defaults["max"] = self.max
        out: JSON = {
            "id": panel_id,
            "type": self.type,
            "title": self.title,
            "description": self.description,
            "datasource": DATASOURCE,
            "gridPos": {"x": x, "y": y, "w": self.w, "h": self.h},
            "targets": [
                {
                    "refId": chr(ord("A") + i),
                    "datasource": DATASOURCE,
                    "query": q.text,
                    "rawQuery": True,
                    "resultFormat": "table" if q.table else "time_series",
                }
                for i, q in enumerate(self.queries)
            ],
            "fieldConfig": {"defaults": defaults, "overrides": self.overrides},
            "options": self.options,
            "transformations": self.transformations,
        }
        if self.interval is not None:
            out["interval"] = self.interval
        return out


def _layout(panels: Sequence[Panel]) -> list[JSON]:
    """Left to right, wrapping at Grafana's 24 columns."""
    out: list[JSON] = []
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        if x + p.w > 24:
            x, y, row_h = 0, y + row_h, 0
        out.append(p.to_json(i, x, y))
        x += p.w
        row_h = max(row_h, p.h)
    return out


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: list[JSON],
    panels: Sequence[Panel],
    *,
    time_from: str = "now-12h",
    refresh: str = "1m",
) -> JSON:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["karkhana"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": refresh,
        "time": {"from": time_from, "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [
            {
                "title": "karkhana",
                "type": "dashboards",
                "tags": ["karkhana"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "panels": _layout(panels),
    }


# --- query text ------------------------------------------------------------------------------


def select(
    columns: str,
    measurement: str,
    where: Sequence[str],
    group_by: Sequence[str] = (),
    *,
    every: str | None = None,
    fill: str | None = None,
    tail: str = "",
) -> str:
    """``SELECT columns FROM measurement WHERE $timeFilter AND ...`` with its grouping."""
    text = f'SELECT {columns} FROM "{measurement}" WHERE ' + " AND ".join(
        ["$timeFilter", *[w for w in where if w]]
    )
    groups = ([f"time({every})"] if every else []) + [f'"{g}"' for g in group_by]
    if groups:
        text += " GROUP BY " + ", ".join(groups)
    if fill:
        text += f" fill({fill})"
    return text + tail


OEE = 'sum("ideal_s") / sum("planned_s") * sum("good") / sum("total") AS "oee"'
APQ = (
    'sum("run_s") / sum("planned_s") AS "availability", '
    'sum("ideal_s") / sum("run_s") AS "performance", '
    'sum("good") / sum("total") AS "quality"'
)
SIX_BIG_LOSSES = (
    'sum("down_s__fault") AS "breakdowns", sum("down_s__setup") AS "setup", '
    'sum("short_stop_s") AS "small_stops", '
    'sum("run_s") - sum("short_stop_s") - sum("ideal_s") AS "reduced_speed", '
    'sum("startup_reject_s") AS "startup_rejects", '
    'sum("production_reject_s") AS "production_rejects"'
)
STOP_CATEGORIES = ("fault", "setup", "idle", "stopped", "off")


def _state_mappings() -> list[JSON]:
    return [
        {
            "type": "value",
            "options": {
                state: {"text": state, "color": color, "index": i}
                for i, (state, color) in enumerate(STATE_COLORS.items())
            },
        }
    ]


def _signal(name: str, where: Sequence[str]) -> str:
    """Mean of a numeric signal (float field) per interval and machine."""
    return select(
        'mean("value_f") AS "value"',
        SAMPLES,
        [*where, f"\"signal\" = '{name}'"],
        ["machine"],
        every="$__interval",
        fill="none",
    )


def _state_timeline(where: Sequence[str]) -> Panel:
    return Panel(
        "state-timeline",
        "Machine state",
        [
            Query(
                select(
                    'last("state") AS "state"',
                    MACHINE_STATE,
                    where,
                    ["machine"],
                    every="$__interval",
                    fill="previous",
                )
            )
        ],
        w=24,
        h=9,
        description="Canonical state (factory.yaml state maps applied) of each machine.",
        options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8},
        mappings=_state_mappings(),
    )


# --- the five dashboards ----------------------------------------------------------------------


def factory_overview() -> JSON:
    levels = ("site", "area", "line")
    where = [asset_filter(levels)]
    per_line = ["area", "line"]
    panels = [
        Panel(
            "gauge",
            "OEE by line",
            [Query(select(OEE, KPI, where, per_line))],
            w=8,
            unit="percentunit",
            min=0,
            max=1,
            description="Availability x performance x quality of the summed components.",
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "showThresholdMarkers": True},
        ),
        Panel(
            "bargauge",
            "Availability, performance, quality by line",
            [Query(select(APQ, KPI, where, per_line))],
            w=16,
            unit="percentunit",
            min=0,
            max=1,
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "orientation": "horizontal"},
        ),
        Panel(
            "timeseries",
            "OEE by line over time",
            [Query(select(OEE, KPI, where, per_line, every="$__interval", fill="none"))],
            w=16,
            unit="percentunit",
            min=0,
            interval=BUCKET_INTERVAL,
        ),
        Panel(
            "stat",
            "Units by line (total, good)",
            [Query(select('sum("total") AS "total", sum("good") AS "good"', KPI, where, per_line))],
            w=8,
            unit="short",
            options={"reduceOptions": {"calcs": ["lastNotNull"]}},
        ),
        _state_timeline(where),
    ]
    return dashboard(
        "karkhana-overview",
        "karkhana: factory overview",
        "OEE, availability, performance and quality per line; machine states.",
        asset_variables(levels),
        panels,
    )


def machine_detail() -> JSON:
    where = [asset_filter(ASSET_LEVELS)]
    panels = [
        _state_timeline(where),
        Panel(
            "stat",
            "OEE, availability, performance, quality",
            [Query(select(f"{OEE}, {APQ}", KPI, where))],
            w=24,
            h=5,
            unit="percentunit",
            options={"reduceOptions": {"calcs": ["lastNotNull"]}},
        ),
        Panel(
            "timeseries",
            "Units per interval",
            [
                Query(
                    select(
                        'sum("total") AS "total", sum("good") AS "good"',
                        KPI,
                        where,
                        every="$__interval",
                        fill="none",
                    )
                )
            ],
            unit="short",
            interval=BUCKET_INTERVAL,
            custom={"drawStyle": "bars"},
        ),
        Panel(
            "timeseries",
            "Speed vs ideal (units/min)",
            [
                Query(_signal("speed", where)),
                Query(
                    select(
                        'sum("total") / sum("ideal_s") * 60 AS "ideal", '
                        'sum("total") / sum("run_s") * 60 AS "average_while_running"',
                        KPI,
                        where,
                        every="$__interval",
                        fill="none",
                    )
                ),
            ],
            unit="short",
            interval=BUCKET_INTERVAL,
            description="The speed signal; the ideal rate (1 / ideal cycle) and the average "
            "rate while running, from the KPI buckets.",
        ),
        Panel(
            "timeseries",
            "Temperature",
            [Query(_signal("temperature", where))],
            unit="celsius",
        ),
        Panel("timeseries", "Power", [Query(_signal("power", where))], unit="kwatt"),
        Panel(
            "table",
            "Downtime (long stops)",
            [
                Query(
                    select(
                        '"duration_s" AS "duration_s", "state" AS "state", '
                        '"reason" AS "reason", "open" AS "open", "planned_s" AS "planned_s"',
                        DOWNTIME,
                        [*where, '"short" = false'],
                        tail=" ORDER BY time DESC LIMIT 200",
                    ),
                    table=True,
                )
            ],
            w=24,
            h=10,
            description="Stop events at least as long as the machine's short-stop threshold; "
            "reason: the operator's coding (empty: not coded).",
            custom={"align": "auto"},
        ),
    ]
    return dashboard(
        "karkhana-machine",
        "karkhana: machine detail",
        "One machine: state, OEE, units, speed, temperature, power, downtime.",
        asset_variables(ASSET_LEVELS, single_machine=True),
        panels,
    )


def losses() -> JSON:
    where = [asset_filter(ASSET_LEVELS)]
    per_cat = ", ".join(f'sum("down_s__{c}") AS "{c}"' for c in STOP_CATEGORIES)
    panels = [
        Panel(
            "bargauge",
            "Six big losses",
            [Query(select(SIX_BIG_LOSSES, KPI, where))],
            unit="s",
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "orientation": "horizontal"},
            description="Seconds of planned time lost: breakdowns and setup (availability), "
            "small stops and reduced speed (performance), startup and production rejects "
            "(quality).",
        ),
        Panel(
            "barchart",
            "Downtime Pareto by stop category",
            [Query(select(per_cat, KPI, where))],
            unit="s",
            options={"orientation": "horizontal", "xField": "Field"},
            transformations=[
                {"id": "reduce", "options": {"reducers": ["sum"]}},
                {"id": "sortBy", "options": {"sort": [{"field": "Total", "desc": True}]}},
            ],
            description="Long-stop time by state; sorted, biggest first.",
        ),
        Panel(
            "timeseries",
            "Losses over time",
            [Query(select(SIX_BIG_LOSSES, KPI, where, every="$__interval", fill="none"))],
            unit="s",
            interval=BUCKET_INTERVAL,
            custom={"drawStyle": "bars", "stacking": {"mode": "normal"}},
        ),
        Panel(
            "barchart",
            "Downtime by machine",
            [
                Query(
                    select(
                        'sum("duration_s") AS "seconds", count("duration_s") AS "events"',
                        DOWNTIME,
                        [*where, '"short" = false'],
                        ["machine"],
                    ),
                    table=True,
                )
            ],
            unit="s",
            options={"orientation": "horizontal", "xField": "machine"},
            transformations=[
                {"id": "sortBy", "options": {"sort": [{"field": "seconds", "desc": True}]}}
            ],
        ),
        Panel(
            "table",
            "MTBF and MTTR by machine",
            [
                Query(
                    select(
                        'sum("failures") AS "failures", '
                        'sum("run_s") / sum("failures") AS "mtbf_s", '
                        'sum("down_s__fault") / sum("failures") AS "mttr_s"',
                        KPI,
                        where,
                        ["machine"],
                    ),
                    table=True,
                )
            ],
            unit="s",
            description="Run time / failures and breakdown time / failures of each machine.",
            # InfluxQL divides by zero as 0: without failures there is no MTBF or MTTR.
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": "mtbf_s|mttr_s"},
                    "properties": [
                        {
                            "id": "mappings",
                            "value": [
                                {
                                    "type": "value",
                                    "options": {"0": {"text": "no failures", "index": 0}},
                                }
                            ],
                        }
                    ],
                }
            ],
        ),
        Panel(
            "timeseries",
            "External losses",
            [Query(select("sum(/^external_s__/)", KPI, where, every="$__interval", fill="none"))],
            unit="s",
            interval=BUCKET_INTERVAL,
            description="Long stops with an external cause (factory.yaml external_causes).",
        ),
    ]
    return dashboard(
        "karkhana-losses",
        "karkhana: losses",
        "Six big losses, downtime Pareto, MTBF and MTTR.",
        asset_variables(ASSET_LEVELS),
        panels,
        time_from="now-24h",
    )


def energy() -> JSON:
    where = [asset_filter(ASSET_LEVELS)]
    panels = [
        Panel(
            "stat",
            "Energy per good unit by line",
            [
                Query(
                    select(
                        'sum("energy_kwh") / sum("good") AS "kwh_per_unit"',
                        KPI,
                        where,
                        ["area", "line"],
                    )
                )
            ],
            w=8,
            unit="kwatth",
            options={"reduceOptions": {"calcs": ["lastNotNull"]}},
        ),
        Panel(
            "timeseries",
            "Energy per interval",
            [
                Query(
                    select(
                        'sum("energy_kwh") AS "energy_kwh"',
                        KPI,
                        where,
                        ["machine"],
                        every="$__interval",
                        fill="none",
                    )
                )
            ],
            w=16,
            unit="kwatth",
            interval=BUCKET_INTERVAL,
            custom={"drawStyle": "bars", "stacking": {"mode": "normal"}},
        ),
        Panel("timeseries", "Load by machine", [Query(_signal("power", where))], unit="kwatt"),
        Panel(
            "timeseries",
            "Total load",
            [
                Query(
                    'SELECT sum("load") AS "load" FROM ('
                    + select(
                        'mean("value_f") AS "load"',
                        SAMPLES,
                        [*where, "\"signal\" = 'power'"],
                        ["machine"],
                        every="$__interval",
                        fill="none",
                    )
                    + ") WHERE $timeFilter GROUP BY time($__interval) fill(none)"
                )
            ],
            unit="kwatt",
        ),
        Panel(
            "timeseries",
            "Power outages: time off in planned production",
            [
                Query(
                    select(
                        'sum("down_s__off") AS "off_s"',
                        KPI,
                        where,
                        every="$__interval",
                        fill="none",
                    )
                )
            ],
            w=24,
            unit="s",
            interval=BUCKET_INTERVAL,
            custom={"drawStyle": "bars"},
        ),
    ]
    return dashboard(
        "karkhana-energy",
        "karkhana: energy",
        "Energy per unit, load and power outages.",
        asset_variables(ASSET_LEVELS),
        panels,
        time_from="now-24h",
    )


def platform_health() -> JSON:
    gw = ['"gateway" =~ /^$gateway$/']
    per_gw = ["gateway"]
    panels = [
        Panel(
            "timeseries",
            "Ingest rate",
            [
                Query(
                    select(
                        'mean("samples_per_s") AS "samples_per_s", '
                        'mean("messages_per_s") AS "messages_per_s"',
                        PLATFORM,
                        gw,
                        per_gw,
                        every="$__interval",
                        fill="none",
                    )
                )
            ],
            unit="short",
        ),
        Panel(
            "stat",
            "Edge agents online",
            [
                Query(
                    'SELECT sum("online") AS "online", count("online") AS "known" FROM ('
                    + select('last("online") AS "online"', EDGE_AGENT, [], ["agent"])
                    + ")"
                )
            ],
            w=6,
            options={"reduceOptions": {"calcs": ["lastNotNull"]}},
        ),
        Panel(
            "table",
            "Edge agents",
            [
                Query(
                    select(
                        'last("online") AS "online", last("ready") AS "ready", '
                        'last("sources_connected") AS "sources_connected", '
                        'last("sources") AS "sources", '
                        'last("samples_pending") AS "samples_pending"',
                        EDGE_AGENT,
                        [],
                        ["agent"],
                    ),
                    table=True,
                )
            ],
            w=6,
        ),
        Panel(
            "timeseries",
            "Gateway buffer depth",
            [
                Query(
                    select(
                        'max("inbox_messages") AS "inbox_messages", '
                        'max("inbox_bytes") AS "inbox_bytes"',
                        PLATFORM,
                        gw,
                        per_gw,
                        every="$__interval",
                        fill="none",
                    )
                )
            ],
            unit="short",
            description="Messages (and their payload bytes) received but not yet committed.",
        ),
        Panel(
            "timeseries",
            "Edge buffer depth",
            [
                Query(
                    select(
                        'max("samples_pending") AS "samples_pending"',
                        EDGE_AGENT,
                        [],
                        ["agent"],
                        every="$__interval",
                        fill="none",
                    )
                )
            ],
            unit="short",
            description=(
                "Samples in each agent's store-and-forward buffer, not yet acknowledged by "
                "the broker (from its status, refreshed every status_interval_s)."
            ),
        ),
        Panel(
            "timeseries",
            "Consumer lag and write time",
            [
                Query(
                    select(
                        'max("commit_lag_s") AS "commit_lag_s", mean("write_s_mean") AS "write_s"',
                        PLATFORM,
                        gw,
                        per_gw,
                        every="$__interval",
                        fill="none",
                    )
                )
            ],
            unit="s",
        ),
        Panel(
            "timeseries",
            "Dead letters",
            [
                Query(
                    select(
                        'sum("dead_letters_new") AS "dead_letters"',
                        PLATFORM,
                        gw,
                        per_gw,
                        every="$__interval",
                        fill="none",
                    )
                )
            ],
            unit="short",
            custom={"drawStyle": "bars"},
        ),
        Panel(
            "stat",
            "Totals since gateway start",
            [
                Query(
                    select(
                        'last("samples_written") AS "samples_written", '
                        'last("dead_letters") AS "dead_letters", '
                        'last("write_errors") AS "write_errors"',
                        PLATFORM,
                        gw,
                        per_gw,
                    )
                )
            ],
            unit="short",
            options={"reduceOptions": {"calcs": ["lastNotNull"]}},
        ),
        Panel(
            "table",
            "Recent dead letters",
            [
                Query(
                    select(
                        '"topic" AS "topic", "reason" AS "reason", "payload_size" AS "bytes"',
                        DEAD_LETTERS,
                        [],
                        tail=" ORDER BY time DESC LIMIT 100",
                    ),
                    table=True,
                )
            ],
            w=24,
        ),
    ]
    variables = [_variable("gateway", f'SHOW TAG VALUES FROM "{PLATFORM}" WITH KEY = "gateway"')]
    return dashboard(
        "karkhana-platform",
        "karkhana: platform health",
        "Gateway ingest, buffer, lag, dead letters; edge agents online.",
        variables,
        panels,
        time_from="now-6h",
        refresh="30s",
    )


DASHBOARDS: dict[str, Callable[[], JSON]] = {
    "karkhana-overview.json": factory_overview,
    "karkhana-machine.json": machine_detail,
    "karkhana-losses.json": losses,
    "karkhana-energy.json": energy,
    "karkhana-platform.json": platform_health,
}


def render(build: Callable[[], JSON]) -> str:
    """The JSON text of one dashboard, as committed."""
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def write_all(directory: Path) -> list[Path]:
    """Write every dashboard into ``directory``; returns the files."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, build in DASHBOARDS.items():
        path = directory / name
        path.write_text(render(build), encoding="utf-8")
        out.append(path)
    return out
