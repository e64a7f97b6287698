// Sense HAT dashboard: tiles of each node's latest reading and SVG charts, polling the JSON
// API of the binary that served this file. Plain JavaScript, no library, nothing from outside.
"use strict";

const TILE_POLL_MS = 2000;          // a new reading shows within this
const TILE_TIMEOUT_MS = 30000;      // given up on after this (it takes milliseconds), asked again,
                                    // with twice as long after each time out (up to a chart's)
const AGE_TICK_MS = 1000;           // tiles' ages count on between answers, and without any
// Charts are asked for again once a bucket's time has passed (each ask aggregates the whole
// window, and the tiles show each new reading anyway), within these bounds.
const CHART_POLL_MIN_MS = 5000;
const CHART_POLL_MAX_MS = 60000;
const CHART_POINTS = 600;           // the most buckets the server makes of a window
const CHART_TIMEOUT_MS = 120000;    // a long window on a slow server may take tens of seconds
const RESIZE_REDRAW_MS = 200;       // a drag's resize events redraw once, this long after the last
const ALL_NODES_MAX = 12;           // the all-nodes view charts the first this many (a request
                                    // each, every refresh); any other is charted when picked
const FIELDS = [
  { name: "temperature", unit: "°C", digits: 1 },
  { name: "humidity", unit: "%RH", digits: 1 },
  { name: "pressure", unit: "hPa", digits: 1 },
];
const WINDOWS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
// One per node the all-nodes view charts (ALL_NODES_MAX), so no two of its lines look alike;
// none near the motion ticks' red, and each at least 25 (CIE76 ΔE) from the others, which the
// browser test checks.
const COLOURS = ["#1f6fb4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
                 "#bcbd22", "#222222", "#4b0082", "#b8860b"];
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
let nodes = [];          // names, in the API's order (sorted)
let latest = new Map();  // name -> { node: its latest answer, bornMs: that reading's time on this clock }
let chartTimer = null;
let chartsStarted = false;  // whether refreshCharts has run: the first node list starts it
let chartSeq = 0;        // the latest refreshCharts call; an older one's answer is dropped
let chartCancel = null;  // cancels the requests of the refresh under way when a newer one starts
let drawn = null;        // the answers drawn last, with their window: a resize draws them again
let resizeTimer = null;
let problems = {};       // what failed, by source; shown in the status bar
let tileTimeoutMs = TILE_TIMEOUT_MS;  // the node list's, longer while it keeps timing out
let clockOffsetMs = 0;   // the dashboard's clock minus this browser's (see noteServerClock)

// --- fetching -----------------------------------------------------------------------------

/** GET a JSON API route; rejects with the server's one-line reason, when no whole answer
 *  came within `timeoutMs` (a kept-alive connection that died while a laptop slept never
 *  answers), or when `cancel` (an AbortSignal, optional) is aborted. */
async function getJson(path, timeoutMs, cancel) {
  const abort = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => { timedOut = true; abort.abort(); }, timeoutMs);
  const onCancel = () => abort.abort();
  if (cancel) {
    if (cancel.aborted) abort.abort();
    cancel.addEventListener("abort", onCancel);
  }
  try {
    let res;
    try {
      res = await fetch(path, { cache: "no-store", signal: abort.signal });
    } catch (e) {
      if (abort.signal.aborted) throw e;
      throw new Error("the dashboard cannot be reached (" + e.message + ")");
    }
    noteServerClock(res);
    // A body cut short by a cancel or the timeout is no answer, not an answer without a body.
    const body = await res.json().catch((e) => {
      if (abort.signal.aborted) throw e;
      return { error: res.statusText };
    });
    if (!res.ok) throw new Error(body.error || res.statusText);
    return body;
  } catch (e) {
    if (timedOut) {
      const late = new Error(`no answer from the dashboard within ${timeoutMs / 1000} s`);
      late.timedOut = true;
      throw late;
    }
    throw e;
  } finally {
    clearTimeout(timer);
    if (cancel) cancel.removeEventListener("abort", onCancel);
  }
}

/** Take the dashboard's clock from an answer's `Date` header, which every answer carries.
 *  The windows end at the dashboard's now, not this browser's, as the tiles' ages do: the
 *  readings are dated by the Pis' clocks, and a phone set right beside a Pi without a
 *  real-time clock days behind (the dashboard on it) saw no reading in any window, while a
 *  browser ten minutes slow never saw the newest ten minutes. A header rather than windows
 *  the server ends: no change to the API, and the CSV link and the from–to fields get the
 *  same now. Its whole seconds (the middle of the second is taken) are far finer than the
 *  shortest window's 10 s buckets. An answer without one (a proxy took it out) leaves the
 *  last offset. */
