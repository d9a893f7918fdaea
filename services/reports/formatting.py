"""How the PDF prints the report's numbers (documented in docs/api.md, "Reports")."""

from __future__ import annotations

NOT_AVAILABLE = "n/a"


def fmt_pct(ratio: float | None) -> str:
    """A ratio (0..1) as a percentage with two decimals, without the sign: ``0.7479`` ->
    ``74.79``; ``n/a`` when undefined (e.g. no planned time)."""
    return NOT_AVAILABLE if ratio is None else f"{ratio * 100:.2f}"


def fmt_minutes(minutes: float) -> str:
    """Minutes with one decimal: ``12.25`` -> ``12.2`` (round half to even)."""
    return f"{minutes:.1f}"


def fmt_points(points: float | None) -> str:
    """OEE points with two decimals; ``n/a`` without planned time."""
    return NOT_AVAILABLE if points is None else f"{points:.2f}"


def fmt_count(count: float) -> str:
    """Counts as whole numbers; a counter of, say, metres keeps two decimals."""
    return str(int(count)) if float(count).is_integer() else f"{count:.2f}"
