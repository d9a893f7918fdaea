"""A stand-in for Grafana's HTTP API that checks every request against the documented API.

Implements the endpoints ``karkhana dashboards push`` may use, as Grafana's HTTP API reference
documents them (Folder, Data source, Dashboard and Health APIs, token auth):

- ``GET /api/health`` (no auth) -> ``{"commit", "database", "version"}``
- ``GET /api/folders/:uid``, ``POST /api/folders`` (``title`` required, ``uid`` optional),
  ``PUT /api/folders/:uid`` (``title``; ``version`` or ``overwrite``)
- ``GET /api/datasources/uid/:uid``, ``POST /api/datasources`` and
  ``PUT /api/datasources/uid/:uid`` (``name``, ``type``, ``access`` required; secure fields are
  write-only: answers show ``secureJsonFields``; a PUT without ``secureJsonData`` keeps them)
- ``GET /api/dashboards/uid/:uid`` -> ``{"dashboard", "meta": {"folderUid", ...}}``,
  ``POST /api/dashboards/db`` (``dashboard`` object with ``title``; ``folderUid``;
  ``overwrite``; an existing uid without ``overwrite`` is a 412)
- ``GET /api/search``

Every other method or path, a missing ``Authorization: Bearer`` header, or a body missing a
required field is answered with an error *and* recorded in ``violations``; tests assert
there are none. Tokens: ``admin_token`` may do everything, ``viewer_token`` only read (403
on writes, as for a Viewer service account); anything else is a 401.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_UID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,40}$")


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    body: Any


@dataclass
class GrafanaState:
    admin_token: str
    viewer_token: str
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    secure: dict[str, dict[str, str]] = field(default_factory=dict)  # uid -> secureJsonData
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> {model, folder}
    requests: list[Request] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    next_id: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method in ("POST", "PUT", "DELETE", "PATCH")]


class _Reply(Exception):
    def __init__(self, status: int, body: dict[str, Any], violation: str | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.violation = violation


def _require(body: Any, keys: dict[str, type | tuple[type, ...]], what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _Reply(400, {"message": "bad request data"}, f"{what}: body is not a JSON object")
    for key, kind in keys.items():
        if not isinstance(body.get(key), kind):
            raise _Reply(
                400,
                {"message": f"bad request data: {key}"},
                f"{what}: required field {key!r} missing or not {kind}",
            )
    return body


class _Handler(BaseHTTPRequestHandler):
    state: GrafanaState  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return

    def _handle(self, method: str) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        state = self.state
        with state.lock:
            try:
                if raw:
                    if not (self.headers.get("Content-Type") or "").startswith("application/json"):
                        raise _Reply(
                            415, {"message": "unsupported media type"}, f"{method} {path}: no JSON"
                        )
                    body = json.loads(raw)
                state.requests.append(
                    Request(method, path, self.headers.get("Authorization"), body)
                )
                status, answer = self._route(method, path, body)
            except _Reply as reply:
                if reply.violation:
                    state.violations.append(reply.violation)
                status, answer = reply.status, reply.body
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _authorize(self, write: bool) -> None:
        header = self.headers.get("Authorization") or ""
        if not header.startswith("Bearer "):
            raise _Reply(401, {"message": "Unauthorized"}, f"no bearer token: {header[:10]!r}")
        token = header.removeprefix("Bearer ")
        if token == self.state.admin_token:
            return
        if token == self.state.viewer_token:
            if write:
                raise _Reply(403, {"message": "You'll need additional permissions"})
            return
        raise _Reply(401, {"message": "Unauthorized"})

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        s = self.state
        if method == "GET" and path == "/api/health":
            return 200, {"commit": "0000000", "database": "ok", "version": "11.6.0"}
        self._authorize(write=method != "GET")
        if m := re.fullmatch(r"/api/folders/([^/]+)", path):
            uid = m.group(1)
            if method == "GET":
                if uid not in s.folders:
                    raise _Reply(404, {"message": "folder not found", "status": "not-found"})
                return 200, s.folders[uid]
            if method == "PUT":
                req = _require(body, {"title": str}, "PUT /api/folders/:uid")
                folder = s.folders.get(uid)
                if folder is None:
                    raise _Reply(404, {"message": "folder not found"})
                if not req.get("overwrite") and req.get("version") != folder["version"]:
                    raise _Reply(412, {"message": "the folder has been changed by someone else"})
                folder.update(title=req["title"], version=folder["version"] + 1)
                return 200, folder
        if path == "/api/folders" and method == "POST":
            req = _require(body, {"title": str}, "POST /api/folders")
            uid = req.get("uid") or f"f{s.new_id()}"
            if not _UID_RE.match(uid):
                raise _Reply(400, {"message": "invalid uid"}, f"folder uid {uid!r} is invalid")
            if uid in s.folders:
                raise _Reply(409, {"message": "a folder with the same uid already exists"})
            s.folders[uid] = {"id": s.new_id(), "uid": uid, "title": req["title"], "version": 1}
            return 200, s.folders[uid]
        if m := re.fullmatch(r"/api/datasources/uid/([^/]+)", path):
            uid = m.group(1)
            if method == "GET":
                if uid not in s.datasources:
                    raise _Reply(404, {"message": "Data source not found"})
                return 200, self._datasource_view(uid)
            if method == "PUT":
                req = _require(
                    body, {"name": str, "type": str, "access": str}, "PUT /api/datasources/uid"
                )
                if uid not in s.datasources:
                    raise _Reply(404, {"message": "Data source not found"})
                self._store_datasource(uid, req, s.datasources[uid]["id"])
                view = self._datasource_view(uid)
                return 200, {
                    "datasource": view,
                    "id": view["id"],
                    "name": view["name"],
                    "message": "Datasource updated",
                }
        if path == "/api/datasources" and method == "POST":
            req = _require(body, {"name": str, "type": str, "access": str}, "POST /api/datasources")
            if any(d["name"] == req["name"] for d in s.datasources.values()):
                raise _Reply(409, {"message": "data source with the same name already exists"})
            uid = req.get("uid") or f"d{s.new_id()}"
            self._store_datasource(uid, req, s.new_id())
            view = self._datasource_view(uid)
            return 200, {
                "datasource": view,
                "id": view["id"],
                "name": view["name"],
                "message": "Datasource added",
            }
        if m := re.fullmatch(r"/api/dashboards/uid/([^/]+)", path):
            uid = m.group(1)
            if method == "GET":
                if uid not in s.dashboards:
                    raise _Reply(404, {"message": "Dashboard not found"})
                entry = s.dashboards[uid]
                return 200, {
                    "dashboard": entry["model"],
                    "meta": {"folderUid": entry["folder"], "slug": uid},
                }
        if path == "/api/dashboards/db" and method == "POST":
            req = _require(body, {"dashboard": dict}, "POST /api/dashboards/db")
            model = _require(req["dashboard"], {"title": str}, "dashboard model")
            folder = req.get("folderUid")
            if folder is not None and folder not in s.folders:
                raise _Reply(400, {"message": "folder not found"}, f"unknown folderUid {folder}")
            uid = model.get("uid") or f"b{s.new_id()}"
            if not _UID_RE.match(uid):
                raise _Reply(400, {"message": "invalid uid"}, f"dashboard uid {uid!r} is invalid")
            existing = s.dashboards.get(uid)
            if existing is not None and not req.get("overwrite"):
                raise _Reply(
                    412,
                    {
                        "message": "A dashboard with the same uid already exists",
                        "status": "name-exists",
                    },
                )
            version = existing["model"]["version"] + 1 if existing else 1
            ident = existing["model"]["id"] if existing else s.new_id()
            stored = {**model, "id": ident, "uid": uid, "version": version}
            s.dashboards[uid] = {"model": stored, "folder": folder}
            return 200, {
                "id": ident,
                "uid": uid,
                "url": f"/d/{uid}",
                "status": "success",
                "version": version,
                "slug": uid,
            }
        if path == "/api/search" and method == "GET":
            return 200, [
                {
                    "uid": uid,
                    "title": e["model"]["title"],
                    "type": "dash-db",
                    "folderUid": e["folder"],
                }
                for uid, e in s.dashboards.items()
            ]
        raise _Reply(404, {"message": "Not found"}, f"undocumented request {method} {path}")

    def _store_datasource(self, uid: str, req: dict[str, Any], ident: int) -> None:
        s = self.state
        secure = req.get("secureJsonData")
        if secure is not None:
            s.secure[uid] = {**s.secure.get(uid, {}), **secure}
        s.datasources[uid] = {
            k: v for k, v in req.items() if k not in ("secureJsonData", "id", "version")
        } | {"uid": uid, "id": ident, "version": s.datasources.get(uid, {}).get("version", 0) + 1}

    def _datasource_view(self, uid: str) -> dict[str, Any]:
        view = dict(self.state.datasources[uid])
        view["secureJsonFields"] = {k: True for k in self.state.secure.get(uid, {})}
        return view


@contextmanager
def run_grafana_api(admin_token: str, viewer_token: str) -> Iterator[tuple[str, GrafanaState]]:
    """The stand-in on a free loopback port: yields (base URL, state)."""
    state = GrafanaState(admin_token=admin_token, viewer_token=viewer_token)
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="grafana-api", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
