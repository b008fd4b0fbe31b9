"use strict";
// The ringcast dashboard: polls the HTTP API once a second and draws what it
// reads. No library and nothing loaded from elsewhere (the page is built into
// the server binary and must work offline). Every figure carries its raw
// number in `data-value`, so tests and scripts need not parse the text.

const POLL_MS = 1000;
// Five minutes of one-second samples for the charts.
const HISTORY = 300;
// The windowed p50/p99 compare the histogram with its state this many polls
// ago: long enough to hold some requests at low rates, short enough to move.
const LATENCY_WINDOW = 10;
const KEY_STORE = "ringcast.api_key";
const CONNECTIONS_SHOWN = 100;
const CHANNELS_SHOWN = 10;

const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORE),
  waitingForKey: false,
  prev: null,          // previous /v1/stats sample {t, stats}
  samples: [],         // chart points
  buckets: [],         // cumulative histogram snapshots, newest last
  errorsPrev: null,    // previous errors_by_code
  channelsPrev: new Map(),
  sort: { by: "pending", order: "desc" },
  armed: null,         // client_id whose disconnect button awaits its second click
  timer: null,
};

// ---------------------------------------------------------------- fetching

class AuthError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}
class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, init) {
  const headers = Object.assign({}, (init && init.headers) || {});
  if (state.key) headers["Authorization"] = "Bearer " + state.key;
  const res = await fetch(path, Object.assign({}, init, { headers, cache: "no-store" }));
  const text = await res.text();
  if (res.status === 401 || res.status === 403) {
    throw new AuthError(res.status, errorMessage(text) || res.status + " " + res.statusText);
  }
  if (!res.ok) throw new HttpError(res.status, errorMessage(text) || res.status + " " + res.statusText);
  return text;
}

// The API's errors are {"error": {"code", "message"}}.
function errorMessage(text) {
  try {
    const e = JSON.parse(text).error;
    if (e) return (e.code ? e.code + ": " : "") + (e.message || "");
  } catch (_) { /* not JSON */ }
  return text.trim().slice(0, 200);
}

async function apiJson(path, init) { return JSON.parse(await api(path, init)); }

function askForKey(message) {
  state.waitingForKey = true;
  $("key-form").hidden = false;
  $("key-error").textContent = message || "";
  setStatus("error", "needs the API key");
  $("key-input").focus();
}

$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  state.key = key;
  sessionStorage.setItem(KEY_STORE, key);
  $("key-input").value = "";
  $("key-form").hidden = true;
  state.waitingForKey = false;
  schedule(0);
});

function setStatus(kind, text) {
  const s = $("status");
  s.dataset.state = kind;
  s.textContent = text;
}

// ---------------------------------------------------------------- formats

function fmtCount(n) {
  if (n == null || !isFinite(n)) return "—";
  if (Math.abs(n) < 10 && n % 1 !== 0) return n.toFixed(1);
  return Math.round(n).toLocaleString("en-US");
}

function fmtBytes(n) {
  if (n == null || !isFinite(n)) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? Math.round(n) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
}

function fmtSeconds(s) {
  if (s == null || !isFinite(s)) return "—";
  if (s < 1e-3) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1e3).toFixed(s < 0.01 ? 2 : 1) + " ms";
  return s.toFixed(2) + " s";
}

function fmtDuration(ms) {
  if (ms == null || !isFinite(ms)) return "—";
  let s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return s + "s";
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m" + (d ? "" : " " + s + "s");
}

// Sets a figure's text and its raw value.
function show(id, raw, text) {
  const el = $(id);
  el.dataset.value = raw == null ? "" : String(raw);
  el.textContent = text;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

// ---------------------------------------------------------------- histogram

// Sums `ringcast_request_duration_seconds_bucket` over shards: a sorted list
// of [upper bound in seconds, cumulative count].
function parseBuckets(text) {
  const byLe = new Map();
  const re = /^ringcast_request_duration_seconds_bucket\{([^}]*)\}\s+(\S+)/;
  for (const line of text.split("\n")) {
    const m = re.exec(line);
    if (!m) continue;
    const le = /(?:^|,)le="([^"]+)"/.exec(m[1]);
    if (!le) continue;
    const bound = le[1] === "+Inf" ? Infinity : parseFloat(le[1]);
    byLe.set(bound, (byLe.get(bound) || 0) + parseFloat(m[2]));
  }
  return Array.from(byLe.entries()).sort((a, b) => a[0] - b[0]);
}

