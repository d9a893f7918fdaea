"""The report as a printable A4 PDF: summary, charts (OEE trend, loss waterfall, downtime
Pareto) and the tables of numbers behind them, with reportlab's own graphics.

Numbers are printed as ``services.reports.formatting`` documents: percentages with two
decimals, minutes with one, OEE points with two, counts whole.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.shapes import Drawing, Group, Line, Rect, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import (
    Flowable,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from services.reports.formatting import fmt_count, fmt_minutes, fmt_pct, fmt_points
from services.reports.model import OeeReport, WaterfallStep

_WIDTH = A4[0] - 30 * mm
_STYLES = getSampleStyleSheet()
_TABLE_STYLE = TableStyle(
    [
        ("FONT", (0, 0), (-1, -1), "Helvetica", 8),
        ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dde4ee")),
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
        ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
    ]
)
_LOSS = colors.HexColor("#c0392b")
_GAIN = colors.HexColor("#2e86c1")


def _table(rows: Sequence[Sequence[str]], widths: Sequence[float] | None = None) -> Table:
    table = Table([list(r) for r in rows], colWidths=widths, repeatRows=1, hAlign="LEFT")
    table.setStyle(_TABLE_STYLE)
    return table


def _h(text: str) -> Paragraph:
    return Paragraph(text, _STYLES["Heading2"])


def _bar_chart(labels: Sequence[str], values: Sequence[float], y_max: float | None) -> Drawing:
    drawing = Drawing(_WIDTH, 60 * mm)
    chart = VerticalBarChart()
    chart.x, chart.y = 12 * mm, 14 * mm
    chart.width, chart.height = _WIDTH - 16 * mm, 42 * mm
    chart.data = [list(values) or [0.0]]
    chart.categoryAxis.categoryNames = list(labels) or [""]
    chart.categoryAxis.labels.angle = 30 if len(labels) > 6 else 0
    chart.categoryAxis.labels.boxAnchor = "ne" if len(labels) > 6 else "n"
    chart.categoryAxis.labels.fontSize = 6
    chart.valueAxis.labels.fontSize = 7
    chart.valueAxis.valueMin = 0
    if y_max is not None:
        chart.valueAxis.valueMax = y_max
    chart.bars[0].fillColor = _GAIN
    drawing.add(chart)
    return drawing


def _short(label: str) -> str:
    """A bucket label short enough for a chart axis: the local time of an hour bucket
    (``2024-05-06T06:00+0500`` -> ``06:00``); other labels as they are."""
    return label.split("T", 1)[1][:5] if "T" in label else label


def _waterfall_chart(steps: Sequence[WaterfallStep]) -> Drawing:
    """Floating bars: planned time, each loss stepping down (or up, for a negative loss
    such as running faster than the ideal cycle), fully productive time."""
    drawing = Drawing(_WIDTH, 70 * mm)
    x0, y0, height = 14 * mm, 22 * mm, 44 * mm
    top = max([s.minutes for s in steps] + [1e-9])
    scale = height / top
    slot = (_WIDTH - x0) / max(len(steps), 1)
    level = 0.0
    drawing.add(Line(x0, y0, _WIDTH, y0, strokeColor=colors.black, strokeWidth=0.5))
    drawing.add(String(0, y0 + height, f"{fmt_minutes(top)} min", fontSize=6))
    for i, step in enumerate(steps):
        if step.kind == "loss":
            lo, hi = sorted((level - step.minutes, level))
            level -= step.minutes
            color = _LOSS
        else:
            lo, hi = 0.0, step.minutes
            level = step.minutes
            color = _GAIN
        x = x0 + i * slot + slot * 0.15
        drawing.add(
            Rect(
                x,
                y0 + max(lo, 0.0) * scale,
                slot * 0.7,
                max(hi - max(lo, 0.0), 0.0) * scale,
                fillColor=color,
                strokeColor=None,
            )
        )
        label = Group(String(0, 0, step.name, fontSize=6, textAnchor="end"))
        label.translate(x + slot * 0.35, y0 - 2 * mm)
        label.rotate(30)
        drawing.add(label)
    return drawing


def _summary_rows(report: OeeReport) -> list[list[str]]:
    s = report.summary
    return [
        ["figure", "value"],
        ["Availability %", fmt_pct(s.availability)],
        ["Performance %", fmt_pct(s.performance)],
        ["Quality %", fmt_pct(s.quality)],
        ["OEE %", fmt_pct(s.oee)],
        ["OEE excluding external losses %", fmt_pct(s.oee_excluding_external)],
        ["TEEP %", fmt_pct(s.teep)],
        ["Utilization %", fmt_pct(s.utilization)],
        ["Data coverage %", fmt_pct(s.coverage)],
        ["Calendar time (min)", fmt_minutes(s.calendar_min)],
        ["Planned production time (min)", fmt_minutes(s.planned_min)],
        ["Run time (min)", fmt_minutes(s.run_min)],
        ["Down time (min)", fmt_minutes(s.down_min)],
        ["Total count", fmt_count(s.total)],
        ["Good count", fmt_count(s.good)],
        ["Rejects", fmt_count(s.rejects)],
    ]


def render_pdf(report: OeeReport) -> bytes:
    s = report.summary
    story: list[Flowable] = [
        Paragraph(f"OEE report: {s.asset}", _STYLES["Title"]),
        Paragraph(
            f"{s.start} to {s.end} (UTC, end exclusive); site time zone {s.timezone}; "
            f"{s.machines} machine(s) at {s.level} level; trend per {s.bucket}."
            + (f" Flags: {', '.join(s.flags)}." if s.flags else ""),
            _STYLES["Normal"],
        ),
        Spacer(1, 4 * mm),
        _h("Summary"),
        _table(_summary_rows(report), [70 * mm, 30 * mm]),
        _h("OEE trend (%)"),
        _bar_chart(
            [_short(t.period) for t in report.trend],
            [(t.oee or 0.0) * 100 for t in report.trend],
            100.0,
        ),
        _table(
            [["period", "Availability %", "Performance %", "Quality %", "OEE %", "planned min"]]
            + [
                [
                    t.period,
                    fmt_pct(t.availability),
                    fmt_pct(t.performance),
                    fmt_pct(t.quality),
                    fmt_pct(t.oee),
                    fmt_minutes(t.planned_min),
                ]
                for t in report.trend
            ]
        ),
        KeepTogether([_h("Loss waterfall"), _waterfall_chart(report.waterfall)]),
        _table(
            [["step", "minutes", "OEE points"]]
            + [[w.name, fmt_minutes(w.minutes), fmt_points(w.points)] for w in report.waterfall]
        ),
        _h("Downtime Pareto by reason"),
        _bar_chart(
            [p.reason or "uncoded" for p in report.pareto],
            [p.minutes for p in report.pareto],
            None,
        ),
        _table(
            [["reason", "name", "category", "minutes", "planned min", "events"]]
            + [
                [
                    p.reason or "uncoded",
                    p.name or "",
                    p.category or "",
                    fmt_minutes(p.minutes),
                    fmt_minutes(p.planned_min),
                    str(p.count),
                ]
                for p in report.pareto
            ]
        ),
        _h("Machines"),
        _table(
            [["machine", "A %", "P %", "Q %", "OEE %", "planned min", "run min", "total", "good"]]
            + [
                [
                    m.asset,
                    fmt_pct(m.availability),
                    fmt_pct(m.performance),
                    fmt_pct(m.quality),
                    fmt_pct(m.oee),
                    fmt_minutes(m.planned_min),
                    fmt_minutes(m.run_min),
                    fmt_count(m.total),
                    fmt_count(m.good),
                ]
                for m in report.machines
            ]
        ),
    ]
    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
        title=f"OEE report {s.asset} {s.start} to {s.end}",
    )
    doc.build(story)
    return out.getvalue()
