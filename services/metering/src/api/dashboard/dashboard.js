// The dashboard's script: reads the API (alarms, their history, meters and statistics, the
// engine's report) and draws it; refreshes every REFRESH_MS. No library, nothing fetched
// from anywhere but this API.
"use strict";

const REFRESH_MS = 10000;
const MAX_METERS = 12;
const HISTORY_SHOWN = 3;
const TOKEN_KEY = "tidings-token";
const OPERATORS = { lt: "<", le: "≤", eq: "=", ne: "≠", ge: "≥", gt: ">" };

const $ = (id) => document.getElementById(id);

function text(value) {
  const span = document.createElement("span");
  span.textContent = value === undefined || value === null ? "" : String(value);
  return span;
}

function cell(row, content, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (content instanceof Node) td.appendChild(content);
  else td.textContent = content === undefined || content === null ? "" : String(content);
  row.appendChild(td);
  return td;
}

function ago(timestamp) {
  const then = Date.parse(timestamp);
  if (Number.isNaN(then)) return "";
  const s = Math.max(0, Math.round((Date.now() - then) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function badge(state) {
  const span = text(state);
  span.className = "state state-" + String(state).replace(/ /g, "-");
  return span;
}

class Unauthorized extends Error {}

async function api(path, options) {
  const headers = { "Accept": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["X-Auth-Token"] = token;
  const response = await fetch(path, Object.assign({ headers }, options || {}));
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      message = body.error_message.faultstring || message;
    } catch (_) { /* the status says enough */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

function fill(tbody, rows, columns, empty) {
  tbody.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    cell(tr, empty, "muted").colSpan = columns;
    tbody.appendChild(tr);
  }
  rows.forEach((tr) => tbody.appendChild(tr));
}

async function drawAlarms() {
  const alarms = await api("/v2/alarms?limit=100");
  const rows = await Promise.all(alarms.map(async (alarm) => {
    const tr = document.createElement("tr");
    tr.dataset.alarmId = alarm.alarm_id;
    const name = document.createElement("div");
    name.appendChild(text(alarm.name)).className = "alarm-name";
    const rule = alarm.threshold_rule || {};
    const what = text(rule.statistic + "(" + rule.meter_name + ") " +
      (OPERATORS[rule.comparison_operator] || rule.comparison_operator) + " " + rule.threshold +
      " over " + rule.evaluation_periods + " × " + rule.period + " s");
    what.className = "muted";
    name.appendChild(document.createElement("br"));
    name.appendChild(what);
    cell(tr, name);
    cell(tr, badge(alarm.state), "alarm-state");
    cell(tr, alarm.severity);
    cell(tr, alarm.state_reason);
    cell(tr, ago(alarm.state_timestamp));
    const list = document.createElement("ul");
    list.className = "history";
    try {
      const history = await api("/v2/alarms/" + encodeURIComponent(alarm.alarm_id) + "/history?limit=" + HISTORY_SHOWN);
      history.forEach((entry) => {
        const li = document.createElement("li");
        const what = entry.type === "state transition" ? "→ " + entry.current : entry.type;
        li.textContent = ago(entry.timestamp) + ": " + what;
        list.appendChild(li);
      });
    } catch (error) {
      if (error instanceof Unauthorized) throw error;
      list.appendChild(text(error.message));
    }
    cell(tr, list);
    return tr;
  }));
  fill($("alarms").tBodies[0], rows, 6, "No alarms.");
}

function chart(buckets, unit) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = 320, height = 120, pad = 16;
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  svg.setAttribute("preserveAspectRatio", "none");
  if (buckets.length === 0) {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", 8); t.setAttribute("y", 60); t.setAttribute("class", "axis");
    t.textContent = "no samples in this span";
    svg.appendChild(t);
    return svg;
  }
  const times = buckets.map((b) => Date.parse(b.period_start));
  const values = buckets.map((b) => b.avg);
  const t0 = Math.min(...times), t1 = Math.max(...times);
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi === lo) { hi += 1; lo -= 1; }
  const x = (t) => t1 === t0 ? width / 2 : pad + (t - t0) / (t1 - t0) * (width - 2 * pad);
  const y = (v) => height - pad - (v - lo) / (hi - lo) * (height - 2 * pad);
  const points = buckets.map((b, i) => x(times[i]).toFixed(1) + "," + y(values[i]).toFixed(1));
  const area = document.createElementNS(ns, "polygon");
  area.setAttribute("class", "area");
  area.setAttribute("points", x(t0) + "," + (height - pad) + " " + points.join(" ") + " " + x(t1) + "," + (height - pad));
  svg.appendChild(area);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("class", "line");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
  [[hi, pad + 4], [lo, height - pad + 12]].forEach(([v, at]) => {
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", 2); label.setAttribute("y", at); label.setAttribute("class", "axis");
    label.textContent = (Math.round(v * 100) / 100) + " " + (unit || "");
    svg.appendChild(label);
  });
  return svg;
}

async function drawMeters() {
  const span = Number($("span").value);
  const period = Math.max(10, Math.round(span / 60));
  const since = new Date(Date.now() - span * 1000).toISOString();
  const meters = await api("/v2/meters?limit=1000");
  const names = [...new Set(meters.map((m) => m.name))].sort().slice(0, MAX_METERS);
  const cards = await Promise.all(names.map(async (name) => {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.meter = name;
    const title = document.createElement("h3");
    title.textContent = name;
    card.appendChild(title);
    const query = "?period=" + period + "&q.field=timestamp&q.op=ge&q.value=" + encodeURIComponent(since);
    try {
      const buckets = await api("/v2/meters/" + encodeURIComponent(name) + "/statistics" + query);
      const unit = buckets.length ? buckets[0].unit : "";
      if (buckets.length) {
        const latest = text((Math.round(buckets[buckets.length - 1].avg * 100) / 100) + " " + unit);
        latest.className = "latest";
        title.appendChild(latest);
      }
      card.appendChild(chart(buckets, unit));
    } catch (error) {
      if (error instanceof Unauthorized) throw error;
      card.appendChild(text(error.message)).className = "bad";
    }
    return card;
  }));
  const holder = $("meters");
  holder.replaceChildren(...cards);
  if (cards.length === 0) holder.appendChild(text("No meters yet.")).className = "muted";
}

async function drawAgents() {
  const tbody = $("agents").tBodies[0];
  let report;
  try {
    report = await api("/v2/status");
  } catch (error) {
    if (error.status === 403) {
      fill(tbody, [], 3, "The agents' health is shown to admins.");
      return;
    }
    throw error;
  }
  const rows = Object.entries(report.manifolds || {}).map(([name, agent]) => {
    const tr = document.createElement("tr");
    cell(tr, name);
    const healthy = agent.state === "started" && !agent.error;
    const health = badge(healthy ? "ok" : agent.state);
    if (!healthy) health.className = "state state-alarm";
    cell(tr, health);
    const details = agent.error ? agent.error
      : (agent["last-start"] ? "up since " + ago(agent["last-start"]).replace(" ago", "") : "");
    cell(tr, details, agent.error ? "bad" : "muted");
    return tr;
  });
  fill(tbody, rows, 3, "No agents reported (engine " + (report.state || "unknown") + ").");
}

async function refresh() {
  try {
    await Promise.all([drawAlarms(), drawMeters(), drawAgents()]);
    $("login").hidden = true;
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    if (error instanceof Unauthorized) {
      $("login").hidden = false;
      $("login-error").textContent = sessionStorage.getItem(TOKEN_KEY) ? "The API refused this token." : "";
      $("updated").textContent = "waiting for a token";
    } else {
      $("updated").textContent = "update failed: " + error.message;
    }
  }
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  refresh();
});
$("span").addEventListener("change", refresh);
refresh();
setInterval(refresh, REFRESH_MS);