// The upper bound of the bucket holding quantile `q`, or null with no
// requests; past the last finite bound, that bound (shown as "> …").
function quantile(buckets, q) {
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (total <= 0) return null;
  const rank = q * total;
  for (let i = 0; i < buckets.length; i++) {
    if (buckets[i][1] >= rank) {
      if (buckets[i][0] !== Infinity) return { bound: buckets[i][0], over: false };
      return { bound: i > 0 ? buckets[i - 1][0] : 0, over: true };
    }
  }
  return null;
}

function minus(now, then) {
  if (!then || then.length !== now.length) return now;
  return now.map(([le, n], i) => [le, Math.max(0, n - then[i][1])]);
}

function fmtQuantile(r) { return r ? (r.over ? "> " : "≤ ") + fmtSeconds(r.bound) : "—"; }

// ---------------------------------------------------------------- stats

// Counters whose per-second rate the page shows, read from /v1/stats.
function counters(s) {
  const deliveries = (s.broadcasts_delivered || 0) + (s.channel_deliveries || 0);
  return {
    msgsIn: s.total_messages || 0,
    // Every request is answered with one frame, and every delivery is one.
    msgsOut: (s.total_messages || 0) + deliveries,
    deliveries,
    bytesIn: s.bytes_received || 0,
    bytesOut: s.bytes_sent || 0,
  };
}

function renderStats(stats, metricsText) {
  const t = Date.parse(stats.current_time);
  const now = { t: isFinite(t) ? t : Date.now(), wall: performance.now(), c: counters(stats) };
  const prev = state.prev;
  let rates = null;
  if (prev) {
    // The server's own clock spaces the samples; the page's timer drifts.
    let dt = (now.t - prev.t) / 1000;
    if (!(dt > 0.2)) dt = (now.wall - prev.wall) / 1000;
    if (dt > 0) {
      rates = {};
      for (const k of Object.keys(now.c)) rates[k] = Math.max(0, now.c[k] - prev.c[k]) / dt;
    }
  }
  state.prev = now;

  show("node", stats.cluster ? stats.cluster.node_id : "", stats.cluster ? "node " + stats.cluster.node_id : "single node");
  show("backend", stats.io_backend || "", (stats.io_backend || "?") + " · " + (stats.shards || "?") + " shards");
  show("uptime", stats.uptime_seconds, "up " + fmtDuration((stats.uptime_seconds || 0) * 1000));
  show("clients", stats.connected_clients, fmtCount(stats.connected_clients));
  const rate = (id, v, f) => show(id, v == null ? null : v.toFixed(2), v == null ? "…" : f(v));
  rate("msgs-in-rate", rates && rates.msgsIn, fmtCount);
  rate("msgs-out-rate", rates && rates.msgsOut, fmtCount);
  rate("deliveries-rate", rates && rates.deliveries, fmtCount);
  rate("bytes-in-rate", rates && rates.bytesIn, fmtBytes);
  rate("bytes-out-rate", rates && rates.bytesOut, fmtBytes);
  show("slow-consumers", stats.slow_consumer_disconnects, fmtCount(stats.slow_consumer_disconnects));
  show("errors-total", stats.protocol_errors, fmtCount(stats.protocol_errors));
  show("channels-count", stats.channels, fmtCount(stats.channels));
  show("subscriptions-count", stats.subscriptions, fmtCount(stats.subscriptions) + " subscriptions");
  show("rss", stats.rss_bytes, fmtBytes(stats.rss_bytes));

  // Request time: over the last LATENCY_WINDOW polls, and since start.
  let p50 = null, p99 = null;
  if (metricsText != null) {
    const cum = parseBuckets(metricsText);
    state.buckets.push(cum);
    if (state.buckets.length > LATENCY_WINDOW + 1) state.buckets.shift();
    const recent = minus(cum, state.buckets.length > 1 ? state.buckets[0] : null);
    p50 = quantile(recent, 0.5);
    p99 = quantile(recent, 0.99);
    const t50 = quantile(cum, 0.5), t99 = quantile(cum, 0.99);
    show("p50", p50 && p50.bound, fmtQuantile(p50));
    show("p99", p99 && p99.bound, fmtQuantile(p99));
    show("p50-total", t50 && t50.bound, "since start " + fmtQuantile(t50));
    show("p99-total", t99 && t99.bound, "since start " + fmtQuantile(t99));
  } else {
    show("p50", null, "—");
    show("p99", null, "—");
    show("p50-total", null, "/metrics not readable");
    show("p99-total", null, "");
  }

  renderErrors(stats.errors_by_code || {}, now.t);
  renderBackplane(stats.cluster);

  if (rates) {
    state.samples.push({
      t: now.t, clients: stats.connected_clients,
      msgsIn: rates.msgsIn, msgsOut: rates.msgsOut, deliveries: rates.deliveries,
      bytesIn: rates.bytesIn, bytesOut: rates.bytesOut,
      p50: p50 ? p50.bound * 1e3 : null, p99: p99 ? p99.bound * 1e3 : null,
    });
    while (state.samples.length && state.samples[0].t < now.t - HISTORY * 1000) state.samples.shift();
  }
  drawCharts(now.t);
}

