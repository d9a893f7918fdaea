"""Vorne's worked example (Fast Guide to OEE) fed as machine data through the store.

480-minute shift, 60 minutes of planned breaks, 47 minutes of downtime (a 30-minute fault and
a 17-minute stop), ideal cycle 1 s, 19,271 units of which 423 rejected:
A = 373/420, P = 19,271/22,380, Q = 18,848/19,271, OEE = 0.7479.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from karkhana.config.factory import load_factory
from services.api import ApiSettings, create_app
from services.kpi import compute_machine, compute_ratios
from services.store import open_reader
from tests.helpers.api import api_client
from tests.helpers.store_builders import Row, write_factory, write_samples

TZ = ZoneInfo("Asia/Karachi")
MACHINE = "lahore/weaving/line-1/loom-01"
DAY = (2024, 5, 6)  # a Monday


def local(hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(*DAY, hh, mm, ss, tzinfo=TZ)


WINDOW = (local(5, 0), local(15, 0))

# Default state map codes: 0 off, 1 running, 2 idle, 3 stopped, 4 fault.
STATES: list[tuple[datetime, int]] = [
    (local(5, 30), 0),
    (local(6, 0), 1),
    (local(7, 0), 4),  # 30-minute breakdown
    (local(7, 30), 1),
    (local(8, 30), 2),  # tea break
    (local(8, 45), 1),
    (local(9, 30), 3),  # 17-minute stop
    (local(9, 47), 1),
    (local(10, 30), 2),  # lunch
    (local(11, 0), 1),
    (local(12, 0), 2),  # second break
    (local(12, 15), 1),
    (local(13, 0, 0), 3),  # 40 s short stop (threshold 60 s): performance loss only
    (local(13, 0, 40), 1),
    (local(14, 0), 0),
]
TOTAL, REJECT = 19_271, 423


def _rows() -> list[Row]:
    rows: list[Row] = [(MACHINE, "state", ts, code) for ts, code in STATES]
    marks = 96
    for k in range(marks + 1):
        ts = local(6, 0) + timedelta(minutes=5 * k) - timedelta(seconds=30 if k else 0)
        rows.append((MACHINE, "count_total", ts, TOTAL * k // marks))
        rows.append((MACHINE, "count_reject", ts, REJECT * k // marks))
    # A power reading every minute keeps the data fresh over the whole window.
    t = WINDOW[0]
    while t < WINDOW[1]:
        rows.append((MACHINE, "power", t, 3.5))
        t += timedelta(minutes=1)
    return rows


@pytest.fixture
def plant(tmp_path: Path) -> tuple[Path, Path]:
    factory = write_factory(
        tmp_path / "factory.yaml",
        timezone="Asia/Karachi",
        machines={MACHINE: {"ideal_cycle_s": 1.0, "short_stop_threshold_s": 60}},
        shifts=[
            {
                "name": "a",
                "start": "06:00",
                "end": "14:00",
                "breaks": [
                    {"name": "tea", "start": "08:30", "end": "08:45"},
                    {"name": "lunch", "start": "10:30", "end": "11:00"},
                    {"name": "tea2", "start": "12:00", "end": "12:15"},
                ],
            }
        ],
    )
    db = tmp_path / "store.sqlite"
    write_samples(db, _rows())
    return factory, db


def test_engine_reproduces_vorne(plant: tuple[Path, Path]) -> None:
    factory_path, db = plant
    ref = load_factory(factory_path).machine(MACHINE)
    with open_reader(db) as reader:
        c = compute_machine(reader, ref, *WINDOW, max_gap_s=300)
    assert c.planned_s == pytest.approx(420 * 60)
    assert c.run_s == pytest.approx(373 * 60)
    assert c.short_stop_s == pytest.approx(40)
    assert dict(c.down_s) == pytest.approx(
        {"idle": 0, "stopped": 17 * 60, "fault": 30 * 60, "setup": 0, "off": 0}
    )
    assert c.no_data_s == 0
    assert c.planned_stop_s == 0
    assert (c.total, c.good) == (TOTAL, TOTAL - REJECT)
    assert c.ideal_s == pytest.approx(19_271)
    r = compute_ratios(c)
    assert r.availability == pytest.approx(373 / 420)
    assert r.performance == pytest.approx(19_271 / 22_380)
    assert r.quality == pytest.approx(18_848 / 19_271)
    assert round(r.availability or 0, 4) == 0.8881
    assert round(r.performance or 0, 4) == 0.8611
    assert round(r.quality or 0, 4) == 0.9780
    assert round(r.oee or 0, 4) == 0.7479
    assert r.coverage == pytest.approx(1.0)
    assert r.flags == frozenset()


def test_api_reproduces_vorne(plant: tuple[Path, Path]) -> None:
    factory_path, db = plant
    with api_client(create_app(ApiSettings(factory=factory_path, db=db)), "viewer") as client:
        response = client.get(
            "/api/v1/kpi/oee",
            params={
                "asset": MACHINE,
                "from": WINDOW[0].isoformat(),
                "to": WINDOW[1].isoformat(),
            },
        )
    assert response.status_code == 200, response.text
    (item,) = response.json()
    assert item["asset"] == MACHINE
    assert item["level"] == "machine"
    assert item["from"] == "2024-05-06T00:00:00Z"
    assert item["to"] == "2024-05-06T10:00:00Z"
    assert round(item["availability"], 4) == 0.8881
    assert round(item["performance"], 4) == 0.8611
    assert round(item["quality"], 4) == 0.9780
    assert round(item["oee"], 4) == 0.7479
    assert item["components"]["planned_s"] == pytest.approx(25_200)
    assert item["components"]["run_s"] == pytest.approx(22_380)
    assert item["components"]["total"] == TOTAL
    assert isinstance(item["components"]["total"], int)  # counts are whole units
    assert item["components"]["good"] == TOTAL - REJECT
    assert item["machines"] == 1
    assert item["flags"] == []
