"""Create or update karkhana's Grafana folder, InfluxDB data source and dashboards.

Everything goes through Grafana's HTTP API with a service-account token (grafana-client):

- folder: ``GET /api/folders/{uid}``, then ``POST /api/folders`` or ``PUT /api/folders/{uid}``
- data source: ``GET /api/datasources/uid/{uid}``, then ``POST /api/datasources`` or
  ``PUT /api/datasources/uid/{uid}``
- each dashboard: ``GET /api/dashboards/uid/{uid}``, then ``POST /api/dashboards/db`` with
  ``overwrite: true`` and the folder's uid

Objects that already match are left alone, so a second run changes nothing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from grafana_client import GrafanaApi
from grafana_client.client import (
    GrafanaClientError,
    GrafanaException,
    GrafanaServerError,
    GrafanaUnauthorizedError,
)
from requests.exceptions import Timeout as RequestTimeout

from karkhana.errors import ConfigError, KarkhanaError

log = logging.getLogger(__name__)

DATASOURCE_UID = "karkhana-influxdb"
DATASOURCE_NAME = "karkhana InfluxDB"
PUSH_MESSAGE = "karkhana dashboards push"
_UID_MAX = 40  # Grafana's limit for folder and dashboard uids
_UID_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]+")
T = TypeVar("T")


class GrafanaPushError(KarkhanaError):
    """Grafana could not be reached or refused a request (the CLI exits with code 1)."""


@dataclass(frozen=True, slots=True)
class DatasourceSpec:
    """The InfluxDB data source as Grafana sees it: InfluxQL over the DBRP mapping."""

    url: str = "http://influxdb:8086"
    database: str = "karkhana"
    influx_token: str | None = None  # None: keep the token Grafana already has

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "uid": DATASOURCE_UID,
            "name": DATASOURCE_NAME,
            "type": "influxdb",
            "access": "proxy",
            "url": self.url,
            "database": self.database,
            "jsonData": {
                "version": "InfluxQL",
                "dbName": self.database,
                "httpMode": "POST",
                "httpHeaderName1": "Authorization",
            },
        }
        if self.influx_token is not None:
            body["secureJsonData"] = {"httpHeaderValue1": f"Token {self.influx_token}"}
        return body


@dataclass(frozen=True, slots=True)
class Dashboard:
    path: Path
    uid: str
    model: dict[str, Any]  # the dashboard JSON with its uid set and no id/version


@dataclass(frozen=True, slots=True)
class PushResult:
    kind: str  # folder | datasource | dashboard
    name: str
    action: str  # created | updated | unchanged

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.action}"


def slug_uid(text: str) -> str:
    """A Grafana uid from a title or file name: letters, digits, '-' and '_', at most 40."""
    uid = _UID_UNSAFE.sub("-", text.strip()).strip("-").lower()[:_UID_MAX]
    if not uid:
        raise ValueError(f"cannot make a Grafana uid from {text!r}")
    return uid


def _replace_strings(node: Any, replacements: dict[str, str]) -> Any:
    if isinstance(node, str):
        for old, new in replacements.items():
            node = node.replace(old, new)
        return node
    if isinstance(node, list):
        return [_replace_strings(item, replacements) for item in node]
    if isinstance(node, dict):
        return {key: _replace_strings(value, replacements) for key, value in node.items()}
    return node


def load_dashboard(path: Path) -> Dashboard:
    """One dashboard JSON file; a dashboard exported "for sharing" gets its data-source
    inputs (``${DS_...}``) bound to karkhana's data source. ConfigError when unusable."""
    try:
        model = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(path, "", f"not valid JSON: {exc}") from exc
    if not isinstance(model, dict):
        raise ConfigError(path, "", "a dashboard must be a JSON object")
    if isinstance(model.get("dashboard"), dict):  # the {"dashboard": {...}} API envelope
        model = model["dashboard"]
    title = model.get("title")
    if not isinstance(title, str) or not title.strip():
        raise ConfigError(path, "title", "a dashboard needs a non-empty title")
    inputs = model.pop("__inputs", None) or []
    model.pop("__requires", None)
    model.pop("__elements", None)
    bindings = {
        "${" + item["name"] + "}": DATASOURCE_UID
        for item in inputs
        if isinstance(item, dict) and item.get("type") == "datasource" and "name" in item
    }
    if bindings:
        model = _replace_strings(model, bindings)
    uid = model.get("uid")
    if uid is None:
        uid = slug_uid(path.stem)
    elif not isinstance(uid, str) or not uid or len(uid) > _UID_MAX or _UID_UNSAFE.search(uid):
        raise ConfigError(
            path, "uid", f"{uid!r} is not a Grafana uid (1-40 letters, digits, '-', '_')"
        )
    model = {k: v for k, v in model.items() if k not in ("id", "version")}
    model["uid"] = uid
    return Dashboard(path=path, uid=uid, model=model)