function noteServerClock(res) {
  const date = Date.parse(res.headers.get("Date") || "");
  if (!isNaN(date)) clockOffsetMs = date + 500 - Date.now();
}

/** Now on the dashboard's clock, as far as its last answer told. */
function serverNow() {
  return Date.now() + clockOffsetMs;
}

/** Show or clear a failure of one source (tiles, charts, window) in the status bar. */
function report(source, error) {
  if (error) problems[source] = error.message; else delete problems[source];
  const messages = [...new Set(Object.values(problems))];
  $("status").hidden = messages.length === 0;
  $("status").textContent = messages.join(" — ");
}

/** The chosen window as ISO strings; null for a from–to window with a time missing, which
 *  is no window: the last day, drawn and downloaded in its place, was not what was asked. */
function currentWindow() {
  const choice = $("window").value;
  if (choice === "custom") {
    const from = new Date($("from").value), to = new Date($("to").value);
    if (isNaN(from) || isNaN(to)) return null;
    return { from: from.toISOString(), to: to.toISOString() };
  }
  const to = serverNow();
  const span = WINDOWS[choice] || WINDOWS["24h"];
  return { from: new Date(to - span).toISOString(), to: new Date(to).toISOString() };
}

// --- tiles --------------------------------------------------------------------------------

function colourOf(node) {
  const i = nodes.indexOf(node);
  return COLOURS[(i < 0 ? 0 : i) % COLOURS.length];
}

function formatAge(seconds) {
  if (seconds == null) return "never";
  if (seconds < 60) return seconds.toFixed(0) + " s ago";
  if (seconds < 3600) return (seconds / 60).toFixed(0) + " min ago";
  if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h ago";
  return (seconds / 86400).toFixed(0) + " days ago";
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}

function renderTiles(list) {
  const now = Date.now();
  latest = new Map(list.map((n) => [n.nodeName, {
    node: n, bornMs: typeof n.ageSeconds === "number" ? now - n.ageSeconds * 1000 : null,
  }]));
  const tiles = $("tiles");
  tiles.replaceChildren(...list.map((n) => {
    const tile = el("article", { class: "tile", "data-node": n.nodeName });
    tile.style.setProperty("--node-colour", colourOf(n.nodeName));
    tile.append(el("h2", {}, n.nodeName));
    for (const f of FIELDS) {
      const v = typeof n[f.name] === "number" ? n[f.name].toFixed(f.digits) + " " + f.unit : "–";
      tile.append(el("div", { class: "v", "data-field": f.name }, v));
    }
    tile.append(el("div", { class: "v" + (n.isMoving ? " moving" : ""), "data-field": "isMoving" },
      n.isMoving ? "moving" : "still"));
    tile.append(el("div", { class: "age", "data-field": "age", title: n.recordedAt || "" }));
    return tile;
  }));
  if (list.length === 0) tiles.append(el("p", {}, "No readings yet."));
  showAges();
}

/** Each tile's age and staleness, counted on in the page from the last answer: the age the
 *  server gave plus the time since on this browser's clock (its own setting does not matter),
 *  so that while no answer comes (the database or the dashboard down, a request hanging) the
 *  age goes on and the tile turns stale past --stale-after, as it would were the node silent. */
function showAges() {
  const now = Date.now();
  for (const tile of $("tiles").querySelectorAll(".tile")) {
    const known = latest.get(tile.dataset.node);
    if (!known) continue;
    const n = known.node;
    const age = known.bornMs == null ? null : Math.max(0, now - known.bornMs) / 1000;
    const stale = n.stale || (age != null && age > n.staleAfterSeconds);
    tile.classList.toggle("stale", stale);
    tile.querySelector("[data-field=age]").textContent = (stale ? "stale: " : "") + formatAge(age);
  }
}

/** Keep the node menu in step with the nodes there are. */
function updateNodeMenu(names) {
  const menu = $("node");
  const chosen = menu.value;
  const known = [...menu.options].slice(1).map((o) => o.value);
  if (known.join("\n") === names.join("\n")) return false;
  menu.replaceChildren(el("option", { value: "" }, "all nodes"), ...names.map((n) => el("option", { value: n }, n)));
  menu.value = names.includes(chosen) ? chosen : "";
  return true;
}

async function pollTiles() {
  try {
    const list = await getJson("/api/nodes", tileTimeoutMs);
    tileTimeoutMs = TILE_TIMEOUT_MS;
    const names = list.map((n) => n.nodeName);
    const changed = updateNodeMenu(names);
    nodes = names;
    renderTiles(list);
    // The database back after an outage: the charts, which wait longer after a failure, are
    // asked for at once. The first list starts them even when it has no node (the menu then
    // does not change): the charts say there are no readings rather than stay blank.
    const back = "tiles" in problems && "charts" in problems;
    report("tiles", null);
    if (changed || back || !chartsStarted) refreshCharts();
  } catch (e) {
    // A dead connection is mended by asking again at once; a list that takes long to make
    // (hundreds of nodes on a distant database) needs longer, and gets it.
    if (e.timedOut) tileTimeoutMs = Math.min(2 * tileTimeoutMs, CHART_TIMEOUT_MS);
    report("tiles", e);
  } finally {
    setTimeout(pollTiles, TILE_POLL_MS);
  }
}

