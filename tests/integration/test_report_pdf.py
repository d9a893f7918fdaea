"""The PDF report renders (poppler's pdftoppm turns it into PNG pages) and every number of
the JSON report appears in it, formatted as docs/api.md says."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.api import ApiSettings, create_app
from services.keys import Role
from tests.helpers.api import api_client
from tests.unit.test_reports import LINE, SHIFT, settings  # noqa: F401 (fixture)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def poppler(tool: str) -> str:
    path = shutil.which(tool)
    # A missing binary is a failure, never a skip: `make test` installs poppler-utils.
    assert path is not None, f"{tool} not found: install Debian's poppler-utils"
    return path


# The documented formats, written out here rather than imported from the renderer.
def pct(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio * 100:.2f}"


def minutes(value: float) -> str:
    return f"{value:.1f}"


def points(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


@pytest.fixture
def manager(settings: ApiSettings) -> Iterator[TestClient]:  # noqa: F811
    with api_client(create_app(settings), Role.MANAGER) as client:
        yield client


def fetch(client: TestClient, fmt: str) -> Any:
    response = client.get(
        "/api/v1/reports/oee", params={**SHIFT, "asset": LINE, "bucket": "hour", "format": fmt}
    )
    assert response.status_code == 200, response.text
    return response


def row_with(lines: list[str], first: str, cells: list[str]) -> None:
    """Some line of the PDF text starts with ``first`` and then shows ``cells`` in order."""
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(first) and stripped[len(first) :].split()[: len(cells)] == cells:
            return
    raise AssertionError(f"no row {first!r} with {cells} in the PDF text:\n" + "\n".join(lines))


def test_pdf_renders_and_shows_the_json_numbers(manager: TestClient, tmp_path: Path) -> None:
    body = fetch(manager, "json").json()
    pdf = fetch(manager, "pdf")
    assert pdf.headers["content-type"] == "application/pdf"
    (tmp_path / "report.pdf").write_bytes(pdf.content)

    subprocess.run(
        [poppler("pdftoppm"), "-png", "-r", "50", "report.pdf", "page"],
        cwd=tmp_path,
        check=True,
        timeout=60,
    )
    pages = sorted(tmp_path.glob("page*.png"))
    assert pages, "pdftoppm made no page"
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pages)

    text = subprocess.run(
        [poppler("pdftotext"), "-layout", "report.pdf", "-"],
        cwd=tmp_path,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    lines = text.splitlines()

    s = body["summary"]
    for label, value in [
        ("Availability %", pct(s["availability"])),
        ("Performance %", pct(s["performance"])),
        ("Quality %", pct(s["quality"])),
        ("OEE %", pct(s["oee"])),
        ("OEE excluding external losses %", pct(s["oee_excluding_external"])),
        ("TEEP %", pct(s["teep"])),
        ("Utilization %", pct(s["utilization"])),
        ("Data coverage %", pct(s["coverage"])),
        ("Calendar time (min)", minutes(s["calendar_min"])),
        ("Planned production time (min)", minutes(s["planned_min"])),
        ("Run time (min)", minutes(s["run_min"])),
        ("Down time (min)", minutes(s["down_min"])),
        ("Total count", count(s["total"])),
        ("Good count", count(s["good"])),
        ("Rejects", count(s["rejects"])),
    ]:
        row_with(lines, label, [value])
    assert len(body["trend"]) == 8
    for t in body["trend"]:
        row_with(
            lines,
            t["period"],
            [
                pct(t["availability"]),
                pct(t["performance"]),
                pct(t["quality"]),
                pct(t["oee"]),
                minutes(t["planned_min"]),
            ],
        )
    for w in body["waterfall"]:
        row_with(lines, w["name"], [minutes(w["minutes"]), points(w["points"])])
    for p in body["pareto"]:
        cells = [p["name"], p["category"]] if p["reason"] else []
        name_cells = " ".join(c for c in cells if c).split()
        row_with(
            lines,
            p["reason"] or "uncoded",
            [*name_cells, minutes(p["minutes"]), minutes(p["planned_min"]), str(p["count"])],
        )
    for m in body["machines"]:
        row_with(
            lines,
            m["asset"],
            [pct(m[k]) for k in ("availability", "performance", "quality", "oee")]
            + [minutes(m["planned_min"]), minutes(m["run_min"]), count(m["total"])]
            + [count(m["good"])],
        )