def load_dashboards(directory: Path) -> list[Dashboard]:
    """Every ``*.json`` directly in ``directory``, by file name; uids must be unique."""
    if not directory.is_dir():
        raise ConfigError(directory, "", "no such directory of dashboard JSON files")
    dashboards = [load_dashboard(p) for p in sorted(directory.glob("*.json"))]
    seen: dict[str, Path] = {}
    for dashboard in dashboards:
        if dashboard.uid in seen:
            raise ConfigError(
                dashboard.path, "uid", f"{dashboard.uid!r} is also the uid of {seen[dashboard.uid]}"
            )
        seen[dashboard.uid] = dashboard.path
    return dashboards


def check_url(url: str) -> str:
    """The Grafana base URL, with a trailing '/' after a path prefix (grafana-client joins
    ``{prefix}api``); ConfigError for anything but http(s)://host[:port][/path]."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("--url", "", f"{url!r} is not an http:// or https:// URL")
    if parts.username or parts.password:
        raise ConfigError("--url", "", "give the token with --token, not credentials in the URL")
    if parts.query or parts.fragment:
        raise ConfigError("--url", "", f"{url!r} must not have a query or fragment")
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}/" if path else f"{parts.scheme}://{parts.netloc}"


def _reason(exc: BaseException) -> str:
    """The innermost cause of a connection failure ("Connection refused", a DNS error),
    not the nested wrappers of the HTTP library."""
    innermost: BaseException = exc
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        innermost = cause
        cause = cause.__cause__ or cause.__context__
    if isinstance(innermost, OSError) and innermost.strerror:
        return innermost.strerror
    return str(innermost) or type(innermost).__name__


def _message(exc: GrafanaException) -> str:
    response = exc.response
    if isinstance(response, dict) and isinstance(response.get("message"), str):
        return str(response["message"])
    return str(exc.message)


class GrafanaPusher:
    """Pushes folder, data source and dashboards to one Grafana with one token."""

    def __init__(self, url: str, token: str, timeout_s: float = 10.0) -> None:
        if not token:
            raise ConfigError("--token", "", "a Grafana service-account token is required")
        self.url = check_url(url)
        self.timeout_s = timeout_s
        self._api = GrafanaApi.from_url(self.url, credential=token, timeout=timeout_s)

    def _call(self, action: str, request: Callable[[], T]) -> T:
        """Run one request; map every failure onto a one-line GrafanaPushError."""
        where = f"Grafana at {self.url}"
        try:
            return request()
        except GrafanaUnauthorizedError as exc:
            raise GrafanaPushError(
                f"{where} refused the token (401 Unauthorized) while trying to {action}: "
                "check --token"
            ) from exc
        except RequestTimeout as exc:
            raise GrafanaPushError(
                f"{where} did not answer within {self.timeout_s:g} s while trying to {action}"
            ) from exc
        except GrafanaClientError as exc:
            if exc.status_code == 403:
                raise GrafanaPushError(
                    f"{where}: the token may not {action} (403 Forbidden: {_message(exc)}); "
                    "give the service account the Admin role"
                ) from exc
            raise GrafanaPushError(
                f"{where} answered {exc.status_code} to {action}: {_message(exc)}"
            ) from exc
        except GrafanaServerError as exc:
            raise GrafanaPushError(
                f"{where} failed to {action} ({exc.status_code}: {_message(exc)})"
            ) from exc
        except (GrafanaException, OSError) as exc:  # the HTTP library's errors are OSErrors
            raise GrafanaPushError(f"cannot reach {where}: {_reason(exc)}") from exc
        except ValueError as exc:  # an answer that is not JSON: not Grafana's API
            raise GrafanaPushError(
                f"{where} did not answer with JSON while trying to {action}; is it Grafana?"
            ) from exc

    def _get_or_none(self, action: str, request: Callable[[], Any]) -> Any:
        def attempt() -> Any:
            try:
                return request()
            except GrafanaClientError as exc:
                if exc.status_code == 404:
                    return None
                raise

        return self._call(action, attempt)

    def health(self) -> None:
        """``GET /api/health``: reachable and answering as Grafana."""
        answer = self._call("check its health", lambda: self._api.client.GET("/health"))
        if not isinstance(answer, dict) or "database" not in answer:
            raise GrafanaPushError(f"Grafana at {self.url}: /api/health is not Grafana's answer")

    def push_folder(self, title: str) -> tuple[str, PushResult]:
        uid = slug_uid(title)
        folders = self._api.folder
        current = self._get_or_none(f"read folder {uid}", lambda: folders.get_folder(uid))
        if current is None:
            self._call(f"create folder {title!r}", lambda: folders.create_folder(title, uid=uid))
            return uid, PushResult("folder", title, "created")
        if current.get("title") == title:
            return uid, PushResult("folder", title, "unchanged")
        self._call(
            f"rename folder {uid}",
            lambda: folders.update_folder(
                uid, title=title, version=current.get("version"), overwrite=True
            ),
        )
        return uid, PushResult("folder", title, "updated")

    def push_datasource(self, spec: DatasourceSpec) -> PushResult:
        sources = self._api.datasource
        body = spec.body()
        current = self._get_or_none(
            f"read data source {DATASOURCE_UID}",
            lambda: sources.get_datasource_by_uid(DATASOURCE_UID),
        )
        if current is None:
            if spec.influx_token is None:
                raise ConfigError(
                    "--influx-token",
                    "",
                    f"the data source {DATASOURCE_UID} does not exist yet: give the InfluxDB "
                    "token it should use",
                )
            self._call(
                f"create data source {DATASOURCE_UID}", lambda: sources.create_datasource(body)
            )
            return PushResult("datasource", DATASOURCE_UID, "created")
        if spec.influx_token is None and _datasource_matches(current, body):
            return PushResult("datasource", DATASOURCE_UID, "unchanged")
        # Grafana keeps secure fields a PUT leaves out, so an update without a token keeps
        # the one it has; with a token we cannot tell (Grafana never returns it): set it.
        update = {**body, "id": current.get("id")}
        self._call(
            f"update data source {DATASOURCE_UID}",
            lambda: sources.update_datasource_by_uid(DATASOURCE_UID, update),
        )
        return PushResult("datasource", DATASOURCE_UID, "updated")

    def push_dashboard(self, dashboard: Dashboard, folder_uid: str) -> PushResult:
        boards = self._api.dashboard
        current = self._get_or_none(
            f"read dashboard {dashboard.uid}", lambda: boards.get_dashboard(dashboard.uid)
        )
        if current is not None and _dashboard_matches(current, dashboard, folder_uid):
            return PushResult("dashboard", dashboard.uid, "unchanged")
        body = {
            "dashboard": {**dashboard.model, "id": None},
            "folderUid": folder_uid,
            "overwrite": True,
            "message": PUSH_MESSAGE,
        }
        self._call(
            f"save dashboard {dashboard.uid} ({dashboard.path.name})",
            lambda: boards.update_dashboard(body),
        )
        return PushResult("dashboard", dashboard.uid, "created" if current is None else "updated")

    def push(
        self, folder_title: str, datasource: DatasourceSpec, dashboards: list[Dashboard]
    ) -> Iterator[PushResult]:
        """Health check, folder, data source, then every dashboard; one result each."""
        self.health()
        folder_uid, result = self.push_folder(folder_title)
        yield result
        yield self.push_datasource(datasource)
        for dashboard in dashboards:
            yield self.push_dashboard(dashboard, folder_uid)


def _datasource_matches(current: dict[str, Any], body: dict[str, Any]) -> bool:
    for key in ("name", "type", "access", "url", "database"):
        if current.get(key) != body[key]:
            return False
    have = current.get("jsonData") or {}
    if any(have.get(k) != v for k, v in body["jsonData"].items()):
        return False
    return bool((current.get("secureJsonFields") or {}).get("httpHeaderValue1"))


def _dashboard_matches(current: dict[str, Any], dashboard: Dashboard, folder_uid: str) -> bool:
    meta = current.get("meta") or {}
    remote = current.get("dashboard") or {}
    remote_model = {k: v for k, v in remote.items() if k not in ("id", "version")}
    return meta.get("folderUid") == folder_uid and remote_model == dashboard.model