function renderErrors(byCode, t) {
  const body = $("errors").tBodies[0];
  body.textContent = "";
  const prev = state.errorsPrev;
  const dt = prev ? (t - prev.t) / 1000 : 0;
  const codes = Object.keys(byCode).filter((c) => byCode[c] > 0).sort((a, b) => byCode[b] - byCode[a]);
  for (const code of codes) {
    const tr = body.insertRow();
    tr.dataset.code = code;
    tr.dataset.value = String(byCode[code]);
    cell(tr, code);
    cell(tr, fmtCount(byCode[code]), "num");
    const r = prev && dt > 0 ? Math.max(0, byCode[code] - (prev.codes[code] || 0)) / dt : null;
    cell(tr, r == null ? "…" : fmtCount(r), "num");
  }
  $("errors-none").hidden = codes.length > 0;
  state.errorsPrev = { t, codes: byCode };
}

function renderBackplane(cluster) {
  if (!cluster) {
    show("backplane", "none", "none (single node)");
    show("backplane-buffered", 0, "0 B");
    show("backplane-bad", 0, "0");
    return;
  }
  show("backplane", cluster.backplane, cluster.backplane);
  show("backplane-buffered", cluster.buffered_bytes, fmtBytes(cluster.buffered_bytes));
  show("backplane-bad", cluster.backplane_bad_entries, fmtCount(cluster.backplane_bad_entries));
}

// ---------------------------------------------------------------- listings

function first(obj, names) {
  for (const n of names) if (obj && obj[n] != null) return obj[n];
  return null;
}

function renderCluster(c) {
  const body = $("cluster").tBodies[0];
  body.textContent = "";
  const self = first(c, ["node_id", "node", "id"]);
  for (const n of c.nodes || []) {
    const id = first(n, ["id", "node_id", "node"]);
    const tr = body.insertRow();
    tr.dataset.node = id;
    const here = n.self === true || id === self;
    cell(tr, id + (here ? " (this node)" : ""));
    cell(tr, fmtCount(first(n, ["clients", "connected_clients"])), "num");
    const age = first(n, ["heartbeat_age_ms", "last_heartbeat_ms", "age_ms"]);
    cell(tr, here ? "—" : age == null ? "?" : fmtSeconds(age / 1000) + " ago", "num");
  }
  if (c.backplane != null) show("backplane", c.backplane, c.backplane);
  const buffered = first(c, ["buffered_bytes"]);
  if (buffered != null) show("backplane-buffered", buffered, fmtBytes(buffered));
  const bad = first(c, ["bad_entries", "backplane_bad_entries"]);
  if (bad != null) show("backplane-bad", bad, fmtCount(bad));
}

function renderChannels(res, t) {
  const list = Array.isArray(res) ? res : res.channels || [];
  const body = $("channels").tBodies[0];
  body.textContent = "";
  const seen = new Map();
  for (const ch of list) {
    const tr = body.insertRow();
    tr.dataset.channel = ch.channel;
    cell(tr, ch.channel);
    cell(tr, fmtCount(ch.subscribers), "num");
    cell(tr, fmtCount(ch.publishes), "num");
    cell(tr, fmtCount(ch.deliveries), "num");
    const p = state.channelsPrev.get(ch.channel);
    const dt = p ? (t - p.t) / 1000 : 0;
    cell(tr, p && dt > 0 ? fmtCount(Math.max(0, ch.deliveries - p.deliveries) / dt) : "…", "num");
    seen.set(ch.channel, { t, deliveries: ch.deliveries });
  }
  state.channelsPrev = seen;
  $("channels-none").hidden = list.length > 0;
  $("channels-none").textContent = "no channel has subscribers or publishes";
}

