"""The report as one CSV table in long form: ``section,item,field,value``.

One row per number, so a spreadsheet pivot or a CSV reader gets every table back without
parsing several blocks. ``section`` is summary, trend, waterfall, pareto or machine;
``item`` names the row (the asset, the bucket label, the loss, the reason code or
``uncoded``, the machine path); ``field`` is the JSON field name; ``value`` is the JSON value
at full precision (empty for null).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from typing import Any

from services.reports.model import OeeReport

HEADER = ("section", "item", "field", "value")


def _value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return ";".join(str(x) for x in v)
    return repr(v) if isinstance(v, float) else str(v)


def report_csv(report: OeeReport) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(HEADER)
    s = asdict(report.summary)
    for name, value in s.items():
        w.writerow(("summary", s["asset"], name, _value(value)))
    rows: list[tuple[str, str, dict[str, Any]]] = []
    rows += [("trend", t.period, asdict(t)) for t in report.trend]
    rows += [("waterfall", step.name, asdict(step)) for step in report.waterfall]
    rows += [("pareto", p.reason or "uncoded", asdict(p)) for p in report.pareto]
    rows += [("machine", m.asset, asdict(m)) for m in report.machines]
    for section, item, fields in rows:
        for name, value in fields.items():
            w.writerow((section, item, name, _value(value)))
    return out.getvalue()