// --- charts -------------------------------------------------------------------------------

function svg(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

/** Split points into runs of adjacent buckets: a missing bucket is a gap, never bridged. */
function runs(points, bucketMs) {
  const out = [];
  let run = [];
  for (const p of points) {
    if (run.length && p.ms - run[run.length - 1].ms > bucketMs) { out.push(run); run = []; }
    run.push(p);
  }
  if (run.length) out.push(run);
  return out;
}

function timeLabel(ms, spanMs) {
  const d = new Date(ms);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return spanMs <= 2 * 86400e3 ? hm : d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + hm;
}

/** Draw one field's chart: a line (and min/max band) per series, motion ticks, axes. */
function drawChart(target, field, series, motion, win) {
  const W = target.clientWidth || 800, H = target.clientHeight || 220;
  const m = { left: 56, right: 12, top: 10, bottom: 24 };
  const x0 = Date.parse(win.from), x1 = Date.parse(win.to);
  // A loop, not Math.min(...points): spread as arguments, a few hundred thousand points
  // overflow the stack ("Maximum call stack size exceeded") and nothing is drawn.
  let lo = Infinity, hi = -Infinity, count = 0;
  for (const s of series) {
    for (const p of s.points) {
      if (p.min < lo) lo = p.min;
      if (p.max > hi) hi = p.max;
      count++;
    }
  }
  if (!isFinite(lo) || !isFinite(hi)) { lo = 0; hi = 1; }
  const pad = Math.max((hi - lo) * 0.08, 0.05);
  lo -= pad; hi += pad;
  const x = (ms) => m.left + ((ms - x0) / (x1 - x0)) * (W - m.left - m.right);
  const y = (v) => H - m.bottom - ((v - lo) / (hi - lo)) * (H - m.top - m.bottom);
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4, t = x0 + ((x1 - x0) * i) / 4;
    parts.push(svg("line", { class: "grid", x1: m.left, x2: W - m.right, y1: y(v), y2: y(v) }));
    const yl = svg("text", { x: m.left - 6, y: y(v) + 4, "text-anchor": "end" });
    yl.textContent = v.toFixed(field.digits);
    const xl = svg("text", { x: x(t), y: H - 6, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" });
    xl.textContent = timeLabel(t, x1 - x0);
    parts.push(yl, xl);
  }
  parts.push(svg("line", { class: "axis", x1: m.left, x2: W - m.right, y1: H - m.bottom, y2: H - m.bottom }));
  for (const s of series) {
    const colour = colourOf(s.node), half = s.bucketMs / 2;
    for (const run of runs(s.points, s.bucketMs)) {
      if (run.some((p) => p.count > 1)) {
        const upper = run.map((p) => `${x(p.ms + half)},${y(p.max)}`);
        const lower = run.slice().reverse().map((p) => `${x(p.ms + half)},${y(p.min)}`);
        parts.push(svg("polygon", { class: "band", fill: colour, points: upper.concat(lower).join(" ") }));
      }
      if (run.length === 1) {
        parts.push(svg("circle", { cx: x(run[0].ms + half), cy: y(run[0].avg), r: 2.5, fill: colour }));
      } else {
        const d = run.map((p, i) => `${i ? "L" : "M"}${x(p.ms + half).toFixed(1)},${y(p.avg).toFixed(1)}`).join("");
        parts.push(svg("path", { class: "line", stroke: colour, d, "data-node": s.node }));
      }
    }
  }
  for (const mk of motion) {
    const mx = x(mk.ms + mk.bucketMs / 2);
    parts.push(svg("line", { class: "motion", x1: mx, x2: mx, y1: H - m.bottom, y2: H - m.bottom - 8 }));
  }
  if (count === 0) {
    const t = svg("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" });
    t.textContent = "no readings in this window";
    parts.push(t);
  }
  target.setAttribute("viewBox", `0 0 ${W} ${H}`);
  // Through a fragment, for the same reason: a gappy series may have a piece per point.
  const drawing = document.createDocumentFragment();
  for (const p of parts) drawing.appendChild(p);
  target.replaceChildren(drawing);
}

function withMs(points, bucketSeconds) {
  return points.map((p) => ({ ...p, ms: Date.parse(p.t), bucketMs: bucketSeconds * 1000 }));
}

/** Draw every chart from `charts` (one answer per node) over the window `win`. */
function drawCharts({ charts, win }) {
  const marks = charts.flatMap((c) => withMs(c.marks, c.bucketSeconds));
  for (const f of FIELDS) {
    const series = charts.map((c) => ({
      node: c.node, bucketMs: c.bucketSeconds * 1000, points: withMs(c.series[f.name], c.bucketSeconds),
    }));
    drawChart($("chart-" + f.name), f, series, marks, win);
  }
}

async function refreshCharts() {
  chartsStarted = true;
  clearTimeout(chartTimer);
  // A change while an earlier refresh waits for its answer starts another: only the latest
  // draws, and only it polls on, or each overlap would leave a poll of its own running. The
  // earlier one's requests are cancelled: no one would see their answers, and each is an
  // aggregation the server would run (those not sent yet never are).
  if (chartCancel) chartCancel.abort();
  const cancel = chartCancel = new AbortController();
  const seq = ++chartSeq;
  const win = currentWindow();
  if (!win) {
    // Nothing is asked, nor polled, until both times are given (each field's change
    // refreshes); what is drawn was another window's, and the CSV link would be too.
    drawn = null;
    for (const f of FIELDS) $("chart-" + f.name).replaceChildren();
    $("csv").hidden = true;
    report("charts", null);
    report("window", new Error("Enter both a from and a to time for the from – to window."));
    return;
  }
  report("window", null);
  const chosen = $("node").value;
  // All nodes of a fleet would be a request each every refresh and lines no one can tell
  // apart: the first ALL_NODES_MAX are drawn, and the page says so.
  const shown = chosen ? [chosen] : nodes.slice(0, ALL_NODES_MAX);
  const note = $("chart-note");
  note.hidden = shown.length === nodes.length || chosen !== "";
  note.textContent = `Charts showing ${shown.length} of ${nodes.length} nodes (the first by name); pick a node to chart another.`;
  const q = (node) => `node=${encodeURIComponent(node)}&from=${win.from}&to=${win.to}`;
  $("csv").hidden = !chosen;
  if (chosen) $("csv").href = "/api/csv?" + q(chosen);
  // Until an answer gives the bucket width, and after a failure (a window too long for the
  // server's time limit must not be asked for every 5 s), the width the window implies; the
  // tiles ask for the charts at once when the database is back after an outage.
  const spanMs = Date.parse(win.to) - Date.parse(win.from);
  const clampPoll = (ms) => Math.min(Math.max(ms, CHART_POLL_MIN_MS), CHART_POLL_MAX_MS);
  let pollMs = clampPoll(spanMs / CHART_POINTS);
  try {
    // One request per node: its three series and its motion, bucketed in one pass. A node
    // whose request fails is left out and named in the status bar; the others still draw.
    const answers = await Promise.allSettled(shown.map((n) => getJson("/api/chart?" + q(n), CHART_TIMEOUT_MS, cancel.signal)));
    if (seq !== chartSeq) return;
    const charts = answers.filter((a) => a.status === "fulfilled").map((a) => a.value);
    const failed = shown
      .map((n, i) => [n, answers[i]])
      .filter(([, a]) => a.status === "rejected")
      .map(([n, a]) => `${n}: ${a.reason.message}`);
    // Every one failed (the database is down, say): keep what is drawn and say why, once.
    const first = answers.find((a) => a.status === "rejected");
    if (charts.length === 0 && first) throw first.reason;
    drawn = { charts, win };
    if (charts.length) pollMs = clampPoll(charts[0].bucketSeconds * 1000);
    drawCharts(drawn);
    report("charts", failed.length ? new Error("no chart for " + failed.join("; ")) : null);
  } catch (e) {
    if (seq === chartSeq) report("charts", e);
  } finally {
    if (seq === chartSeq) chartTimer = setTimeout(refreshCharts, pollMs);
  }
}

// --- controls -----------------------------------------------------------------------------

function localInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60e3);
  return d.toISOString().slice(0, 16);
}

$("window").addEventListener("change", () => {
  const custom = $("window").value === "custom";
  $("custom").hidden = !custom;
  if (custom && !$("from").value) {
    $("from").value = localInput(serverNow() - 86400e3);
    $("to").value = localInput(serverNow());
  }
  refreshCharts();
});
for (const id of ["node", "from", "to"]) $(id).addEventListener("change", refreshCharts);
// A new size changes no answer: the charts drawn are drawn again to it, without asking the
// server, once the window has kept its size a moment (a drag sends dozens of events a second).
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => { if (drawn) drawCharts(drawn); }, RESIZE_REDRAW_MS);
});

pollTiles();
setInterval(showAges, AGE_TICK_MS);
