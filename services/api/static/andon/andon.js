// karkhana andon: renders the snapshot and state events of /andon/stream (docs/andon.md).
"use strict";

const STATE_LABELS = {
  running: "RUNNING",
  idle: "IDLE",
  stopped: "STOPPED",
  fault: "FAULT",
  setup: "SETUP",
  planned_stop: "PLANNED STOP",
  off: "OFF",
};
const SVG = "http://www.w3.org/2000/svg";

let source = null;
let dataNow = null; // the andon's clock (ISO), from the server
const siteOf = {}; // machine path -> site (for its timezone)
const tiles = {}; // machine path -> {element, data}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function pct(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value * 100)}`;
}

function localTime(iso, timezone) {
  if (!iso) return "";
  return new Intl.DateTimeFormat("en-GB", {
    hour: "2-digit", minute: "2-digit", timeZone: timezone, hourCycle: "h23",
  }).format(new Date(iso));
}

function duration(fromIso, toIso) {
  if (!fromIso || !toIso) return "";
  const s = Math.max(0, (Date.parse(toIso) - Date.parse(fromIso)) / 1000);
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function sparkline(trend) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "trend");
  svg.setAttribute("viewBox", "0 0 100 30");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const known = trend.filter((p) => p.oee !== null);
  svg.setAttribute(
    "aria-label",
    `OEE per hour of the shift: ${trend.map((p) => pct(p.oee)).join(", ")}`,
  );
  if (known.length === 0) return svg;
  const step = trend.length > 1 ? 100 / (trend.length - 1) : 0;
  const points = [];
  trend.forEach((p, i) => {
    if (p.oee === null) return;
    const x = trend.length > 1 ? i * step : 50;
    const y = 28 - Math.min(1, Math.max(0, p.oee)) * 26;
    points.push(`${x.toFixed(1)},${y.toFixed(1)}`);
  });
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("vector-effect", "non-scaling-stroke");
  svg.appendChild(line);
  // The latest hour as a round dot: a zero-length line whose stroke is not stretched.
  const [lx, ly] = points[points.length - 1].split(",");
  const dot = document.createElementNS(SVG, "line");
  for (const [name, value] of [["x1", lx], ["x2", lx], ["y1", ly], ["y2", ly]]) {
    dot.setAttribute(name, value);
  }
  dot.setAttribute("class", "dot");
  dot.setAttribute("vector-effect", "non-scaling-stroke");
  svg.appendChild(dot);
  return svg;
}

function shownState(data) {
  return data.state === null || data.stale ? "nodata" : data.state;
}

function renderTile(path) {
  const { element, data } = tiles[path];
  const site = siteOf[path];
  const shown = shownState(data);
  element.className = `tile ${shown}`;
  element.dataset.state = shown;
  element.replaceChildren();
  element.appendChild(el("div", "name", data.name || data.id));
  element.appendChild(el("div", "state", shown === "nodata" ? "NO DATA" : STATE_LABELS[shown]));
  let since = "";
  if (shown === "nodata") {
    since = data.last_seen ? `last data ${localTime(data.last_seen, site.timezone)}` : "never seen";
  } else if (data.since) {
    since = `since ${localTime(data.since, site.timezone)} · ${duration(data.since, dataNow)}`;
  }
  element.appendChild(el("div", "since", since));
  const kpi = data.kpi;
  const oee = el("div", "oee", kpi && kpi.oee !== null ? pct(kpi.oee) : "–");
  oee.appendChild(el("small", "", "% OEE"));
  element.appendChild(oee);
  element.appendChild(
    el("div", "apq", kpi ? `A ${pct(kpi.availability)} · P ${pct(kpi.performance)} · Q ${pct(kpi.quality)}` : "no shift now"),
  );
  element.appendChild(sparkline(data.trend || []));
}

