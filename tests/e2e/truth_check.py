"""Compare the API's OEE items with the simulator's ground truth."""

from __future__ import annotations

from typing import Any

RATIO_TOLERANCE = 0.005  # 0.5 percentage points


def differences(items: list[dict[str, Any]], truth: dict[str, Any], level: str) -> list[str]:
    """Every way the API's items differ from the truth beyond the tolerance (empty: agree).

    Counts must be exact; the four ratios within 0.5 percentage points."""
    expected_all = truth["machines" if level == "machine" else "lines"]
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
        for ratio in ("availability", "performance", "quality", "oee"):
            value = item[ratio]
            if value is None or abs(value - expected[ratio]) > RATIO_TOLERANCE:
                problems.append(f"{path}: {ratio} {value} vs truth {expected[ratio]:.4f}")
    return problems
