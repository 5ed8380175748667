// The operator's live dashboard: every room the token may see, each participant's
// link quality and figures (GET /api/rooms/{room}/stats) refreshed every second,
// with sparklines of the last minute. The token comes from ?token= or the form
// (kept for this tab only, in sessionStorage).

const REFRESH_MS = 1000;
const HISTORY = 60; // points per sparkline: one minute
const $ = (id) => document.getElementById(id);

const history = new Map(); // participant sid -> {in: [], out: [], loss: [], rtt: []}
const state = { rounds: 0, errors: 0, lastError: null };

function token() {
  return new URLSearchParams(location.search).get("token") || sessionStorage.getItem("ferry-admin-token");
}

async function api(path) {
  const resp = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${resp.status}`);
  return body;
}

function push(series, value) {
  series.push(value);
  if (series.length > HISTORY) series.shift();
}

function spark(values, color, max = null) {
  const canvas = document.createElement("canvas");
  canvas.width = 120;
  canvas.height = 24;
  const ctx = canvas.getContext("2d");
  const points = values.map((v) => (v === null || v === undefined ? 0 : v));
  const top = max ?? Math.max(1, ...points);
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  points.forEach((v, i) => {
    const x = (i / (HISTORY - 1)) * canvas.width;
    const y = canvas.height - 1 - (Math.min(v, top) / top) * (canvas.height - 2);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
  return canvas;
}

const kbps = (bps) => (bps === null || bps === undefined ? "–" : `${Math.round(bps / 1000)}`);
const pct = (f) => (f === null || f === undefined ? "–" : `${(100 * f).toFixed(1)}%`);
const ms = (v) => (v === null || v === undefined ? "–" : `${Math.round(v)}`);

function layers(p) {
  const video = p.received.filter((t) => t.kind === "video");
  if (!video.length) return "–";
  return video
    .map((t) => (t.paused ? "paused" : `${t.current_layer ?? "–"}/${t.wanted_layer ?? "–"}`))
    .join(" ");
}

function cell(row, content, cls = "") {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  if (content instanceof Node) td.appendChild(content);
  else td.textContent = content;
  row.appendChild(td);
}

function renderRoom(room, stats) {
  const section = document.createElement("section");
  section.className = "dash-room";
  section.dataset.room = room.name;
  const title = document.createElement("h2");
  title.textContent = `${room.name} · ${stats.participants.length} participant(s)${room.recording ? " · recording" : ""}`;
  section.appendChild(title);
  const table = document.createElement("table");
  table.innerHTML =
    "<thead><tr><th>name</th><th>quality</th><th>in kbit/s</th><th>out kbit/s</th><th>estimate</th>" +
    "<th>loss ↓ before repair</th><th>RTT ms</th><th>video layer now/wanted</th>" +
    "<th>bitrate in+out</th><th>loss</th><th>RTT</th></tr></thead>";
  const body = document.createElement("tbody");
  for (const p of stats.participants) {
    let h = history.get(p.sid);
    if (!h) history.set(p.sid, (h = { in: [], out: [], loss: [], rtt: [] }));
    push(h.in, p.bitrate_in_bps + p.bitrate_out_bps);
    push(h.loss, p.loss_before_repair_down);
    push(h.rtt, p.rtt_ms);
    const row = document.createElement("tr");
    row.dataset.sid = p.sid;
    row.dataset.quality = p.quality || "";
    cell(row, p.name || p.identity, "name");
    cell(row, p.quality || "–", `q q-${p.quality}`);
    cell(row, kbps(p.bitrate_in_bps), "in");
    cell(row, kbps(p.bitrate_out_bps), "out");
    cell(row, kbps(p.estimate_bps), "estimate");
    cell(row, pct(p.loss_before_repair_down), "loss");
    cell(row, ms(p.rtt_ms), "rtt");
    cell(row, layers(p), "layers");
    cell(row, spark(h.in, "#3fb68b"));
    cell(row, spark(h.loss, "#e05555", 0.2));
    cell(row, spark(h.rtt, "#e0a030"));
    body.appendChild(row);
  }
  table.appendChild(body);
  section.appendChild(table);
  return section;
}

async function refresh() {
  try {
    const { rooms } = await api("/api/rooms");
    const sections = [];
    for (const room of rooms) {
      try {
        sections.push(renderRoom(room, await api(`/api/rooms/${encodeURIComponent(room.name)}/stats`)));
      } catch (e) {
        if (!String(e.message).startsWith("not_found")) throw e; // closed meanwhile
      }
    }
    $("rooms").replaceChildren(...sections);
    if (!rooms.length) $("rooms").textContent = "no rooms";
    state.rounds += 1;
    $("dash-status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    state.errors += 1;
    state.lastError = e.message;
    $("dash-status").textContent = `error: ${e.message}`;
  }
}

function start() {
  refresh();
  setInterval(refresh, REFRESH_MS);
}

if (token()) {
  start();
} else {
  $("token-form").hidden = false;
  $("dash-status").textContent = "needs an admin token";
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("ferry-admin-token", $("token-input").value.trim());
    $("token-form").hidden = true;
    start();
  });
}

// Test hook.
window.dashboard = {
  get rounds() {
    return state.rounds;
  },
  get lastError() {
    return state.lastError;
  },
};