function renderSnapshot(snap) {
  dataNow = snap.now;
  const board = document.getElementById("board");
  board.replaceChildren();
  const shifts = [];
  for (const site of snap.sites) {
    shifts.push(
      site.shift
        ? `shift ${site.shift.name} ${localTime(site.shift.start, site.timezone)}–${localTime(site.shift.end, site.timezone)}`
        : "no shift",
    );
    for (const line of site.lines) {
      const section = el("section", "line");
      const heading = el("h2", "", `${line.area} · ${line.name || line.path.split("/")[2]}`);
      const k = line.kpi;
      heading.appendChild(
        el("span", "line-kpi", k ? `OEE ${pct(k.oee)} % (A ${pct(k.availability)} · P ${pct(k.performance)} · Q ${pct(k.quality)})` : ""),
      );
      section.appendChild(heading);
      const grid = el("div", "tiles");
      for (const machine of line.machines) {
        const element = el("article", "tile");
        element.dataset.asset = machine.path;
        siteOf[machine.path] = site;
        tiles[machine.path] = { element, data: machine };
        renderTile(machine.path);
        grid.appendChild(element);
      }
      section.appendChild(grid);
      board.appendChild(section);
    }
  }
  document.getElementById("shift").textContent = shifts.join(" · ");
  renderClock(snap.sites[0]);
}

function renderClock(site) {
  if (!site || !dataNow) return;
  document.getElementById("clock").textContent = localTime(dataNow, site.timezone);
}

function applyState(change) {
  const tile = tiles[change.path];
  if (!tile) return;
  if (change.now) dataNow = change.now;
  Object.assign(tile.data, change);
  renderTile(change.path);
  renderClock(siteOf[change.path]);
}

function setConnection(status, text) {
  document.body.dataset.connection = status;
  document.getElementById("connection").textContent = text;
}

function showSignIn(message) {
  if (source) source.close();
  source = null;
  setConnection("signed-out", "signed out");
  document.getElementById("board").replaceChildren();
  document.getElementById("signin").hidden = false;
  document.getElementById("signin-error").textContent = message || "";
}

async function signIn(key) {
  const response = await fetch("/andon/session", {
    method: "POST",
    headers: { Authorization: `Bearer ${key.trim()}` },
    credentials: "same-origin",
  });
  if (!response.ok) {
    let detail = `the server answered ${response.status}`;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    showSignIn(detail);
    return false;
  }
  document.getElementById("signin").hidden = true;
  return true;
}

async function checkSession() {
  const response = await fetch("/andon/session", { credentials: "same-origin" });
  return response.ok;
}

function connect() {
  if (source) source.close();
  setConnection("connecting", "connecting");
  source = new EventSource("/andon/stream");
  source.addEventListener("open", () => setConnection("live", "live"));
  source.addEventListener("snapshot", (e) => renderSnapshot(JSON.parse(e.data)));
  source.addEventListener("state", (e) => applyState(JSON.parse(e.data)));
  source.addEventListener("problem", (e) => setConnection("problem", JSON.parse(e.data).detail));
  source.addEventListener("end", (e) => showSignIn(JSON.parse(e.data).detail));
  source.addEventListener("error", async () => {
    if (source && source.readyState === EventSource.CONNECTING) {
      setConnection("reconnecting", "reconnecting");
      return;
    }
    // Closed for good (e.g. 401): sign in again, or retry while the server is away.
    try {
      if (!(await checkSession())) { showSignIn("the session ended: enter a key again"); return; }
    } catch (_) { /* server unreachable */ }
    setConnection("reconnecting", "reconnecting");
    setTimeout(connect, 2000);
  });
}

async function start() {
  document.getElementById("signin").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = document.getElementById("key");
    if (await signIn(input.value)) { input.value = ""; connect(); }
  });
  // A link may carry the key in its fragment (never sent to the server or logged):
  // exchange it for the session cookie and drop it from the address bar and history.
  const fragment = new URLSearchParams(location.hash.slice(1));
  const key = fragment.get("key");
  if (key) {
    history.replaceState(null, "", location.pathname + location.search);
    if (!(await signIn(key))) return;
  } else if (!(await checkSession())) {
    showSignIn("");
    return;
  }
  connect();
}

start();
