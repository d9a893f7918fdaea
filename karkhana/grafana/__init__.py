"""Grafana dashboards generated from code (``docs/dashboards.md``)."""

from karkhana.grafana.dashboards import DASHBOARDS, DATASOURCE_UID, render, write_all

__all__ = ["DASHBOARDS", "DATASOURCE_UID", "render", "write_all"]