function timeMs(v) {
  if (v == null) return null;
  return typeof v === "number" ? (v > 1e12 ? v : v * 1000) : Date.parse(v);
}

function renderConnections(res) {
  const body = $("connections").tBodies[0];
  body.textContent = "";
  show("connections-total", res.total, (res.total != null ? fmtCount(res.total) : "?") + " open" +
    (res.total > (res.connections || []).length ? ", first " + res.connections.length + " shown" : ""));
  const now = Date.now();
  for (const c of res.connections || []) {
    const tr = body.insertRow();
    tr.dataset.clientId = c.client_id;
    tr.dataset.pending = String(c.pending_bytes);
    cell(tr, c.client_id);
    cell(tr, c.user == null ? "" : c.user);
    cell(tr, String(c.shard), "num");
    const since = timeMs(c.connected_at);
    cell(tr, since == null || !isFinite(since) ? "?" : fmtDuration(now - since), "num");
    cell(tr, fmtDuration(c.idle_ms), "num");
    cell(tr, fmtCount(Array.isArray(c.subscriptions) ? c.subscriptions.length : c.subscriptions), "num");
    cell(tr, fmtCount(c.msgs_in), "num");
    cell(tr, fmtCount(c.msgs_out), "num");
    cell(tr, fmtBytes(c.bytes_out), "num");
    cell(tr, fmtBytes(c.pending_bytes), "num");
    const td = cell(tr, "");
    const b = document.createElement("button");
    b.className = "disconnect";
    b.dataset.clientId = c.client_id;
    b.textContent = state.armed === c.client_id ? "confirm" : "disconnect";
    td.appendChild(b);
  }
  $("connections-none").hidden = (res.connections || []).length > 0;
  $("connections-none").textContent = "no open connection";
}

// Two clicks cut a client: the first arms the button, the second sends
// POST /v1/disconnect. (No confirm(): a modal dialog stops the page's polls.)
$("connections").addEventListener("click", async (ev) => {
  const th = ev.target.closest("th[data-sort]");
  if (th) {
    const by = th.dataset.sort;
    state.sort = { by, order: state.sort.by === by && state.sort.order === "desc" ? "asc" : "desc" };
    markSort();
    schedule(0);
    return;
  }
  const b = ev.target.closest("button.disconnect");
  if (!b) return;
  const id = b.dataset.clientId;
  if (state.armed !== id) {
    state.armed = id;
    b.textContent = "confirm";
    return;
  }
  state.armed = null;
  b.disabled = true;
  const out = $("action-result");
  try {
    const r = await apiJson("/v1/disconnect", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ client_id: id, reason: "disconnected from the dashboard" }),
    });
    out.textContent = "disconnected " + id + " (" + r.disconnected + ")";
    out.dataset.result = "ok";
  } catch (e) {
    out.textContent = "could not disconnect " + id + ": " + e.message;
    out.dataset.result = "error";
    // 401: no key or a wrong one. A 403 says the server has no key set at
    // all (writes need one): asking for a key would not help.
    if (e instanceof AuthError && e.status === 401) {
      state.key = null;
      sessionStorage.removeItem(KEY_STORE);
      askForKey(e.message);
    }
  }
  schedule(0);
});

