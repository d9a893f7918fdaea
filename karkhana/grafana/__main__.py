"""``python -m karkhana.grafana [DIR]``: write the dashboard JSON files (default dashboards/)."""

from __future__ import annotations

import sys
from pathlib import Path

from karkhana.grafana.dashboards import write_all


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else Path("dashboards")
    for path in write_all(directory):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
