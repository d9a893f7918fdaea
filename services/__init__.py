"""karkhana services: the KPI engine (``services.kpi``), the store reader and the HTTP API."""