function markSort() {
  for (const th of $("connections").tHead.rows[0].cells) {
    if (!th.dataset.sort) continue;
    const on = th.dataset.sort === state.sort.by;
    if (on) th.setAttribute("aria-sort", state.sort.order === "asc" ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  }
}

// ---------------------------------------------------------------- charts

const COLORS = { in: "#2563eb", out: "#d97706", del: "#059669" };

function drawChart(id, series, tEnd, fmt) {
  const canvas = $(id);
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr); }
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 58, right = 6, top = 6, bottom = 16;
  const tStart = tEnd - HISTORY * 1000;
  let max = 0;
  for (const s of series) for (const p of state.samples) if (p[s.key] != null) max = Math.max(max, p[s.key]);
  max = max > 0 ? max * 1.1 : 1;
  const x = (t) => left + ((t - tStart) / (tEnd - tStart)) * (w - left - right);
  const y = (v) => top + (1 - v / max) * (h - top - bottom);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#6b7280";
  g.strokeStyle = "#e5e7eb";
  g.lineWidth = 1;
  for (let i = 0; i <= 3; i++) {
    const v = (max / 3) * i, yy = Math.round(y(v)) + 0.5;
    g.beginPath(); g.moveTo(left, yy); g.lineTo(w - right, yy); g.stroke();
    g.textAlign = "right"; g.textBaseline = "middle";
    g.fillText(fmt(v), left - 4, yy);
  }
  g.textAlign = "left"; g.textBaseline = "alphabetic";
  g.fillText("−5 min", left, h - 3);
  g.textAlign = "right";
  g.fillText("now", w - right, h - 3);
  for (const s of series) {
    g.strokeStyle = s.color;
    g.lineWidth = 1.5;
    g.beginPath();
    let started = false;
    for (const p of state.samples) {
      const v = p[s.key];
      if (v == null) { started = false; continue; }
      if (!started) { g.moveTo(x(p.t), y(v)); started = true; } else g.lineTo(x(p.t), y(v));
    }
    g.stroke();
  }
}

function drawCharts(tEnd) {
  const n = (v) => fmtCount(v);
  drawChart("chart-clients", [{ key: "clients", color: COLORS.in }], tEnd, n);
  drawChart("chart-msgs", [
    { key: "msgsIn", color: COLORS.in }, { key: "msgsOut", color: COLORS.out }, { key: "deliveries", color: COLORS.del },
  ], tEnd, n);
  drawChart("chart-bytes", [{ key: "bytesIn", color: COLORS.in }, { key: "bytesOut", color: COLORS.out }], tEnd, fmtBytes);
  drawChart("chart-latency", [{ key: "p50", color: COLORS.in }, { key: "p99", color: COLORS.out }], tEnd,
    (v) => (v < 1 ? v.toFixed(2) : v.toFixed(0)));
}

// ---------------------------------------------------------------- the loop

function schedule(ms) {
  clearTimeout(state.timer);
  state.timer = setTimeout(poll, ms);
}

async function poll() {
  if (state.waitingForKey) return;
  const q = "/v1/connections?limit=" + CONNECTIONS_SHOWN + "&sort=" + state.sort.by + "&order=" + state.sort.order;
  const started = performance.now();
  const [stats, metrics, conns, chans, cluster] = await Promise.allSettled([
    apiJson("/v1/stats"),
    api("/metrics"),
    apiJson(q),
    apiJson("/v1/channels?limit=" + CHANNELS_SHOWN + "&sort=deliveries"),
    apiJson("/v1/cluster"),
  ]);
  const all = [stats, metrics, conns, chans, cluster];
  const auth = all.find((r) => r.status === "rejected" && r.reason instanceof AuthError);
  if (auth) {
    const why = state.key ? "the key was refused (" + auth.reason.message + ")" : auth.reason.message;
    if (state.key) { state.key = null; sessionStorage.removeItem(KEY_STORE); }
    askForKey(why);
    return;
  }
  if (stats.status === "fulfilled") {
    renderStats(stats.value, metrics.status === "fulfilled" ? metrics.value : null);
    const t = state.prev.t;
    if (conns.status === "fulfilled") renderConnections(conns.value);
    else $("connections-none").textContent = "listing unavailable: " + conns.reason.message;
    if (chans.status === "fulfilled") renderChannels(chans.value, t);
    else { $("channels-none").hidden = false; $("channels-none").textContent = "listing unavailable: " + chans.reason.message; }
    if (cluster.status === "fulfilled") renderCluster(cluster.value);
    setStatus("ok", "live · " + new Date(t).toISOString().slice(11, 19) + " UTC");
    document.body.dataset.polls = String((Number(document.body.dataset.polls) || 0) + 1);
  } else {
    setStatus("error", "cannot read /v1/stats: " + stats.reason.message);
  }
  schedule(Math.max(0, POLL_MS - (performance.now() - started)));
}

markSort();
poll();
