"""Every panel of every generated dashboard runs against a real InfluxDB 1.x fed by the
platform: mosquitto, the simulator, the edge agent, the gateway (InfluxDB store, platform
health series) and the API (KPI publisher), as separate processes.

The simulated two hours end at the current quarter hour, so the publisher's window (which
follows the wall clock) and the gateway's health series (written at wall-clock time) meet
the simulated data in one dashboard time range. The factory's calendar is made round the
clock and its power outage moved into the window, so what the panels must show happens
whatever the time of day the test runs.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import paho.mqtt.publish as mqtt_publish
import pytest

from karkhana.grafana import DASHBOARDS
from tests.helpers.influx_servers import Influxd, run_influxd
from tests.helpers.processes import edge_config_written, karkhana_process
from tests.helpers.servers import Mosquitto, free_port, wait_until

pytestmark = pytest.mark.e2e

SPEED = 240.0
SIM_S = 2 * 3600
DB = "karkhana"
AGENT = "lahore-edge-1"
GATEWAY = "karkhana-gateway"
BAD_TOPIC = "karkhana/v1/edge/rogue-agent/samples"

# Template variable values per dashboard: what an operator would pick.
LOOMS = ["loom-01", "loom-02", "loom-03", "loom-04"]
VALUES: dict[str, dict[str, list[str]]] = {
    "karkhana-overview": {"site": ["lahore"], "area": ["weaving", "dyeing"], "line": ["line-1"]},
    "karkhana-machine": {
        "site": ["lahore"],
        "area": ["weaving"],
        "line": ["line-1"],
        "machine": ["loom-01"],
    },
    "karkhana-losses": {
        "site": ["lahore"],
        "area": ["weaving"],
        "line": ["line-1"],
        "machine": LOOMS,
    },
    "karkhana-energy": {
        "site": ["lahore"],
        "area": ["weaving"],
        "line": ["line-1"],
        "machine": LOOMS,
    },
    "karkhana-platform": {"gateway": [GATEWAY]},
}


def round_the_clock_factory(source: Path, target: Path, outage_local: datetime) -> None:
    """The example factory with every day a working day (no holidays, night shift every
    day) and its daily power outage at ``outage_local``."""
    text = source.read_text()
    text = re.sub(r"\n\s+days: \[[^\]]*\]", "", text)
    text = re.sub(r"holidays:\n(\s+- \{ date:.*\n)+", "holidays: []\n", text)
    text, moved = re.subn(
        r'power_outages:\n(\s+)- \{ start: "\d\d:\d\d"',
        lambda m: f'power_outages:\n{m.group(1)}- {{ start: "{outage_local:%H:%M}"',
        text,
    )
    assert moved == 1
    target.write_text(text)


# --- InfluxQL as Grafana sends it ----------------------------------------------------------


def regex_value(values: list[str]) -> str:
    """A multi-value variable as Grafana's InfluxQL data source formats it in a regex."""
    escaped = [re.escape(v).replace("/", "\\/") for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def expand(
    query: str, values: dict[str, list[str]], start: datetime, end: datetime, interval_s: int
) -> str:
    q = query.replace(
        "$timeFilter",
        f"time >= {int(start.timestamp() * 1000)}ms and time <= {int(end.timestamp() * 1000)}ms",
    )
    q = q.replace("$__interval_ms", str(interval_s * 1000)).replace("$__interval", f"{interval_s}s")
    for name in sorted(values, key=len, reverse=True):
        q = q.replace(f"${name}", regex_value(values[name]))
    assert not re.search(r"\$\w", q), f"unexpanded variable in {q}"
    return q


def run_query(server: Influxd, q: str) -> list[dict[str, Any]]:
    response = httpx.get(
        server.url + "/query", params={"db": DB, "q": q, "epoch": "ms"}, timeout=30
    )
    assert response.status_code == 200, (q, response.text)
    (result,) = response.json()["results"]
    assert "error" not in result, (q, result)
    series: list[dict[str, Any]] = result.get("series", [])
    return series


def outer(query: str) -> str:
    """The query without its subquery (the outer SELECT is what the panel receives)."""
    start = query.find("FROM (")
    if start < 0:
        return query
    depth = 0
    for i in range(start + 5, len(query)):
        depth += {"(": 1, ")": -1}.get(query[i], 0)
        if depth == 0:
            return query[: start + 5] + "sub" + query[i + 1 :]
    raise AssertionError(f"unbalanced parentheses in {query}")


def expected_shape(query: str) -> tuple[list[str], str | None, set[str]]:
    """(named columns, prefix of regex-selected columns, group-by tags) the text promises."""
    q = outer(query)
    head = q[len("SELECT ") : q.index(" FROM ")]
    columns = re.findall(r'AS "(\w+)"', head)
    regex = re.search(r"(\w+)\(/\^(\w+)/\)", head)
    prefix = f"{regex.group(1)}_{regex.group(2)}" if regex else None
    tags: set[str] = set()
    if " GROUP BY " in q:
        clause = re.split(r" fill\(| ORDER BY | LIMIT ", q.split(" GROUP BY ", 1)[1])[0]
        tags = set(re.findall(r'"(\w+)"', clause))
    return columns, prefix, tags


def check_shape(title: str, query: str, series: list[dict[str, Any]]) -> list[str]:
    columns, prefix, tags = expected_shape(query)
    problems = []
    if not series:
        return [f"{title}: no series for {query}"]
    has_value = False
    for s in series:
        got = s["columns"]
        if got[0] != "time":
            problems.append(f"{title}: first column {got[0]!r}")
        if prefix is not None:
            if not got[1:] or not all(c.startswith(prefix) for c in got[1:]):
                problems.append(f"{title}: columns {got} do not start with {prefix}")
        elif got[1:] != columns:
            problems.append(f"{title}: columns {got[1:]} != {columns}")
        if set(s.get("tags", {})) != tags:
            problems.append(f"{title}: tags {sorted(s.get('tags', {}))} != {sorted(tags)}")
        has_value |= any(v is not None for row in s["values"] for v in row[1:])
    if not has_value:
        problems.append(f"{title}: only nulls for {query}")
    return problems


# --- waiting for the platform ------------------------------------------------------------------


def scalar(server: Influxd, q: str) -> Any:
    series = run_query(server, q)
    return series[0]["values"][0][1] if series else None


def wait_for_quiet_store(server: Influxd, quiet_s: float = 3.0) -> None:
    deadline = time.monotonic() + 60
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = scalar(server, 'SELECT count("quality") FROM "samples"') or 0
        if count != last:
            last, since = count, time.monotonic()
        elif count > 0 and time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.3)
    raise AssertionError("the store kept changing for 60 s")


