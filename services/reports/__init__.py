"""Manager reports: an OEE report model built from summed KPI components, written as JSON,
CSV or a printable PDF. No web framework imports."""

from services.reports.csv_writer import report_csv
from services.reports.formatting import fmt_count, fmt_minutes, fmt_pct, fmt_points
from services.reports.model import (
    MachineRow,
    OeeReport,
    ParetoRow,
    Summary,
    TrendPoint,
    WaterfallStep,
    build_report,
)
from services.reports.pdf import render_pdf

__all__ = [
    "MachineRow",
    "OeeReport",
    "ParetoRow",
    "Summary",
    "TrendPoint",
    "WaterfallStep",
    "build_report",
    "fmt_count",
    "fmt_minutes",
    "fmt_pct",
    "fmt_points",
    "render_pdf",
    "report_csv",
]