def kpi_sums(server: Influxd, start: datetime, end: datetime) -> dict[str, dict[str, float]]:
    q = (
        'SELECT sum("total") AS "total", sum("good") AS "good", count("planned_s") AS "buckets" '
        f"FROM \"kpi\" WHERE time >= '{start.isoformat()}' AND time < '{end.isoformat()}' "
        'GROUP BY "asset"'
    )
    return {
        s["tags"]["asset"]: dict(zip(s["columns"][1:], s["values"][0][1:], strict=True))
        for s in run_query(server, q)
    }


def test_every_panel_query_returns_data_of_its_shape(
    tmp_path: Path, mosquitto: Mosquitto, factory_on_free_ports: Path
) -> None:
    now = datetime.now(UTC)
    end = now - timedelta(minutes=now.minute % 15, seconds=now.second, microseconds=now.microsecond)
    start = end - timedelta(seconds=SIM_S)
    tz = ZoneInfo("Asia/Karachi")
    factory = tmp_path / "factory.yaml"
    round_the_clock_factory(
        factory_on_free_ports, factory, (start + timedelta(minutes=40)).astimezone(tz)
    )

    edge_yaml = tmp_path / "edge.yaml"
    truth_path = tmp_path / "truth.json"
    with run_influxd(tmp_path / "influxd") as influxd:
        influx = {
            "STORE": "influxdb",
            "INFLUX_URL": influxd.url,
            "INFLUX_API": "v1",
            "INFLUX_DB": DB,
        }
        gateway_env = {f"KARKHANA_GATEWAY_{k}": v for k, v in influx.items()}
        gateway_env["KARKHANA_GATEWAY_PLATFORM_STATS_S"] = "1"
        api_env = {f"KARKHANA_API_{k}": v for k, v in influx.items()}
        api_env["KARKHANA_API_KPI_PUBLISH_S"] = "2"
        api_args = ["api", "run", "-c", str(factory), "--db", str(tmp_path / "api" / "x.sqlite")]
        api_args += ["--port", str(free_port())]
        sim_args = [
            "sim", "-c", str(factory), "--broker", mosquitto.url,
            "--start", start.isoformat(), "--speed", str(SPEED), "--duration", str(SIM_S / SPEED),
            "--truth-out", str(truth_path), "--edge-config-out", str(edge_yaml),
            "--wait-for-agent", AGENT,
        ]  # fmt: skip
        with (
            karkhana_process(
                ["gateway", "run", "--broker", mosquitto.url], tmp_path, "gw.log", gateway_env
            ),
            karkhana_process(api_args, tmp_path, "api.log", api_env),
            karkhana_process(sim_args, tmp_path, "sim.log") as sim,
        ):
            wait_until(lambda: edge_config_written(edge_yaml), 60, "the simulator's edge.yaml")
            with karkhana_process(["edge", "run", "-c", str(edge_yaml)], tmp_path, "edge.log"):
                # Bad input on the wire: the platform health dashboard must show it.
                mqtt_publish.single(
                    BAD_TOPIC, b"not an envelope", hostname=mosquitto.host, port=mosquitto.port
                )
                sim.wait(timeout=180)
                assert sim.returncode == 0, (tmp_path / "sim.log").read_text()[-3000:]
                wait_for_quiet_store(influxd)
                truth = json.loads(truth_path.read_text())

                # The publisher catches up with the settled data: every machine's buckets of
                # the simulated window sum to the simulator's counts.
                def published() -> bool:
                    sums = kpi_sums(influxd, start, end)
                    return all(
                        (sums.get(path, {}).get("total"), sums.get(path, {}).get("good"))
                        == (expected["total"], expected["good"])
                        for path, expected in truth["machines"].items()
                    )

                wait_until(published, 90, "KPI buckets matching the simulator's counts")
                assert all(m["total"] > 0 for m in truth["machines"].values())
                sums = kpi_sums(influxd, start, end)
                assert {s["buckets"] for s in sums.values()} == {SIM_S // 900}

                # Health series and the agent's status reach InfluxDB too.
                wait_until(
                    lambda: scalar(influxd, 'SELECT last("dead_letters") FROM "platform"') == 1,
                    30,
                    "the dead letter in the platform series",
                )
                problems = check_all_panels(influxd, start, datetime.now(UTC))
                assert not problems, "\n".join(problems)
                check_values_against_truth(influxd, start, end, truth)


def check_all_panels(influxd: Influxd, start: datetime, end: datetime) -> list[str]:
    problems: list[str] = []
    panels = 0
    for name, build in DASHBOARDS.items():
        board = build()
        values = VALUES[board["uid"]]
        # Every template variable lists the value picked for it.
        for var in board["templating"]["list"]:
            q = expand(var["query"], values, start, end, 60)
            listed = {row[1] for s in run_query(influxd, q) for row in s["values"]}
            missing = set(values[var["name"]]) - listed
            if missing:
                problems.append(f"{name}: variable {var['name']} lacks {sorted(missing)}")
        for panel in board["panels"]:
            panels += 1
            interval = 900 if panel.get("interval") == "15m" else 60
            for target in panel["targets"]:
                q = expand(target["query"], values, start, end, interval)
                problems += check_shape(f"{name}/{panel['title']}", q, run_query(influxd, q))
    assert panels >= 30
    return problems


def check_values_against_truth(
    influxd: Influxd, start: datetime, end: datetime, truth: dict[str, Any]
) -> None:
    """A few panels read against the simulator's ground truth and what the test sent."""
    overview = DASHBOARDS["karkhana-overview.json"]()
    (gauge,) = [p for p in overview["panels"] if p["title"] == "OEE by line"]
    q = expand(gauge["targets"][0]["query"], VALUES["karkhana-overview"], start, end, 60)
    oee = {
        f"lahore/{s['tags']['area']}/{s['tags']['line']}": s["values"][0][1]
        for s in run_query(influxd, q)
    }
    assert set(oee) == set(truth["lines"])
    for line, expected in truth["lines"].items():
        assert oee[line] == pytest.approx(expected["oee"], abs=0.005), line

    platform = DASHBOARDS["karkhana-platform.json"]()
    by_title = {p["title"]: p for p in platform["panels"]}
    now = datetime.now(UTC)

    def rows(title: str) -> list[dict[str, Any]]:
        q = expand(
            by_title[title]["targets"][0]["query"], VALUES["karkhana-platform"], start, now, 60
        )
        return [
            {**s.get("tags", {}), **dict(zip(s["columns"], v, strict=True))}
            for s in run_query(influxd, q)
            for v in s["values"]
        ]

    # The simulator (the agent's PLCs) has ended: the agent is online but not ready, as its
    # retained status says; while the simulator ran, it was ready.
    (agent,) = rows("Edge agents")
    assert (agent["agent"], agent["online"], agent["ready"]) == (AGENT, 1, 0)
    assert agent["sources"] > agent["sources_connected"]
    ready = scalar(influxd, f'SELECT max("ready") FROM "edge_agent" WHERE agent = \'{AGENT}\'')
    assert ready == 1
    (letter,) = rows("Recent dead letters")
    assert letter["topic"] == BAD_TOPIC
